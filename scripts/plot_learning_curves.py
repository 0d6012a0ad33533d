"""Dev WER against training minutes, one line per training log (docs/demo_curves/*.png).

    python scripts/plot_learning_curves.py OUT.png LABEL=LOG.jsonl[@SECONDS_PER_STEP] ...

A log is a run's log.jsonl (speechwire train): its dev lines carry the dev WER and, since the
alignment stage, `elapsed_s`. Older logs have no times: give their measured seconds per step after
an @ (e.g. the old recipe's 3625 steps in 40 min: @0.662).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def curve(spec: str) -> tuple[str, list[float], list[float]]:
    label, _, rest = spec.partition("=")
    path, _, per_step = rest.partition("@")
    xs, ys = [], []
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line)
        if "dev" not in rec:
            continue
        seconds = rec.get("elapsed_s") or rec["step"] * float(per_step or "nan")
        xs.append(seconds / 60)
        ys.append(100 * rec["dev"]["asr"]["wer"])
    return label, xs, ys


def main(argv: list[str]) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, specs = Path(argv[0]), argv[1:]
    fig, ax = plt.subplots(figsize=(7, 4))
    for spec in specs:
        label, xs, ys = curve(spec)
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("training minutes (2 shared CPU cores)")
    ax.set_ylabel("dev WER % (60 synthetic + 40 real clips)")
    ax.set_ylim(0, 200)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
