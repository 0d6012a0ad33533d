"""Dev WER against training minutes, one line per training log (docs/demo_curves/*.png).

    python scripts/plot_learning_curves.py [--steps] OUT.png LABEL=LOG.jsonl[@SECONDS_PER_STEP] ...

A log is a run's log.jsonl (speechwire train): its dev lines carry the dev WER and, since the
alignment stage, `elapsed_s`. Older logs have no times: give their measured seconds per step after
an @ (e.g. the old recipe's 3625 steps in 40 min: @0.662). `--steps` plots against training steps
instead (runs timed on differently loaded cores).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def curve(spec: str, steps: bool = False) -> tuple[str, list[float], list[float]]:
    label, _, rest = spec.partition("=")
    path, _, per_step = rest.partition("@")
    xs, ys = [], []
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line)
        if "dev" not in rec:
            continue
        seconds = rec.get("elapsed_s") or rec["step"] * float(per_step or "nan")
        xs.append(rec["step"] if steps else seconds / 60)
        ys.append(100 * rec["dev"]["asr"]["wer"])
    return label, xs, ys


def main(argv: list[str]) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = "--steps" in argv
    argv = [a for a in argv if a != "--steps"]
    out, specs = Path(argv[0]), argv[1:]
    fig, ax = plt.subplots(figsize=(7, 4))
    top = 0.0
    for spec in specs:
        label, xs, ys = curve(spec, steps)
        ax.plot(xs, ys, marker="o", label=label)
        top = max([top, *ys])
    ax.set_xlabel("training steps" if steps else "training minutes (2 shared CPU cores)")
    ax.set_ylabel("dev WER % (each run's dev set)")
    ax.set_ylim(0, min(200.0, 1.1 * top) or 100.0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
