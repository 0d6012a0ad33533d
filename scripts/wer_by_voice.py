"""WER of plain Whisper and speechwire per espeak-ng voice and augmentation on the demo's synthetic test set.

    python scripts/wer_by_voice.py runs/demo-asr/predictions.jsonl

Each synthetic clip's voice, variant, speed and reverb are re-drawn from its seed (the corpus builder
is deterministic: speechwire.data.synth.voice.draw_params), so no audio is needed: the table says which
voices and augmentations the frozen SFM can hear (the training data should be speech it hears).
"""

import json
import sys
from collections import defaultdict

from speechwire.data.synth.voice import draw_params, list_variants, list_voices, utterance_rng
from speechwire.metrics import wer


def main(path: str, seed: int = 0) -> int:
    recs = [r for r in map(json.loads, open(path)) if r.get("set") == "synthetic"]
    voices, variants = list_voices(), list_variants()
    groups = defaultdict(list)
    for r in recs:
        p = draw_params(utterance_rng(seed, int(r["id"].split("-")[1])), voices, variants)
        named = p.variant and not (p.variant[0] in "mf" and p.variant[1:].isdigit())
        for key in (("voice", p.voice), ("variant", "none" if not p.variant else "named" if named else "m1-8/f1-5"),
                    ("reverb", str(p.reverb)), ("words/min", "> 160" if p.wpm > 160 else "<= 160")):
            groups[key].append(r)
    print(f"`python scripts/wer_by_voice.py {path}`\n")
    print("| group | clips | plain Whisper WER % | speechwire WER % |\n|---|---:|---:|---:|")
    for key in sorted(groups):
        g, refs = groups[key], [r["reference"] for r in groups[key]]
        base = wer(refs, [r["baseline"] for r in g])["wer"] * 100
        ours = wer(refs, [r["speechwire"] for r in g])["wer"] * 100
        print(f"| {key[0]} = {key[1]} | {len(g)} | {base:.1f} | {ours:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
