"""N-best rescoring by the frozen LLM (align.rescore).

The alignment head's beam knows English only through a small n-gram LM, so its best beam is
often a near-miss of the sound that no English speaker would write ("Tu is day.", "enty",
"Saderday"). The frozen LLM knows English: each of the beam's best few texts is scored by the
LLM's log-probability of the text on its own, and the item keeps the candidate with the highest
``beam score + weight * LLM log-probability``. Nothing is generated: one forward pass runs each
item's common beginning (its candidates mostly differ near the end), a few more the candidates'
rests after it (`candidate_logprobs`: a fifth less rescoring time than scoring every text whole).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch

from speechwire.prefix_cache import cache_keyword, common_prefix, returned_cache

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
        token_logprobs = _token_logprobs(llm, head, hidden, wanted)
    rows = torch.arange(len(texts), device=device)[:, None].expand_as(targets)[keep]
    return torch.zeros(len(texts), device=device).index_add_(0, rows, token_logprobs)


def candidate_logprobs(llm, head, items: Sequence[Sequence[Sequence[int]]], start: int,
                       chunk: int = 16) -> list[list[float]]:
    """`text_logprobs` of each item's candidate texts, their common beginning computed once.

    An item's candidates are its beam's best texts: they mostly differ in a few letters near the
    end (the demo's dev clips: a third of their tokens lie in the item's common prefix). One pass
    runs every item's `start` + common prefix and keeps its KV cache; a second runs each
    candidate's rest after its item's cache rows (padding between the two masked, positions
    counted over real tokens). The same sums as `text_logprobs` up to float rounding.

    Args:
        llm: a Hugging Face causal LM with `get_decoder()` (others: `text_logprobs` per item).
        head: as in `text_logprobs`.
        items: per item, its candidates' token ids (no start token).
        start: the token every text follows (`start_token`).
        chunk: items per pair of passes.
    Returns:
        Per item, the log-probability of each of its candidates.
    """
    if not hasattr(llm, "get_decoder"):
        return [text_logprobs(llm, head, cands, start).tolist() for cands in items]
    out: list[list[float]] = [[] for _ in items]
    # each item's prefix: the start token + what all its candidates begin with (a whole candidate at most)
    prefixes = [[start, *common_prefix([list(c) for c in cands])] for cands in items]
    order = sorted(range(len(items)), key=lambda i: len(prefixes[i]))
    for i in range(0, len(order), chunk):  # items of similar prefix length together: little padding
        part = order[i: i + chunk]
        scored = _shared_prefix_logprobs(llm, head, [items[j] for j in part], [prefixes[j] for j in part], start, chunk)
        for j, scores in zip(part, scored):
            out[j] = scores
    return out


def _shared_prefix_logprobs(llm, head, items: Sequence[Sequence[Sequence[int]]], prefixes: list[list[int]],
                            start: int, chunk: int) -> list[list[float]]:
    """`candidate_logprobs` of a few items (`prefixes`: start token + common prefix of each): one
    pass over their prefixes, then their candidates' rests `chunk` at a time in length order,
    each after its item's cache rows."""
    device = llm.get_input_embeddings().weight.device
    width = max(map(len, prefixes))
    ids = torch.full((len(items), width), start, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, prefix in enumerate(prefixes):
        ids[i, : len(prefix)] = torch.as_tensor(prefix, dtype=torch.long)
        mask[i, : len(prefix)] = 1
    decoder = llm.get_decoder()
    first = decoder(input_ids=ids, attention_mask=mask, use_cache=True)
    cache = returned_cache(first)
    # (hidden row, target token, item, candidate) of every scored position
    hidden_rows, targets, owners = [], [], []
    shared = first.last_hidden_state  # (I, P, d)
    for i, prefix in enumerate(prefixes):  # the prefix's own tokens count for every candidate of the item
        for t in range(1, len(prefix)):
            hidden_rows.append(shared[i, t - 1])
            targets.append(prefix[t])
            owners.append((i, None))
    rests = [(i, j, list(c)[len(prefixes[i]) - 1:]) for i, cands in enumerate(items) for j, c in enumerate(cands)]
    for i, j, rest in rests:  # each rest's first token follows the prefix's last position
        if rest:
            hidden_rows.append(shared[i, len(prefixes[i]) - 1])
            targets.append(rest[0])
            owners.append((i, j))
    rests = sorted(((i, j, rest) for i, j, rest in rests if len(rest) > 1), key=lambda r: len(r[2]))
    cache_kw = cache_keyword(decoder)
    for k in range(0, len(rests), chunk):
        part = rests[k: k + chunk]
        rows = torch.tensor([i for i, _, _ in part], device=device)
        cache_rows = copy.deepcopy(cache) if k + chunk < len(rests) else cache  # the last part may use it up
        cache_rows.reorder_cache(rows)  # each rest reads its item's prefix keys and values
        length = max(len(rest) for _, _, rest in part) - 1  # the last token is scored, never read
        rest_ids = torch.full((len(part), length), start, dtype=torch.long, device=device)
        rest_mask = torch.zeros_like(rest_ids)
        for r, (_, _, rest) in enumerate(part):
            rest_ids[r, : len(rest) - 1] = torch.as_tensor(rest[:-1], dtype=torch.long)
            rest_mask[r, : len(rest) - 1] = 1
        positions = mask[rows].sum(1, keepdim=True) + torch.arange(length, device=device)[None]  # real tokens only
        second = decoder(input_ids=rest_ids, attention_mask=torch.cat([mask[rows], rest_mask], 1),
                         position_ids=positions, use_cache=True, **{cache_kw: cache_rows})
        for r, (i, j, rest) in enumerate(part):
            for t in range(1, len(rest)):
                hidden_rows.append(second.last_hidden_state[r, t - 1])
                targets.append(rest[t])
                owners.append((i, j))
    scores = [[0.0] * len(cands) for cands in items]
    if not hidden_rows:
        return scores
    token_logprobs = _token_logprobs(llm, head, torch.stack(hidden_rows), torch.tensor(targets, device=device))
    for (i, j), lp in zip(owners, token_logprobs.tolist()):
        for k in range(len(items[i])) if j is None else (j,):
            scores[i][k] += lp
    return scores


def _token_logprobs(llm, head, hidden: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """(M, d) decoder states, (M,) next tokens -> (M,) their log-probabilities under `head` (a
    `RowSubsetHead` scores its rows only, never (M, V)) or the LLM's output layer."""
    if hasattr(head, "logprobs"):
        return head.logprobs(hidden, wanted)
    scores = (head or llm.get_output_embeddings())(hidden)
    return scores.float().log_softmax(-1).gather(-1, wanted[:, None])[:, 0]


def choose(llm, head, items: Sequence[Candidates], weight: float, start: int) -> list[int]:
    """Per item, the index of its candidate with the best ``beam score + weight * log P_llm``; an
    item with one candidate (or none) keeps index 0 without being scored."""
    scored = [i for i, cands in enumerate(items) if len(cands) > 1]
    if not scored:
        return [0] * len(items)
    logprobs = candidate_logprobs(llm, head, [[c[0] for c in items[i]] for i in scored], start)
    picks = [0] * len(items)
    for i, lps in zip(scored, logprobs):
        totals = [beam + weight * lp for (_, beam), lp in zip(items[i], lps)]
        picks[i] = max(range(len(totals)), key=totals.__getitem__)
    return picks
