"""Decoding policy: when a greedy answer stops, and what of it the user sees.

The model computes next-token scores; what to do with them lives here (as in whisper's
``decoding.py``):

- `greedy_search`: the LLM's answer, its best token at each step until a stop token, for a whole
  batch (the model hands it a function from the tokens just chosen to the next ones);
- `accept_draft`: a draft answer checked in one pass (``eval.draft``: the text the alignment head
  heard, which the LLM mostly copies): the tokens the LLM agrees with, then its own;
- `loop_cut`: a greedy loop, one token ("t t t t") or a phrase (a clause six times over),
  ends the answer after `max_repeats` copies;
- `clean_answer`: the text without what the prompt made the LLM add: the quote marks the
  speech sits between (``llm.marker_init: '"'``) and a chat preamble ("Sure, here it is:");
- `word_change`: how far an answer strays from the words the alignment head heard
  (``eval.max_rewrite``: the LLM answered a spoken question instead of copying it);
- `ctc_nbest` (`ctc_beam_search`: its best): which tokens the alignment head's outputs spell
  (``align.decode: beam``), with an n-gram LM of English text fused in (ngram.py), instead of the
  best path; its best few texts are what ``align.rescore`` hands the LLM (rescore.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

import numpy as np

from speechwire.metrics import edit_distance
from speechwire.ngram import EOS

MAX_LOOP_PERIOD = 24  # longest repeated phrase looked for, in tokens (a clause)
# generate(on_step=...): called after every step with the answers so far; returns the items to stop
StepCallback = Callable[[list[list[int]]], Iterable[int] | None]


# greedy_search's model side: (the tokens chosen last for the items still decoding, None at the first
# call; their indices in the batch) -> per item the tokens the model proposes now, in order: its one
# greedy token, or (draft verification) the draft tokens it agreed with and then its own next token
GreedyStep = Callable[[list[int] | None, list[int]], list[list[int]]]


def greedy_search(step: GreedyStep, batch_size: int, max_new: int, stops: set[int], max_repeats: int = 0,
                  on_step: StepCallback | None = None) -> list[list[int]]:
    """Greedy decoding of a batch: each item's best tokens until a stop token, a loop (`loop_cut`),
    `max_new` tokens, or `on_step` stops it.

    Args:
        step: see GreedyStep; it keeps the model's own state (KV cache, positions) and is only
            asked about the items still decoding (a finished item's rows can be dropped).
        batch_size: B.
        max_new: most tokens generated per item.
        stops: token ids that end an item (not part of its answer).
        max_repeats: copies of a repeated token or phrase an answer keeps (0: no limit).
        on_step: see StepCallback.

    Returns:
        The generated ids per item, stop token excluded: what one token per step would give, as
        the proposals are taken token by token through the same checks.
    """
    done = [False] * batch_size
    answers: list[list[int]] = [[] for _ in range(batch_size)]
    active, last = (list(range(batch_size)) if max_new > 0 else []), None
    while active:
        for b, proposed in zip(active, step(last, active)):
            for t in proposed:
                if t in stops:
                    done[b] = True
                    break
                answers[b].append(t)
                cut = loop_cut(answers[b], max_repeats)  # a token or phrase loop ends the item, extra copy cut
                if cut is not None:
                    del answers[b][cut:]
                    done[b] = True
                    break
                if len(answers[b]) >= max_new:
                    done[b] = True
                    break
        if on_step is not None:
            for b in on_step(answers) or ():  # e.g. a streaming client went away: its item stops here
                done[b] = True
        active = [b for b in active if not done[b]]
        last = [answers[b][-1] for b in active]  # each unfinished item's newest token is what the model reads next
    return answers


def accept_draft(choices: list[int], draft: list[int]) -> list[int]:
    """The greedy tokens a verification pass yields: the longest prefix of `draft` the model agrees
    with, then the model's own choice after it.

    Args:
        choices: the model's greedy token after the prompt and after each of the first k draft
            tokens, k = 0 .. len(draft) (len(draft) + 1 entries).
        draft: the proposed answer tokens.

    Examples:
        choices [5, 6, 9], draft [5, 6] -> [5, 6, 9] (all agreed; 9 comes after the draft);
        choices [5, 7, 9], draft [5, 6] -> [5, 7] (6 was not the model's choice: 7 is, and 9 came
        after a 6 that is not there).
    """
    if len(choices) != len(draft) + 1:
        raise ValueError(f"accept_draft: {len(choices)} choices for a draft of {len(draft)} tokens (need one more)")
    agreed = 0
    while agreed < len(draft) and choices[agreed] == draft[agreed]:
        agreed += 1
    return draft[:agreed] + [choices[agreed]]


_PREAMBLE = re.compile(
    r"""^\s*(?:(?:sure|certainly|of\s+course|okay|ok|alright|yes)\b[\s,!.]*)?
        (?:here\b[^:\n"]{0,40}:|the\s+(?:text|transcript(?:ion)?|translation)\s+(?:is|reads)\s*:)\s*""",
    re.IGNORECASE | re.VERBOSE,
)
_QUOTES = {'"': '"', "'": "'", "“": "”", "«": "»", "„": "“"}


def loop_cut(tokens: list[int], max_repeats: int, max_period: int = MAX_LOOP_PERIOD) -> int | None:
    """Where to cut a greedy loop at the end of `tokens`, or None when there is none.

    A loop is a unit of p tokens (1 <= p <= max_period) repeated more than `max_repeats` times in a
    row at the end; the answer keeps `max_repeats` copies. Checked after every step, so the first
    extra copy is caught as it completes.

    Args:
        tokens: the answer so far.
        max_repeats: copies allowed (0: never cut).

    Returns:
        The length to cut `tokens` to, or None.
    """
    if max_repeats <= 0:
        return None
    n = len(tokens)
    for p in range(1, max_period + 1):
        if (max_repeats + 1) * p > n:
            break
        unit = tokens[n - p:]
        if all(tokens[n - k * p - p: n - k * p] == unit for k in range(1, max_repeats + 1)):
            return n - p
    return None


def clean_answer(text: str, marker: str | None = None) -> str:
    """The answer as a user should see it.

    Args:
        text: the decoded answer.
        marker: the character the speech was quoted with (``llm.marker_init``), if any: a pair of
            them around the whole answer, or one left at either end, is removed.

    Examples:
        ``'"power of close."'`` -> ``'power of close.'``; ``'Sure, here it is: "Hello."'`` -> ``'Hello.'``;
        ``'Sure, here it is:'`` -> ``''``; ``'Okay.'`` stays (it may be what was said).
    """
    text = _PREAMBLE.sub("", text.strip(), count=1)  # a preamble alone ("Sure, here it is:") leaves ""
    close = _QUOTES.get(marker or "")
    if close is not None:
        opened = text.startswith(marker)
        text = text[len(marker):] if opened else text
        for tail in (close, close + ".", close + "!", close + "?"):
            # an end quote goes with the opening one, or is the odd one out: 'He said "hi"' keeps its pair
            if text.endswith(tail) and (opened or text.count(close) % 2 == 1):
                text = text[: -len(tail)] + tail[len(close):]
                break
    return text.strip()


def words(text: str) -> list[str]:
    """The words `word_change` compares: lower case, punctuation dropped."""
    return re.sub(r"[^\w' ]", " ", text.lower()).split()


def word_change(heard: str, answer: str) -> float:
    """Word edit distance from `heard` to `answer` over the words heard (case and punctuation
    ignored): 0 for a faithful copy, ~1 for an answer to the question instead of its words."""
    a, b = words(heard), words(answer)
    return edit_distance(a, b) / max(len(a), 1)


def rewrite_bound(heard: str, max_rewrite: float) -> int:
    """The most words an answer can have and still be kept under ``eval.max_rewrite``: one with more
    changes more than `max_rewrite` of the words heard (the length difference alone), so decoding it
    further is wasted: the heard text replaces it whatever comes next."""
    n = len(words(heard))
    return n + int(max(n, 1) * max_rewrite) + 1


def ctc_beam_search(log_probs: np.ndarray, beam: int = 8, lm=None, lm_weight: float = 0.0,
                    token_bonus: float = 0.0, top_k: int = 8, blank_skip: float = 0.999, words=None) -> list[int]:
    """The best prefix of `ctc_nbest` (its arguments); an empty list for no token."""
    return ctc_nbest(log_probs, beam, lm, lm_weight, token_bonus, top_k, blank_skip, words)[0][0]


def logaddexp(x: float, y: float) -> float:
    """log(exp(x) + exp(y)) of two Python floats, computed as numpy.logaddexp computes it (the same
    value), without numpy's per-call cost: the beam search makes a few hundred thousand per batch."""
    if x == y:  # also both -inf
        return x + _LN2
    d = x - y
    return x + math.log1p(math.exp(-d)) if d > 0 else y + math.log1p(math.exp(d))


_LN2 = math.log(2.0)


def _end_score(prefix: tuple[int, ...], lm, lm_weight: float, words) -> float:
    """What ending the text after `prefix` adds: the LM's end of sentence, the last word's score."""
    end = lm_weight * lm.logprob(lm.context(prefix), EOS) if lm is not None else 0.0
    return end + (words.final(prefix) if words is not None else 0.0)


def ctc_nbest(log_probs: np.ndarray, beam: int = 8, lm=None, lm_weight: float = 0.0,
              token_bonus: float = 0.0, top_k: int = 8, blank_skip: float = 0.999,
              words=None) -> list[tuple[list[int], float]]:
    """CTC prefix beam search over one item's frames, with shallow fusion of a token n-gram LM.

    Each prefix keeps two log-probabilities (paths ending in blank, in a token); extending a
    prefix by token k adds ``lm_weight * log P_lm(k | prefix) + token_bonus`` once, and the final
    choice adds the LM's end-of-sentence score. Frames whose blank probability exceeds
    `blank_skip` only extend paths by blank (most frames: the search stays cheap).

    Args:
        log_probs: (T', K + 1) log-softmax of the alignment head; index 0 is the blank.
        beam: prefixes kept per frame.
        lm: a `ngram.TokenNgramLM` over head indices, or None (plain beam search).
        lm_weight, token_bonus: fusion weight and per-token bonus (the LM penalises length).
        top_k: tokens tried per frame (by CTC probability).
        words: a `lexicon.WordScorer` (a chars head), or None: its `extend(prefix, k)` is added with
            the LM's score, its `final(prefix)` at the end.

    Returns:
        Up to `beam` (prefix, score) pairs, best first: head indices (1..K) with repeats merged and
        blanks removed, and the fused log-score including the LM's end of sentence.
    """
    neg = -math.inf
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, neg)}
    top_k = min(top_k, log_probs.shape[1] - 1)
    skip = math.log(blank_skip)
    for frame in log_probs:
        row = frame.tolist()  # Python floats: numpy's per-scalar calls cost more than the arithmetic
        blank = row[0]
        candidates = [int(k) + 1 for k in np.argpartition(-frame[1:], top_k - 1)[:top_k]] if blank < skip else []
        nxt: dict[tuple[int, ...], list[float]] = {}
        for prefix, (pb, pnb) in beams.items():
            total = logaddexp(pb, pnb)
            entry = nxt.setdefault(prefix, [neg, neg])
            entry[0] = logaddexp(entry[0], total + blank)
            if prefix:  # the last token again, no blank between: the same prefix
                entry[1] = logaddexp(entry[1], pnb + row[prefix[-1]])
            if not candidates:
                continue
            context = lm.context(prefix) if lm is not None else ()
            for k in candidates:
                fused = row[k] + token_bonus + (lm_weight * lm.logprob(context, k) if lm is not None else 0.0)
                if words is not None:
                    fused += words.extend(prefix, k)
                # a repeat of the last token is a new token only after a blank
                score = (pb if prefix and k == prefix[-1] else total) + fused
                new = nxt.setdefault(prefix + (k,), [neg, neg])
                new[1] = logaddexp(new[1], score)
        ranked = sorted(nxt.items(), key=lambda kv: -logaddexp(kv[1][0], kv[1][1]))[:beam]
        beams = {p: (s[0], s[1]) for p, s in ranked}

    return sorted(((list(prefix), logaddexp(pb, pnb) + _end_score(prefix, lm, lm_weight, words))
                   for prefix, (pb, pnb) in beams.items()), key=lambda ps: -ps[1])


def label_nbest(log_probs: np.ndarray, beam: int = 8, lm=None, lm_weight: float = 0.0,
                token_bonus: float = 0.0, top_k: int = 8, words=None) -> list[tuple[list[int], float]]:
    """Beam search over outputs that are one token each (CIF fires one vector per token), with the
    same shallow fusion as `ctc_nbest`: every output adds exactly one token, repeats included
    ("ll" is two outputs), and the blank column is never read.

    Args:
        log_probs: (T', K + 1) log-softmax of the alignment head; index 0 (the blank) is ignored
            and the tokens are renormalised without it.
        beam, lm, lm_weight, token_bonus, top_k, words: as in `ctc_nbest`.

    Returns:
        Up to `beam` (prefix, score) pairs, best first: head indices (1..K), one per output, and
        the fused log-score including the LM's end of sentence; [([], score)] for no outputs.
    """
    tokens = log_probs[:, 1:] - np.logaddexp.reduce(log_probs[:, 1:], axis=1, keepdims=True)  # (T', K)
    top_k = min(top_k, tokens.shape[1])
    beams: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    for row in tokens:
        candidates = [int(k) for k in np.argpartition(-row, top_k - 1)[:top_k]]
        grown = []
        for prefix, score in beams:
            context = lm.context(prefix) if lm is not None else ()
            for k in candidates:
                fused = float(row[k]) + token_bonus + (lm_weight * lm.logprob(context, k + 1) if lm is not None else 0.0)
                if words is not None:
                    fused += words.extend(prefix, k + 1)
                grown.append((prefix + (k + 1,), score + fused))
        beams = sorted(grown, key=lambda ps: -ps[1])[:beam]
    ends = [(list(prefix), score + _end_score(prefix, lm, lm_weight, words)) for prefix, score in beams]
    return sorted(ends, key=lambda ps: -ps[1])
