"""A token n-gram language model over the alignment head's vocabulary, for CTC beam search.

The frozen LLM knows English, but asking it for every beam extension costs a forward pass of
half a billion parameters; a count-based model over the same tokens costs a dictionary lookup.
It is built in the alignment stage from the training transcripts (plus any text files named in
`align.lm_text`) and saved in the checkpoint as two integer tensors, so a loaded model decodes
the same way.

Smoothing: interpolated absolute discounting (Ney, Essen and Kneser 1994) with discount D,

    P(w | h) = max(c(h w) - D, 0) / c(h) + D * N1+(h .) / c(h) * P(w | h')

down to an add-0.1 unigram over the K tokens (+ end of sentence), so every token has a probability.
Symbols: head indices 1..K (0 is the blank and never a token), BOS = -1, EOS = -2.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Sequence

import torch

BOS, EOS = -1, -2
DISCOUNT = 0.75
UNIGRAM_ADD = 0.1
# logprob's memo: ~3,000 new entries per clip with a character 7-gram LM, ~175 bytes each, so the
# cap holds ~80 clips' worth in ~45 MB (2 million entries grew a server by ~0.35 GB)
CACHE_ENTRIES = 250_000


class TokenNgramLM:
    """Counts of every n-gram up to `order` over head-index sequences.

    Args:
        order: n (3 = trigram).
        vocab_size: K, the head's token count (for the unigram floor).
        counts: n-gram -> count (`build` counts them; none: an empty model).
    """

    def __init__(self, order: int, vocab_size: int, counts: dict[tuple[int, ...], int] | None = None) -> None:
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        self.order, self.vocab_size = order, vocab_size
        self.counts: dict[tuple[int, ...], int] = dict(counts or {})
        # context totals and distinct followers, from the counts
        self._total: dict[tuple[int, ...], int] = defaultdict(int)
        self._types: dict[tuple[int, ...], int] = defaultdict(int)
        for gram, c in self.counts.items():
            self._total[gram[:-1]] += c
            self._types[gram[:-1]] += 1
        self._unigrams = self._total.get((), 0)
        self._cache: dict[tuple[tuple[int, ...], int], float] = {}

    @classmethod
    def build(cls, sentences: Iterable[Sequence[int]], order: int, vocab_size: int) -> "TokenNgramLM":
        """Count the n-grams of `sentences` (head-index sequences; BOS padding and EOS added here)."""
        counts: dict[tuple[int, ...], int] = defaultdict(int)
        for ids in sentences:
            seq = [BOS] * (order - 1) + list(ids) + [EOS]
            for i in range(order - 1, len(seq)):
                for n in range(1, order + 1):
                    counts[tuple(seq[i - n + 1: i + 1])] += 1
        return cls(order, vocab_size, counts)

    def __len__(self) -> int:
        return len(self.counts)

    def context(self, prefix: Sequence[int]) -> tuple[int, ...]:
        """The last order-1 symbols of a sentence prefix, BOS-padded."""
        return tuple(([BOS] * (self.order - 1) + list(prefix))[len(prefix):])  # () for a unigram model

    def logprob(self, context: tuple[int, ...], token: int) -> float:
        """Natural log P(token | context); context from `context()`."""
        key = (context, token)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        p = (self.counts.get((token,), 0) + UNIGRAM_ADD) / (self._unigrams + UNIGRAM_ADD * (self.vocab_size + 1))
        for n in range(2, self.order + 1):
            h = context[len(context) - (n - 1):]
            total = self._total.get(h, 0)
            if total:
                c = self.counts.get(h + (token,), 0)
                p = max(c - DISCOUNT, 0.0) / total + DISCOUNT * self._types[h] / total * p
        value = math.log(p)
        if len(self._cache) >= CACHE_ENTRIES:  # a server decodes for days: start afresh, keep what comes next
            self._cache.clear()
        self._cache[key] = value  # decoding asks the same (context, token) pairs over and over
        return value

    # --- storage in a checkpoint ----------------------------------------------------------------

    def to_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, order) n-grams right-aligned and left-padded with 0 (no symbol is 0), in the smallest
        integer type that holds the vocabulary (a character LM's millions of n-grams: int8), (N,) int32 counts."""
        dtype = next(t for t in (torch.int8, torch.int16, torch.int32) if self.vocab_size <= torch.iinfo(t).max)
        items = sorted(self.counts.items())
        rows = [(0,) * (self.order - len(gram)) + gram for gram, _ in items]
        return (torch.tensor(rows, dtype=dtype).reshape(len(items), self.order),
                torch.tensor([c for _, c in items], dtype=torch.int32))

    @classmethod
    def from_tensors(cls, grams: torch.Tensor, counts: torch.Tensor, vocab_size: int) -> "TokenNgramLM":
        return cls(int(grams.shape[1]), vocab_size,
                   {tuple(x for x in row if x != 0): int(c) for row, c in zip(grams.tolist(), counts.tolist())})
