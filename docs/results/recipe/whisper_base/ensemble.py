"""Probe (a record, not a tool): the posteriors of several alignment heads on the same SFM averaged
before the beam search; whole model (A's LM, lexicon, rescoring, LLM). usage: ensemble.py OUT RUN_A RUN_B..."""
import math, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from speechwire.model import SpeechLLM
from speechwire.adapters.interface import AdapterOutput
from speechwire.data import load_manifest
from speechwire.evaluate import evaluate_utterances
from speechwire.features import FeatureCache
out, runs = sys.argv[1], sys.argv[2:]
A = SpeechLLM.from_pretrained(runs[0]).eval()
others = [SpeechLLM.from_pretrained(r, ["llm.model=" + A.cfg.llm.model]).eval() for r in runs[1:]]
parts = [(A.adapter, A.align_head)] + [(m.adapter, m.align_head) for m in others]
del others
def _adapt(batch, hidden, enc_lengths):
    lps, lengths = [], None
    for adapter, head in parts:
        o = adapter(hidden.float(), enc_lengths)
        lps.append(head(o.embeds).float().log_softmax(-1))
        lengths = o.lengths
    logits = torch.logsumexp(torch.stack(lps), 0) - math.log(len(lps))
    embeds, lengths, heard = A._beam_tokens(logits, lengths)
    return AdapterOutput(embeds, lengths, heard=heard)
A._adapt = _adapt
utts = load_manifest(str(Path.home() / ".cache/speechwire/demo_data/demo_dev.asr.jsonl"))
with torch.no_grad():
    m = evaluate_utterances(A, utts, A.cfg, out_dir=out, progress=False, feature_cache=FeatureCache.for_config(A.cfg))
print(m["asr"]["wer_percent"] if "asr" in m else m)
