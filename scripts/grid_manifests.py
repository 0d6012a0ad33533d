"""Train manifest of the small real grid (configs/small_real_grid.yaml), from the demo corpus.

    python scripts/grid_manifests.py [--data ~/.cache/speechwire/demo_data] [--synth 3000] [--real-repeat 4]

Writes DATA/grid_train.asr.jsonl: the first N synthetic train sentences (those of the default
`speechwire data synth` corpus, however many the corpus holds) and the real train prompts
repeated, like the demo's own train set but the same size on every machine. Also makes sure the
demo's dev manifest (DATA/demo_dev.asr.jsonl, the grid's dev set) exists, building the corpus if
it is missing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from speechwire.data.synth import DEFAULT_OUT
from speechwire.demo.data import ensure_demo_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_OUT))
    ap.add_argument("--synth", type=int, default=3000, help="synthetic train sentences to keep")
    ap.add_argument("--real-repeat", type=int, default=4, help="copies of the real train prompts")
    args = ap.parse_args()
    data = Path(args.data).expanduser()
    dev = ensure_demo_data(data, "asr", train=True).dev  # the demo's dev set: synthetic + real
    synth = (data / "synth_train.asr.jsonl").read_text().splitlines()[: args.synth]
    real = [json.loads(line) for line in (data / "real_train.asr.jsonl").read_text().splitlines() if line.strip()]
    lines = list(synth)
    for k in range(args.real_repeat):
        lines += [json.dumps({**u, "id": f"{u['id']}-x{k}" if k else u["id"]}) for u in real]
    out = data / "grid_train.asr.jsonl"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}: {len(synth)} synthetic + {args.real_repeat} x {len(real)} real; dev set: {dev}")


if __name__ == "__main__":
    main()
