"""N-best of the chars head + frozen-LLM log-probs per candidate, dumped for an offline grid.
python probe.py RUN MANIFEST OUT.json [beam]"""
import json, sys, os, time
from pathlib import Path
import torch
torch.set_num_threads(int(os.environ.get('THREADS', '1')))
from speechwire.model import SpeechLLM
from speechwire.data import load_manifest, eval_loader
from speechwire.features import FeatureCache
from speechwire.align import sentence
from speechwire.decoding import ctc_nbest
run, man, out = sys.argv[1], sys.argv[2], sys.argv[3]
beam = int(sys.argv[4]) if len(sys.argv) > 4 else 16
model = SpeechLLM.from_pretrained(run).eval()
cfg, head, tok = model.cfg, model.align_head, model.prompter.tok
a = cfg.align
start = tok.convert_tokens_to_ids("<|endoftext|>")
end_ids = [tok.convert_tokens_to_ids("<|endoftext|>")]
utts = load_manifest(man)
loader, _ = eval_loader(utts, cfg, FeatureCache.for_config(cfg), model.batch_tokenizer(training=False))
rows = []
t_beam = t_llm = 0.0
def llm_scores(sents):
    seqs = [[start] + model.prompter.text_ids(s) + end_ids for s in sents]
    L = max(map(len, seqs))
    ids = torch.full((len(seqs), L), start)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s); mask[i, :len(s)] = 1
    lp = model.llm(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
    res = []
    for i, s in enumerate(seqs):
        tgt = torch.tensor(s[1:])
        tl = lp[i, torch.arange(len(s) - 1), tgt]
        res.append((float(tl[:-1].sum()), float(tl[-1]), len(s) - 2))
    return res
with torch.no_grad():
    for batch in loader:
        hidden, lengths = model.encode_audio(batch)
        o = model.adapter(hidden.float(), lengths)
        lp = head(o.embeds).float().log_softmax(-1).numpy()
        for b, uid in enumerate(batch.ids):
            n = int(o.lengths[b])
            t0 = time.time()
            nb = ctc_nbest(lp[b, :n], beam=beam, lm=head.lm, lm_weight=a.lm_weight, token_bonus=a.lm_bonus)
            t_beam += time.time() - t0
            cands = {}
            for p, s in nb:
                text = sentence(model.prompter.decode(head.token_ids(torch.tensor(p)))) if p else ""
                if text and text not in cands:
                    cands[text] = s
            sents = list(cands)
            t0 = time.time()
            sc = llm_scores(sents) if sents else []
            t_llm += time.time() - t0
            rows.append({"id": uid, "ref": batch.transcripts[b],
                         "cands": [{"text": t, "head": cands[t], "llm": x[0], "end": x[1], "ntok": x[2]} for t, x in zip(sents, sc)]})
        print(len(rows), round(t_beam, 1), round(t_llm, 1), file=sys.stderr, flush=True)
json.dump(rows, open(out, "w"), indent=0)
