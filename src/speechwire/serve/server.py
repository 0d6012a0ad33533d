"""Run the app under uvicorn: on a socket we bind ourselves (so port 0 works), or in a background thread.

    run_server("runs/demo-asr", port=8000, max_batch=16)        # `speechwire serve`: load, bind, serve until Ctrl-C
    with BackgroundServer(create_app(model, run)) as server:     # a notebook, a test, a benchmark
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 lets the system pick a free one."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(128)
    return sock


def http_url(host: str, port: int) -> str:
    """http://host:port, an IPv6 host in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def url_of(sock: socket.socket) -> str:
    return http_url(*sock.getsockname()[:2])


def page_url(sock: socket.socket) -> str:
    """The page's address for a browser on this machine: a wildcard bind is reached over loopback,
    where browsers allow the microphone without https."""
    host, port = sock.getsockname()[:2]
    return http_url({"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port) + "/"


def open_in_browser(url: str) -> None:
    """Open `url` in the default browser ($BROWSER is honoured) without blocking the server's start."""
    import webbrowser

    threading.Thread(target=webbrowser.open, args=(url,), name="speechwire-open", daemon=True).start()


class BackgroundServer:
    """uvicorn serving `app` from a daemon thread on (host, port); port 0 picks a free port.

    Use as a context manager: entering waits until the server accepts connections, leaving
    stops it (the app's lifespan stops its batcher).
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import uvicorn

        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="speechwire-server", daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (see the log above)")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def run_server(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 16,
               max_wait_ms: float = 10.0, max_upload_mb: float = 25.0, max_queue: int = 1024, vad: str = "auto",
               tasks: list[str] | None = None, threads: int | None = None, log_level: str = "info",
               overrides: list[str] | None = None, api_key_file: str | Path | None = None,
               open_browser: bool = False, beam_workers: int = 1, decode_silence: bool = False) -> None:
    """Load the run folder `run_dir` and serve it until interrupted (`speechwire serve`; docs/serving.md).

    Args:
        run_dir: a run folder (config.yaml + trainable.safetensors).
        host: address to bind; not loopback means anyone who reaches it can use the model (unless api_key_file).
        port: TCP port; 0 picks a free one (printed).
        max_batch: most pieces per batched generate call (1: no batching).
        max_wait_ms: longest a piece waits for a batch to fill.
        max_upload_mb: larger uploads get 413.
        max_queue: most pieces waiting; beyond it requests get 503.
        vad: how recordings over the encoder's limit are cut: "auto" (Silero VAD when installed), "silero", "energy".
        tasks: tasks to answer, a subset of ("asr", "st"); None: those of the run's training manifest.
        threads: torch CPU threads; None: torch's own choice.
        log_level: uvicorn and logging level (critical, error, warning, info, debug).
        overrides: dotted config overrides, e.g. ["eval.max_new_tokens=100"].
        api_key_file: a file holding one key; requests must send `Authorization: Bearer KEY` (serve/auth.py).
        open_browser: open the page in the default browser once listening.
        beam_workers: worker processes for a batch's beam searches (align.beam_workers; 0: one per
            CPU core, at most 8; 1: none, measured as fast on 2 cores); one in `overrides` wins.
        decode_silence: decode a recording in which the VAD hears no speech, instead of answering
            empty text (create_app's skip_silent).
    """
    import logging

    import torch
    import uvicorn

    from speechwire.longform import load_vad
    from speechwire.model import SpeechLLM
    from speechwire.schema import resolve_device
    from speechwire.serve.app import create_app
    from speechwire.serve.auth import read_api_key, readable_by_others
    from speechwire.serve.run import describe_run

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    api_key = read_api_key(api_key_file) if api_key_file else None  # before the slow model load: fail fast
    if api_key_file and readable_by_others(api_key_file):
        print(f"speechwire serve: warning: {api_key_file} is readable by other users; chmod 600 it", flush=True)
    if threads:
        torch.set_num_threads(threads)
    model = SpeechLLM.from_pretrained(run_dir, [f"align.beam_workers={beam_workers}", *(overrides or [])]).eval()
    model.to(resolve_device(model.cfg.train.device))
    if model.device.type == "cpu" and model.cfg.llm.dtype != "float32":
        print(f"speechwire serve: note: the LLM runs in {model.cfg.llm.dtype} on the CPU; CPUs without native "
              "bf16/fp16 matmuls are faster in float32, where batching also pays (--set llm.dtype=float32; "
              "docs/serving.md)", flush=True)
    run = describe_run(run_dir, model.cfg, tasks)
    if vad != "energy" and load_vad() is None:
        if vad == "silero":
            raise ValueError("--vad silero: the silero-vad package is not installed; `pip install silero-vad`")
        print("speechwire serve: silero-vad is not installed; long recordings are cut by energy", flush=True)
    app = create_app(model, run, max_batch=max_batch, max_wait_ms=max_wait_ms,
                     max_upload_mb=max_upload_mb, vad=vad, max_queue=max_queue, api_key=api_key,
                     skip_silent=not decode_silence)
    sock = bind(host, port)
    print(f"speechwire serve: model {run.id!r} (tasks: {', '.join(run.tasks)}; from {run.tasks_from}) "
          f"listening on {url_of(sock)} (the page: {page_url(sock)}" + (", API key required)" if api_key else ")"),
          flush=True)
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print("speechwire serve: warning: no authentication; anyone who reaches this address can use the model "
              "(--api-key-file PATH keeps others out)", flush=True)
    if open_browser:
        open_in_browser(page_url(sock))  # the socket listens already: the browser's request waits for uvicorn
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
