"""Command-line parts for `speechwire grid`, `speechwire report` and `speechwire cache build`.

    speechwire grid GRID.yaml [--dry-run] [--shard i/n] [--out DIR] [--no-cache] [--no-probe]
    speechwire report GRID_DIR [--no-plots]
    speechwire cache build CONFIG [key=value ...] [--manifest M ...]
"""

from __future__ import annotations

import argparse
import json


def cmd_grid(args: argparse.Namespace) -> int:
    from .grid import load_grid, output_root, parse_shard
    from .grid_runner import dry_run, run_grid

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
    from .report import write_report

    path = write_report(args.grid_dir, plots=not args.no_plots)
    print(f"wrote {path}, {path.parent / 'results.csv'}, {path.parent / 'results.json'}")
    return 0


def cmd_cache_build(args: argparse.Namespace) -> int:
    from .config import load_config
    from .data import load_manifest
    from .features import FeatureCache

    cfg = load_config(args.config, args.overrides)
    manifests = [m for m in (cfg.data.train_manifest, cfg.data.dev_manifest, cfg.data.test_manifest) if m]
    manifests += args.manifest or []
    if not manifests:
        raise ValueError(f"{args.config}: no manifest to encode; set data.train_manifest or pass --manifest")
    utts = [u for m in manifests for u in load_manifest(m, skip_invalid=cfg.data.skip_invalid)]
    cache = FeatureCache.for_config(cfg)
    device = "cuda" if __import__("torch").cuda.is_available() else "cpu"
    cache.ensure(utts, device=device, progress=not args.quiet, max_batch_seconds=cfg.data.max_batch_seconds,
                 max_batch_size=cfg.data.max_batch_size, num_workers=cfg.data.num_workers)
    print(json.dumps(cache.stats_dict(), indent=2))
    return 0


def add_grid_subparsers(sub: argparse._SubParsersAction) -> None:
    """Register grid, report and cache under the main `speechwire` parser."""
    g = sub.add_parser("grid", help="run an SFM x adapter x LLM x task grid (see docs/grid.md)")
    g.add_argument("grid", help="grid YAML file")
    g.add_argument("--dry-run", action="store_true", help="print the plan and its estimated cost, run nothing")
    g.add_argument("--no-probe", action="store_true", help="with --dry-run: skip the 2-step timing probe")
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
