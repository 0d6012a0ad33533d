"""`speechwire serve RUN_DIR`: load a run folder and answer OpenAI-style audio requests over HTTP.

    speechwire serve runs/demo-asr --port 8000 --max-batch 16 --max-wait-ms 10

Binds to 127.0.0.1 by default (the server has no authentication); `--port 0` picks a free port
and prints it. Importing this module imports only argparse: the heavy parts load in `serve_main`.
"""

from __future__ import annotations

import argparse


def add_serve_subparser(sub) -> None:
    """Add the `serve` command to the `speechwire` sub-command parser."""
    s = sub.add_parser("serve", help="serve a run over HTTP: OpenAI-compatible /v1/audio/transcriptions "
                                     "and /v1/audio/translations, with dynamic batching")
    s.add_argument("run_dir")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one (printed)")
    s.add_argument("--max-batch", type=int, default=16, help="most pieces per batched generate call (1: no batching)")
    s.add_argument("--max-wait-ms", type=float, default=10.0, help="longest a piece waits for a batch to fill")
    s.add_argument("--max-upload-mb", type=float, default=25.0, help="larger uploads get 413 (OpenAI's limit: 25)")
    s.add_argument("--max-queue", type=int, default=1024, help="most pieces waiting; beyond it requests get 503")
    s.add_argument("--vad", choices=["auto", "silero", "energy"], default="auto",
                   help="how recordings over the encoder's limit are cut (auto: Silero VAD when installed)")
    s.add_argument("--tasks", nargs="+", choices=["asr", "st"], default=None,
                   help="tasks to answer (default: those of the run's training manifest)")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.add_argument("--set", dest="overrides", action="append", default=[], help="config override, e.g. eval.max_new_tokens=100")
    s.set_defaults(func=serve_main)


def serve_main(args: argparse.Namespace) -> int:
    import logging

    import torch
    import uvicorn

    from ..config import resolve_device
    from ..longform import load_vad
    from ..model import SpeechLLM
    from .app import create_app
    from .run import describe_run
    from .server import bind, url_of

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = SpeechLLM.from_pretrained(args.run_dir, args.overrides).eval()
    model.to(resolve_device(model.cfg.train.device))
    if model.device.type == "cpu" and model.cfg.llm.dtype != "float32":
        print(f"speechwire serve: note: the LLM runs in {model.cfg.llm.dtype} on the CPU; CPUs without native "
              "bf16/fp16 matmuls are faster in float32, where batching also pays (--set llm.dtype=float32; "
              "docs/serving.md)", flush=True)
    run = describe_run(args.run_dir, model.cfg, args.tasks)
    if args.vad != "energy" and load_vad() is None:
        if args.vad == "silero":
            raise ValueError("--vad silero: the silero-vad package is not installed; `pip install silero-vad`")
        print("speechwire serve: silero-vad is not installed; long recordings are cut by energy", flush=True)
    app = create_app(model, run, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                     max_upload_mb=args.max_upload_mb, vad=args.vad, max_queue=args.max_queue)
    sock = bind(args.host, args.port)
    print(f"speechwire serve: model {run.id!r} (tasks: {', '.join(run.tasks)}; from {run.tasks_from}) "
          f"listening on {url_of(sock)}", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print("speechwire serve: warning: no authentication; anyone who reaches this address can use the model",
              flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
