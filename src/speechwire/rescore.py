"""N-best rescoring by the frozen LLM (align.rescore).

The alignment head's beam knows English only through a small n-gram LM, so its best beam is
often a near-miss of the sound that no English speaker would write ("Tu is day.", "enty",
"Saderday"). The frozen LLM knows English: each of the beam's best few texts is scored by the
LLM's log-probability of the text on its own, and the item keeps the candidate with the highest
``beam score + weight * LLM log-probability``. A few padded forward passes (texts of similar
length together) score every candidate of a batch; nothing is generated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Candidates = Sequence[tuple[Sequence[int], float]]  # one item's (LLM token ids, beam score), best first


def start_token(tok) -> int:
    """The token a text is scored after: BOS where the tokenizer has one (Llama), else its padding
    token (Qwen's ``<|endoftext|>``, what separates documents in pre-training), else EOS."""
    for token in (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id):
        if token is not None:
            return int(token)
    raise ValueError("align.rescore needs a BOS, padding or EOS token to score a text after; the tokenizer has none")


def text_logprobs(llm, head: Callable[[torch.Tensor], torch.Tensor] | None, texts: Sequence[Sequence[int]],
                  start: int, chunk: int = 16) -> torch.Tensor:
    """(N,) log P(text | start) of each token-id sequence under `llm`, summed over its tokens.

    Args:
        llm: a Hugging Face causal LM.
        head: the output layer to score with ((M, d) hidden -> (M, V) scores; a `llm.RowSubsetHead`
            normalises over its rows and gives -inf to a text with a token outside them), or None
            for the LLM's own output layer.
        texts: token ids per text (no start token); an empty text scores 0.
        start: the token every text follows (`start_token`).
        chunk: texts per forward pass, taken in length order (little padding).
    """
    device = llm.get_input_embeddings().weight.device
    out = torch.zeros(len(texts), device=device)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for i in range(0, len(order), chunk):
        part = order[i: i + chunk]
        out[part] = _padded_logprobs(llm, head, [texts[j] for j in part], start, device)
    return out


def _padded_logprobs(llm, head, texts: Sequence[Sequence[int]], start: int, device) -> torch.Tensor:
    """`text_logprobs` of texts right-padded into one forward pass."""
    width = 1 + max(len(t) for t in texts)
    ids = torch.full((len(texts), width), start, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, text in enumerate(texts):
        ids[i, 1: 1 + len(text)] = torch.as_tensor(list(text), dtype=torch.long)
        mask[i, : 1 + len(text)] = 1
    targets, keep = ids[:, 1:], mask[:, 1:].bool()  # token t+1 is predicted at position t
    wanted = targets[keep]  # (M,)
    if not hasattr(llm, "get_decoder"):
        scores = llm(input_ids=ids, attention_mask=mask).logits[:, :-1][keep]  # (M, V)
        token_logprobs = scores.float().log_softmax(-1).gather(-1, wanted[:, None])[:, 0]
    else:  # the decoder's states at the scored positions only: no (N, L, V) for padding
        hidden = llm.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1][keep]
        if hasattr(head, "logprobs"):  # a RowSubsetHead: (M, K) scores, never (M, V)
            token_logprobs = head.logprobs(hidden, wanted)
        else:
            scores = (head or llm.get_output_embeddings())(hidden)
            token_logprobs = scores.float().log_softmax(-1).gather(-1, wanted[:, None])[:, 0]
    rows = torch.arange(len(texts), device=device)[:, None].expand_as(targets)[keep]
    return torch.zeros(len(texts), device=device).index_add_(0, rows, token_logprobs)


def choose(llm, head, items: Sequence[Candidates], weight: float, start: int) -> list[int]:
    """Per item, the index of its candidate with the best ``beam score + weight * log P_llm``; an
    item with one candidate (or none) keeps index 0 without being scored."""
    scored = [(i, j) for i, cands in enumerate(items) if len(cands) > 1 for j in range(len(cands))]
    if not scored:
        return [0] * len(items)
    logprobs = text_logprobs(llm, head, [items[i][j][0] for i, j in scored], start).tolist()
    best: dict[int, tuple[float, int]] = {}
    for (i, j), lp in zip(scored, logprobs):
        total = items[i][j][1] + weight * lp
        if i not in best or total > best[i][0]:
            best[i] = (total, j)
    return [best[i][1] if i in best else 0 for i in range(len(items))]
