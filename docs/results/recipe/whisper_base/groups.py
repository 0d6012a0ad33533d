"""Per-group dev WER (real/synth/unseen) + mean from predictions.jsonl files."""
import json, sys
from speechwire.metrics import wer
for path in sys.argv[1:]:
    rows = [json.loads(l) for l in open(path if path.endswith('.jsonl') else path + '/predictions.jsonl')]
    out = {}
    for g in ("real", "synth", "unseen"):
        sel = [r for r in rows if r["id"].startswith(g)]
        out[g] = 100 * wer([r["reference"] for r in sel], [r["hypothesis"] for r in sel])["wer"]
    mean = sum(out.values()) / 3
    print(f"{path}: " + " ".join(f"{g} {v:.1f}" for g, v in out.items()) + f" mean {mean:.1f}")
