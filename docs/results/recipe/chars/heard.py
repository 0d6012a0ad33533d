"""id -> heard text (sentence of the chars beam) for a run on a manifest: python heard.py RUN MANIFEST OUT.json"""
import json, sys, torch
torch.set_num_threads(1)
from speechwire.model import SpeechLLM
from speechwire.data import load_manifest, eval_loader
from speechwire.features import FeatureCache
from speechwire.align import sentence
from speechwire.decoding import ctc_beam_search
run, man, out = sys.argv[1:4]
model = SpeechLLM.from_pretrained(run).eval()
cfg, head, a = model.cfg, model.align_head, model.cfg.align
loader, _ = eval_loader(load_manifest(man), cfg, FeatureCache.for_config(cfg), model.batch_tokenizer(training=False))
res = {}
with torch.no_grad():
    for batch in loader:
        hidden, lengths = model.encode_audio(batch)
        o = model.adapter(hidden.float(), lengths)
        lp = head(o.embeds).float().log_softmax(-1).numpy()
        for b, uid in enumerate(batch.ids):
            best = ctc_beam_search(lp[b, : int(o.lengths[b])], beam=a.beam_size, lm=head.lm, lm_weight=a.lm_weight, token_bonus=a.lm_bonus)
            res[uid] = sentence(model.prompter.decode(head.token_ids(torch.tensor(best)))) if best else ""
json.dump(res, open(out, "w"), indent=0)
