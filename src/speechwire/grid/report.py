"""`speechwire report GRID_DIR`: results table, factor analysis and plots from a grid's run folders.

Writes into GRID_DIR: report.md, results.csv, results.json (rows + analysis), plots/*.png.
Rows come from each run's grid_run.json, so shards run on different machines merge by copying
their run folders into one directory. Metric columns are named `<test set>:<task>.<metric>`
(e.g. `synth:asr.wer`); see analysis.py for the variance decomposition.

`where` reports a sub-design (e.g. {"llm": ["qwen2.5-0.5b"]}: the runs with that LLM only) into
its own folder, GRID_DIR/subset-llm=qwen2.5-0.5b by default: a balanced part of an unbalanced grid
analysed on its own, so that one failing level does not swamp the other factors' shares.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from speechwire.files import read_jsonl
from speechwire.grid.analysis import best_by_group, explain, lower_is_better, ranking, term_label, variance_shares
from speechwire.grid.baselines import baseline_lines, read_baselines
from speechwire.grid.layout import EVENTS, RUN_FILE
from speechwire.grid.spec import label, load_grid, matches, plan, role
from speechwire.tables import markdown_table

METRICS = ("wer", "bleu", "chrf", "comet")
COST = ("trainable_params", "train_seconds", "peak_memory_gib", "steps")


def collect(grid_dir: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """One flat row per finished run (sorted by name) and the factor names (in grid order)."""
    grid_dir = Path(grid_dir)
    files = sorted(grid_dir.glob(f"*/{RUN_FILE}"))
    if not files:
        raise FileNotFoundError(f"{grid_dir}: no finished run (no */{RUN_FILE}); run `speechwire grid GRID.yaml` first")
    rows, factors = [], []
    for f in files:
        res = json.loads(f.read_text())
        row: dict[str, Any] = {"run": res["name"], **res["levels"], "seed": res["seed"], **{k: res.get(k) for k in COST}}
        factors += [f_name for f_name in res["levels"] if f_name not in factors]
        for test, t in res.get("test", {}).items():
            row.update({f"{test}:{task}.{metric}": m[metric] for task, m in t["metrics"].items() if isinstance(m, dict)
                        for metric in METRICS if isinstance(m.get(metric), (int, float))})
            row[f"{test}:compression"] = t.get("compression")
            row[f"{test}:rtf"] = t.get("rtf")
        align = res.get("align") or {}
        best = align.get("best_dev") or {}
        if best.get("value") is not None:  # the alignment stage's own dev score (CTC greedy path, no LLM):
            row[f"align_dev:{str(best.get('metric', 'metric')).replace('/', '.')}"] = best["value"]  # analysed too
        row["_cache"] = [c for c in (align.get("feature_cache"), res.get("feature_cache")) if c]
        rows.append(row)
    return rows, factors


def seed_noise(rows: list[dict[str, Any]], factors: list[str], metric: str) -> dict[str, Any] | None:
    """Seed noise of `metric` beside the factor effects: runs equal in every factor level but the
    seed form cells; the pooled within-cell SD, the mean |difference| of seed pairs, and per factor
    the range of its level means over the rows holding the metric."""
    import numpy as np

    rows = [r for r in rows if r.get(metric) is not None]
    cells: dict[tuple, list[float]] = {}
    for r in rows:
        cells.setdefault(tuple(str(r.get(f)) for f in factors), []).append(float(r[metric]))
    repeated = [v for v in cells.values() if len(v) > 1]
    if not repeated:
        return None
    dof = sum(len(v) - 1 for v in repeated)
    pooled = float(np.sqrt(sum(((np.array(v) - np.mean(v)) ** 2).sum() for v in repeated) / dof))
    diffs = [abs(v[i] - v[j]) for v in repeated for i in range(len(v)) for j in range(i + 1, len(v))]
    ranges = {}
    for f in factors:
        means: dict[str, list[float]] = {}
        for r in rows:
            means.setdefault(str(r.get(f)), []).append(float(r[metric]))
        if len(means) > 1:
            ranges[f] = float(np.ptp([np.mean(v) for v in means.values()]))
    return {"cells": len(repeated), "pooled_sd": pooled, "mean_abs_diff": float(np.mean(diffs)),
            "max_abs_diff": float(max(diffs)), "effect_range": ranges}


def parse_where(items: list[str] | None) -> dict[str, list[str]]:
    """["llm=qwen2.5-0.5b", "adapter=mlp,conv"] -> {"llm": ["qwen2.5-0.5b"], "adapter": ["mlp", "conv"]}."""
    out: dict[str, list[str]] = {}
    for item in items or []:
        factor, sep, levels = item.partition("=")
        if not sep or not factor.strip() or not levels.strip():
            raise ValueError(f"--where {item!r} must look like factor=level or factor=level1,level2 (e.g. llm=smollm2)")
        out.setdefault(factor.strip(), []).extend(v.strip() for v in levels.split(",") if v.strip())
    return out


def select(rows: list[dict[str, Any]], factors: list[str], where: dict[str, list[str]], grid_dir: Path
           ) -> list[dict[str, Any]]:
    """The rows whose levels match `where`; an unknown factor or a level no finished run has is an error."""
    for f, levels in where.items():
        if f not in factors:
            raise ValueError(f"{grid_dir}: --where factor {f!r} is not a factor of this grid; its factors: "
                             + ", ".join(factors))
        known = sorted({str(r.get(f)) for r in rows})
        missing = [lvl for lvl in levels if lvl not in known]
        if missing:
            raise ValueError(f"{grid_dir}: --where {f}={','.join(missing)}: no finished run has that level; "
                             f"{f} levels of the finished runs: {', '.join(known)}")
    return [r for r in rows if matches(r, where)]


def cache_summary(rows: list[dict[str, Any]], factors: list[str], builds: dict[str, dict[str, int]] | None = None
                  ) -> list[dict[str, Any]]:
    """Per SFM level: feature-cache reads, hits and misses (SFM passes inside runs) over its runs, and
    the clips the grid's own cache builds encoded (`builds`, from cache_builds)."""
    enc = next((f for f in factors if role(f) == "encoder"), None)
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        level = str(r.get(enc)) if enc else "-"
        o = out.setdefault(level, {"sfm": level, "runs": 0, "reads": 0, "hits": 0, "misses": 0})
        o["runs"] += 1
        for c in r.get("_cache", []):
            for k in ("reads", "hits", "misses"):
                o[k] += int(c.get(k) or 0)
    for level, o in out.items():
        looked = o["hits"] + o["misses"]
        o["hit_rate"] = f"{o['hits'] / looked:.1%}" if looked else "-"
        b = (builds or {}).get(level, {"builds": 0, "encoded": 0})
        o["encoded"] = f"{b['encoded']:,} ({b['builds']} build(s))"
    return list(out.values())


def cache_builds(grid_dir: Path) -> dict[str, dict[str, int]]:
    """Per SFM level: how many cache builds encoded clips and how many clips they encoded (SFM passes),
    from grid_events.jsonl (one "cache" line per build, on whichever machine ran it)."""
    out: dict[str, dict[str, int]] = {}
    for e in read_jsonl(grid_dir / EVENTS):  # a line cut by a full disk or a kill is skipped: the rest still counts
        if e.get("event") == "cache" and int(e.get("written") or 0) > 0:
            b = out.setdefault(str(e.get("sfm")), {"builds": 0, "encoded": 0})
            b["builds"] += 1
            b["encoded"] += int(e["written"])
    return out


def metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if ":" in k and k.rsplit(".", 1)[-1] in METRICS and k not in cols]
    return cols


def metric_name(col: str) -> str:
    test, rest = col.split(":", 1)
    task, metric = rest.rsplit(".", 1)
    return f"{metric.upper() if metric != 'chrf' else 'chrF'} ({task}, {test})"


def analyse(rows: list[dict[str, Any]], factors: list[str]) -> dict[str, Any]:
    """Variance shares, sentences and best adapter per SFM x LLM pair, for every metric column."""
    enc, llm, adapter = (next((f for f in factors if role(f) == r), None) for r in ("encoder", "llm", "adapter"))
    group = [f for f in (enc, llm) if f]
    out = {}
    for col in metric_columns(rows):
        shares, name = variance_shares(rows, factors, col), metric_name(col)
        out[col] = {"name": name, "shares": shares, "sentence": explain(shares, name), "ranking": ranking(shares, name),
                    "best_adapter": best_by_group(rows, group, adapter, col) if adapter and group else [],
                    "lower_is_better": lower_is_better(col), "seed_noise": seed_noise(rows, factors, col)}
    return out


def write_report(grid_dir: str | Path, plots: bool = True, where: dict[str, list[str]] | None = None,
                 out: str | Path | None = None) -> Path:
    """Write report.md, results.csv, results.json and plots/*.png into `out` (default: `grid_dir`, or
    grid_dir/subset-<where> for a sub-design); returns report.md.

    Args:
        grid_dir: the grid folder holding the run folders.
        plots: also draw plots/*.png.
        where: report only the runs with these levels, e.g. {"llm": ["qwen2.5-0.5b"]}.
        out: the folder to write into.

    Raises:
        FileNotFoundError: no finished run in grid_dir.
        ValueError: `where` names a factor the grid lacks or a level no finished run has.
    """
    grid_dir = Path(grid_dir)
    rows, factors = collect(grid_dir)
    where = where or {}
    rows = select(rows, factors, where, grid_dir)
    subset = grid_dir / ("subset-" + "__".join(f"{f}={'+'.join(v)}" for f, v in where.items()))
    out = Path(out if out is not None else subset if where else grid_dir)
    out.mkdir(parents=True, exist_ok=True)
    analysis = analyse(rows, factors)
    metrics = metric_columns(rows)
    cols = ["run", *factors, "seed"] + metrics
    cols += sorted({k for r in rows for k in r if k.endswith((":compression", ":rtf"))}) + list(COST)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (out / "results.json").write_text(json.dumps({"factors": factors, "where": where, "rows": rows,
                                                  "analysis": analysis}, indent=2))
    images = make_plots(out / "plots", rows, factors, analysis) if plots else []
    if plots:
        images += learning_curves(out / "plots", grid_dir, rows, factors)
    title = f"# Grid report: {grid_dir.name}" + (", the runs with " + ", ".join(
        f"{f} = {' or '.join(levels)}" for f, levels in where.items()) if where else "")
    lines = [title, "", f"{len(rows)} finished run(s); factors: "
             + ", ".join(f"{label(f)} (`{f}`: {len({r[f] for r in rows})} levels)" for f in factors) + "."]
    if where:
        lines.append(f"A sub-design of the grid in `{grid_dir.name}` (`speechwire report --where`); the whole grid's "
                     "report is `report.md` there.")
    expected = _expected_runs(grid_dir, where)
    if expected is not None and expected > len(rows):
        lines.append(f"**{expected - len(rows)} of {expected} planned runs are not finished**; the analysis uses "
                     "the finished ones (sequential sums of squares handle the missing cells).")
    lines += ["", "## What matters", ""]
    for a in analysis.values():
        lines += [f"- {a['sentence']}", f"  {a['ranking']}"]
        if a["seed_noise"]:
            lines.append(f"  {_noise_sentence(a['seed_noise'], a['name'])}")
    lines += ["", "## Results", ""]
    lines += markdown_table(rows, cols[1:], [metric_name(c) if c in metrics else c for c in cols[1:]])
    for col, a in analysis.items():
        lines += ["", f"## {a['name']}", "", "Share of variance (sequential sums of squares, see docs/grid.md):", ""]
        shares = a["shares"]
        share_rows = [{"term": term_label(t), "df": t["df"], "share": f"{t['share']:.1%}"} for t in shares["terms"]]
        share_rows.append({"term": "residual", "df": "-", "share": f"{shares['residual_share']:.1%}"})
        lines += markdown_table(share_rows, ["term", "df", "share"])
        if shares["dropped"]:
            lines.append(f"\nLeft out (a single level here): {', '.join(shares['dropped'])}.")
        if a["best_adapter"]:
            better = "lowest" if a["lower_is_better"] else "highest"
            lines += ["", f"Best adapter per SFM x LLM pair ({better} mean {a['name']}):", ""]
            keys = [k for k in a["best_adapter"][0] if k not in ("value", "runner_up")]
            lines += markdown_table(a["best_adapter"], keys + ["value", "runner_up"])
    lines += baseline_lines(read_baselines(grid_dir))
    caches = cache_summary(rows, factors, cache_builds(grid_dir))
    if any(c["reads"] for c in caches):
        lines += ["", "## Feature cache", "", "The grid encodes every clip once per SFM before the runs (cache builds, "
                  f"from {EVENTS}; one per machine that ran the grid); the runs' training stages then read the "
                  "cached SFM outputs. Hits and misses count clips looked up when a run planned its encoding (a "
                  "miss is an SFM pass inside a run), reads count feature files loaded (every epoch):", ""]
        lines += markdown_table(caches, ["sfm", "encoded", "runs", "reads", "hits", "misses", "hit_rate"],
                                ["SFM", "clips encoded by cache builds", "runs", "reads", "hits",
                                 "misses (SFM passes in runs)", "hit rate"])
    if images:
        lines += ["", "## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in images]
    lines.append("")
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def _noise_sentence(noise: dict[str, Any], name: str) -> str:
    ranges = ", ".join(f"{label(f)} {v:.3g}" for f, v in sorted(noise["effect_range"].items(), key=lambda x: -x[1]))
    return (f"Seed noise of {name} ({noise['cells']} combination(s) run with 2+ seeds): pooled SD "
            f"{noise['pooled_sd']:.3g}, mean |difference| {noise['mean_abs_diff']:.3g} (max {noise['max_abs_diff']:.3g}); "
            f"range of the level means per factor: {ranges}.")


def _expected_runs(grid_dir: Path, where: dict[str, list[str]]) -> int | None:
    try:
        return sum(matches(r.levels, where) for r in plan(load_grid(grid_dir / "grid.yaml")))
    except Exception:  # no copy of the grid file, or it names files missing here: report what exists
        return None


def make_plots(folder: Path, rows: list[dict[str, Any]], factors: list[str], analysis: dict[str, Any]) -> list[Path]:
    """Heatmaps (adapter x (SFM, LLM)), variance-share bars, compression-vs-metric scatters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    adapter = next((f for f in factors if role(f) == "adapter"), None)
    cols_of = [f for f in factors if role(f) in ("encoder", "llm")] or [f for f in factors if f != adapter][:2]
    for col, a in analysis.items():
        slug = col.replace(":", "_").replace(".", "_")
        if adapter:
            ys = sorted({r[adapter] for r in rows})
            xs = sorted({tuple(r[f] for f in cols_of) for r in rows})
            grid = np.full((len(ys), len(xs)), np.nan)
            for i, y in enumerate(ys):
                for j, x in enumerate(xs):
                    v = [r[col] for r in rows if r[adapter] == y and tuple(r[f] for f in cols_of) == x
                         and r.get(col) is not None]
                    grid[i, j] = np.mean(v) if v else np.nan
            fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(xs), 1.2 + 0.5 * len(ys)))
            im = ax.imshow(grid, cmap="viridis_r" if a["lower_is_better"] else "viridis", aspect="auto")
            ax.set_xticks(range(len(xs)), ["\n".join(x) for x in xs], fontsize=8)
            ax.set_yticks(range(len(ys)), ys)
            for i in range(len(ys)):
                for j in range(len(xs)):
                    if np.isfinite(grid[i, j]):
                        bright = im.norm(grid[i, j]) > 0.6 if not a["lower_is_better"] else im.norm(grid[i, j]) < 0.4
                        ax.text(j, i, f"{grid[i, j]:.3g}", ha="center", va="center", fontsize=8,
                                color="black" if bright else "white")
            ax.set(xlabel=" / ".join(label(f) for f in cols_of), ylabel="adapter", title=a["name"])
            fig.colorbar(im, ax=ax)
            out.append(_save(fig, folder / f"heatmap_{slug}.png"))
        test = col.split(":", 1)[0]
        pts = [(r.get(f"{test}:compression"), r[col], r.get(adapter) if adapter else "") for r in rows
               if r.get(col) is not None and r.get(f"{test}:compression") is not None]
        if pts:
            fig, ax = plt.subplots(figsize=(5, 3.6))
            for lvl in sorted({p[2] for p in pts}):
                sel = [p for p in pts if p[2] == lvl]
                ax.scatter([p[0] for p in sel], [p[1] for p in sel], label=lvl or None)
            xs_c = [p[0] for p in pts]
            if max(xs_c) / max(min(xs_c), 1e-9) > 10:  # paper-scale ratios (1:1 .. 25:1)
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.set(xlabel="compression (encoder frames / adapter outputs)", ylabel=a["name"])
            if adapter:
                ax.legend(fontsize=7, title="adapter")
            out.append(_save(fig, folder / f"compression_{slug}.png"))
    if analysis:
        terms = list(dict.fromkeys(term_label(t) for a in analysis.values() for t in a["shares"]["terms"])) + ["residual"]
        fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(terms), 3.6))
        width = 0.8 / len(analysis)
        for k, a in enumerate(analysis.values()):
            by = {term_label(t): t["share"] for t in a["shares"]["terms"]}
            by["residual"] = a["shares"]["residual_share"]
            ax.bar(np.arange(len(terms)) + k * width, [100 * by.get(t, 0.0) for t in terms], width, label=a["name"])
        ax.set_xticks(np.arange(len(terms)) + 0.4 - width / 2, terms, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("% of variance")
        ax.legend(fontsize=7)
        out.append(_save(fig, folder / "variance_shares.png"))
    return out


def dev_curve(run_dir: Path) -> list[tuple[int, float, str]]:
    """(step, dev value, metric) of a run's alignment stage (align/log.jsonl), else of its own
    log.jsonl: the dev evaluations `train.eval_every` wrote (the first metric of the first task;
    WER in percent)."""
    for log in (run_dir / "align" / "log.jsonl", run_dir / "log.jsonl"):
        points = []
        if log.is_file():
            for line in log.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                dev = rec.get("dev") if isinstance(rec, dict) else None
                if dev and rec.get("step"):
                    task = next(iter(dev.values()), {})
                    metric = next((m for m in METRICS if isinstance(task.get(m), (int, float))), None)
                    if metric is not None:
                        points.append((int(rec["step"]), float(task[metric]) * (100 if metric == "wer" else 1), metric))
        if points:
            return points
    return []


def learning_curves(folder: Path, grid_dir: Path, rows: list[dict[str, Any]], factors: list[str]) -> list[Path]:
    """plots/learning_curves.png: each run's dev curve against steps, one panel per SFM level (issue:
    every adapter must be seen to leave its plateau); [] when no run logged dev evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panel_factor = next((f for f in factors if role(f) == "encoder"), None)
    curves = [(r, dev_curve(grid_dir / r["run"])) for r in rows]
    curves = [(r, c) for r, c in curves if len(c) > 1]
    if not curves:
        return []
    panels = sorted({r[panel_factor] for r, _ in curves}) if panel_factor else [None]
    folder.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False, sharey=True)
    for ax, level in zip(axes[0], panels):
        for r, c in curves:
            if panel_factor and r[panel_factor] != level:
                continue
            name = ", ".join(str(r[f]) for f in factors if f != panel_factor) + (f" s{r['seed']}" if r["seed"] else "")
            ax.plot([p[0] for p in c], [p[1] for p in c], marker="o", ms=3, label=name)
        ax.set(xlabel="training step", title=f"{label(panel_factor)}: {level}" if panel_factor else "")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    metric = curves[0][1][0][2]
    axes[0][0].set_ylabel(f"dev {'WER %' if metric == 'wer' else metric} (alignment stage if any)")
    return [_save(fig, folder / "learning_curves.png")]


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
