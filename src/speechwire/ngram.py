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
from array import array
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch loads where a checkpoint is read or written: not in a beam search process (beam_pool.py)
    import torch

BOS, EOS = -1, -2
DISCOUNT = 0.75
UNIGRAM_ADD = 0.1
# logprob's memo: ~3,000 new entries per clip with a character 7-gram LM, ~175 bytes each, so the
# cap holds ~80 clips' worth in ~45 MB (2 million entries grew a server by ~0.35 GB)
CACHE_ENTRIES = 250_000
# _followers' memo: one small table per context, ~0.5 kB each with a character 7-gram LM; 16 real
# clips ask ~11,000 contexts
FOLLOWER_ENTRIES = 20_000


class TokenNgramLM:
    """Counts of every n-gram up to `order` over head-index sequences.

    Each n-gram is kept as one integer (`key`: its symbols as the digits of a number in base K + 4,
    no digit 0, so n-grams of every length get distinct keys) in one sorted flat array: a
    character 7-gram LM of the demo's corpus (459k n-grams) takes 0.01 GiB this way (0.07 in
    dictionaries: a Python int and a dict slot per key) and loads in 0.2 s instead of 2.4. The
    followers of a context are one run of that array (`_followers`), read into a small table the
    first time decoding asks for the context.

    Args:
        order: n (3 = trigram).
        vocab_size: K, the head's token count (for the unigram floor).
        counts: n-gram (a tuple of symbols) -> count (`build` counts them; none: an empty model).
    """

    def __init__(self, order: int, vocab_size: int, counts: dict[tuple[int, ...], int] | None = None) -> None:
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        self.order, self.vocab_size = order, vocab_size
        self.base = vocab_size + 4  # digits: EOS 1, BOS 2, token k -> k + 3
        self._powers = [self.base**i for i in range(order)]
        counts = counts or {}
        grams = np.zeros((len(counts), order), dtype=np.int64)
        for row, gram in zip(grams, counts):
            row[order - len(gram):] = gram
        self._index(grams, np.fromiter(counts.values(), dtype=np.int64, count=len(counts)))
        self._cache: dict[tuple[tuple[int, ...], int], float] = {}

    def _index(self, grams: np.ndarray, counts: np.ndarray) -> None:
        """Sorted key table of `grams` ((N, order) symbols, right-aligned, left-padded with 0)."""
        # keys up to base**order: int64 where they fit (a character 7-gram LM: 44**7), else Python ints
        dtype = np.int64 if self.base**self.order < 2**63 else object
        keys = np.zeros(len(grams), dtype=dtype)
        for column in grams.T.astype(dtype):
            keys = np.where(column != 0, keys * self.base + column + 3, keys)
        order = np.argsort(keys, kind="stable")
        self._keys, self._counts = _flat(keys[order]), _flat(counts[order])
        self._followers_memo: dict[int, tuple[dict[int, int], int]] = {}

    def _followers(self, context: int) -> tuple[dict[int, int], int]:
        """The n-grams that continue a context key, as {last digit: count}, and their total count.

        The keys of a context's followers (context * base + digit, digit < base) are one run of the
        sorted keys, found by two bisections; the tables are memoised per context (decoding asks
        the same few contexts for each of the beam's candidate tokens)."""
        memo = self._followers_memo.get(context)
        if memo is None:
            first = context * self.base
            lo = bisect_left(self._keys, first)
            hi = bisect_left(self._keys, first + self.base, lo)
            counts = self._counts[lo:hi]
            memo = ({key - first: c for key, c in zip(self._keys[lo:hi], counts)}, sum(counts))
            if len(self._followers_memo) >= FOLLOWER_ENTRIES:
                self._followers_memo.clear()
            self._followers_memo[context] = memo
        return memo

    def __getstate__(self) -> dict:
        """Without the memos (a copy for a beam search process: they refill there)."""
        return {**self.__dict__, "_cache": {}, "_followers_memo": {}}

    def items(self) -> Iterator[tuple[int, int]]:
        """(key, count) of every n-gram, in key order."""
        return zip(self._keys, self._counts)

    def key(self, gram: Sequence[int]) -> int:
        """An n-gram's integer key (the empty one: 0)."""
        value = 0
        for symbol in gram:
            value = value * self.base + symbol + 3
        return value

    def gram(self, key: int) -> tuple[int, ...]:
        """The n-gram of a key (`key`'s inverse)."""
        symbols = []
        while key:
            key, digit = divmod(key, self.base)
            symbols.append(digit - 3)
        return tuple(reversed(symbols))

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
        return len(self._keys)

    def context(self, prefix: Sequence[int]) -> tuple[int, ...]:
        """The last order-1 symbols of a sentence prefix, BOS-padded."""
        n = self.order - 1
        if len(prefix) >= n:
            return tuple(prefix[len(prefix) - n:])  # () for a unigram model
        return (BOS,) * (n - len(prefix)) + tuple(prefix)

    def logprob(self, context: tuple[int, ...], token: int) -> float:
        """Natural log P(token | context); context from `context()`."""
        cache_key = (context, token)
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        digit = token + 3
        followers, total = self._followers(0)
        p = (followers.get(digit, 0) + UNIGRAM_ADD) / (total + UNIGRAM_ADD * (self.vocab_size + 1))
        h = 0  # the key of the context's last n - 1 symbols, grown from the right
        for n in range(2, self.order + 1):
            h += (context[len(context) - (n - 1)] + 3) * self._powers[n - 2]
            followers, total = self._followers(h)
            if not total:  # a context never seen: no longer context that ends with it was either
                break
            p = max(followers.get(digit, 0) - DISCOUNT, 0.0) / total + DISCOUNT * len(followers) / total * p
        value = math.log(p)
        if len(self._cache) >= CACHE_ENTRIES:  # a server decodes for days: start afresh, keep what comes next
            self._cache.clear()
        self._cache[cache_key] = value  # decoding asks the same (context, token) pairs over and over
        return value

    # --- storage in a checkpoint ----------------------------------------------------------------

    def to_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, order) n-grams right-aligned and left-padded with 0 (no symbol is 0), in the smallest
        integer type that holds the vocabulary (a character LM's millions of n-grams: int8), (N,) int32 counts,
        in key order."""
        import torch

        dtype = next(t for t in (torch.int8, torch.int16, torch.int32) if self.vocab_size <= torch.iinfo(t).max)
        rows = [(0,) * (self.order - len(gram)) + gram for gram in map(self.gram, self._keys)]
        return (torch.tensor(rows, dtype=dtype).reshape(len(rows), self.order),
                torch.tensor(list(self._counts), dtype=torch.int32))

    @classmethod
    def from_tensors(cls, grams: torch.Tensor, counts: torch.Tensor, vocab_size: int) -> "TokenNgramLM":
        """The LM of `to_tensors()`' output (rows in any order)."""
        lm = cls(int(grams.shape[1]), vocab_size)
        lm._index(grams.numpy().astype(np.int64), counts.numpy().astype(np.int64))
        return lm


def _flat(values: np.ndarray) -> array | list:
    """A C array of 64-bit integers for bisection (8 bytes an entry); a list where they do not fit."""
    return array("q", values.tobytes()) if values.dtype == np.int64 else values.tolist()
