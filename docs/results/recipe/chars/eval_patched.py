"""python eval_patched.py MODE -- evaluate args...   MODE: sent (sentence-case + period before the LLM reads)"""
import sys, torch
from speechwire import model as m
from speechwire.data.batch import pad_right
from speechwire.decoding import ctc_beam_search
mode = sys.argv[1]
def _beam_tokens(self, logits, lengths):
    a, head = self.cfg.align, self.align_head
    log_probs = logits.detach().float().log_softmax(-1).cpu().numpy()
    items = []
    for b in range(logits.shape[0]):
        n = int(lengths[b])
        tokens = ctc_beam_search(log_probs[b, :n], beam=a.beam_size, lm=head.lm, lm_weight=a.lm_weight, token_bonus=a.lm_bonus)
        if tokens:
            text = self.prompter.decode(head.token_ids(torch.tensor(tokens)))
            if "sent" in mode and text:
                text = text[0].upper() + text[1:] + "."
            ids = self.prompter.text_ids(text)
            items.append(head.table.detach()[ids].float().to(logits.device))
        else:
            t = int(logits[b, :n, 0].argmin()) if n else 0
            items.append(head.posterior_embeddings(logits[b, t: t + 1]))
    return pad_right(items)
m.SpeechLLM._beam_tokens = _beam_tokens
from speechwire.cli import main
sys.exit(main(sys.argv[3:]))
