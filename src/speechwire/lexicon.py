"""Words for a spelling head's beam search: a lexicon and a word n-gram LM (`align.word_weight`).

A character n-gram LM knows how English is spelt, not which words exist, and the chars head's beam
writes near-misses no English writer would ("Tu is day.", "enty", "twelt"). While the beam spells,
`WordScorer` adds `oov` (a negative log-score) once per word that is not in the lexicon, as soon as
it is known (when the word being spelt stops being the start of any lexicon word, else when it
ends), and `weight * log P(word | previous words)` when a word ends (a space, or the end of the
text). The lexicon is every word of the LM's texts plus word lists (`align.lexicon`, e.g.
/usr/share/dict/words: words nobody said in training are still words); the word LM is counted on
the texts (`ngram.TokenNgramLM` over word ids, unknown words one id).

Like the character LM it is built in the alignment stage and saved in the checkpoint as tensors
(`to_tensors`), so a loaded model decodes the same way; weight and penalty come from the config at
decoding time (`--set align.word_weight=...` tunes a trained model).
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from speechwire.ngram import EOS, TokenNgramLM

if TYPE_CHECKING:  # torch loads where a checkpoint is read or written: not in a beam search process (beam_pool.py)
    import torch

MEMO_ENTRIES = 100_000  # per memo: spelt prefixes and partial words remembered (one clip makes a few thousand)


def read_word_list(paths: Sequence[str]) -> list[str]:
    """Words of the `align.lexicon` files, one per line (a word list such as /usr/share/dict/words);
    errors name the file."""
    words: list[str] = []
    for path in paths:
        p = Path(path).expanduser()
        if not p.is_file():
            hint = " (Debian/Ubuntu: apt-get install wamerican)" if str(p).startswith("/usr/share/dict") else ""
            raise FileNotFoundError(f"align.lexicon: {p} does not exist; give word lists, one word per line{hint}")
        words += [line.strip() for line in p.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return words


def _bytes(text: str) -> torch.Tensor:
    import torch

    return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)


def _text(data: torch.Tensor) -> str:
    return bytes(data.tolist()).decode("utf-8")


class WordScorer:
    """Word-level scores for a CTC beam over one-character head tokens.

    Args:
        chars: the head's alphabet in head order (head index k spells chars[k - 1]); must hold " ".
        words: the lexicon (any order, duplicates dropped); word ids are positions in sorted order + 1.
        lm: a `TokenNgramLM` over word ids 1..len(words) + 1 (the last: unknown words).
        weight, oov: the word LM's fusion weight and the penalty for leaving the lexicon (<= 0).
    """

    def __init__(self, chars: str, words: Iterable[str], lm: TokenNgramLM, weight: float = 0.0, oov: float = 0.0) -> None:
        if " " not in chars:
            raise ValueError("WordScorer needs a head alphabet with the space (align.vocab=chars)")
        self.chars, self.space = chars, chars.index(" ") + 1
        self.words = sorted(set(words))
        self.unknown = len(self.words) + 1
        self.lm, self.weight, self.oov = lm, weight, oov
        self._inside: dict[tuple[int, ...], bool] = {(): True}
        self._word_ids: dict[tuple[int, ...], tuple[int, ...]] = {(): ()}

    @classmethod
    def build(cls, chars: str, texts: Iterable[str], lexicon: Iterable[str] = (), order: int = 1) -> "WordScorer":
        """From spelt sentences (`align.spell`: lower case, words split by single spaces) and extra
        lexicon words (spelt the same way; a list entry that spells as several words is skipped)."""
        sentences = [t.split() for t in texts if t and t.strip()]
        extra = [w for w in lexicon if w and " " not in w]
        words = sorted({w for s in sentences for w in s} | set(extra))
        ids = {w: i + 1 for i, w in enumerate(words)}
        lm = TokenNgramLM.build(([ids[w] for w in s] for s in sentences), order, len(words) + 1)
        return cls(chars, words, lm)

    def __len__(self) -> int:
        return len(self.words)

    # --- what the beam adds ----------------------------------------------------------------------

    def extend(self, prefix: tuple[int, ...], k: int) -> float:
        """The score of spelling head index `k` after `prefix` (head indices)."""
        start = self._word_start(prefix)
        if k == self.space:
            return self._word_end(prefix, start) if start < len(prefix) else 0.0
        part = prefix[start:]
        return self.oov if self.inside(part) and not self.inside(part + (k,)) else 0.0

    def final(self, prefix: tuple[int, ...]) -> float:
        """The score of ending the text after `prefix`: its last word, then the end of the sentence."""
        start = self._word_start(prefix)
        last = self._word_end(prefix, start) if start < len(prefix) else 0.0
        context = self.lm.context(self.word_ids(tuple(prefix)))
        return last + self.weight * self.lm.logprob(context, EOS)

    # --- pieces ----------------------------------------------------------------------------------

    def letters(self, ids: Sequence[int]) -> str:
        """The text that head indices spell."""
        return "".join(self.chars[k - 1] for k in ids)

    def word_id(self, word: str) -> int:
        """1 + the word's place in the sorted lexicon; `unknown` for a word outside it (a bisection:
        no second table of 100k words)."""
        i = bisect.bisect_left(self.words, word)
        return i + 1 if i < len(self.words) and self.words[i] == word else self.unknown

    def inside(self, part: tuple[int, ...]) -> bool:
        """Whether the letters `part` begin some lexicon word."""
        known = self._inside.get(part)
        if known is None:
            if len(self._inside) > MEMO_ENTRIES:
                self.clear()
            text = self.letters(part)
            i = bisect.bisect_left(self.words, text)
            known = self._inside[part] = i < len(self.words) and self.words[i].startswith(text)
        return known

    def word_ids(self, prefix: tuple[int, ...]) -> tuple[int, ...]:
        """The word ids of a spelt prefix's complete and partial words."""
        known = self._word_ids.get(prefix) if self.lm.order > 1 else ()
        if known is None:
            if len(self._word_ids) > MEMO_ENTRIES:
                self.clear()
            text = self.letters(prefix)
            known = self._word_ids[prefix] = tuple(map(self.word_id, text.split()))
        return known

    def _word_start(self, prefix: tuple[int, ...]) -> int:
        i = len(prefix)
        while i and prefix[i - 1] != self.space:
            i -= 1
        return i

    def _word_end(self, prefix: tuple[int, ...], start: int) -> float:
        part = prefix[start:]
        word = self.word_id(self.letters(part))
        context = self.lm.context(self.word_ids(tuple(prefix[:start])))
        # a non-word still inside the lexicon ("twelft") pays here what one that left it paid on the way
        missed = self.oov if word == self.unknown and self.inside(part) else 0.0
        return missed + self.weight * self.lm.logprob(context, word)

    def clear(self) -> None:
        """Drop the memos (a server decodes for days)."""
        self._inside, self._word_ids = {(): True}, {(): ()}

    def __getstate__(self) -> dict:
        """Without the memos (a copy for a beam search process: they refill there)."""
        return {**self.__dict__, "_inside": {(): True}, "_word_ids": {(): ()}}

    # --- storage in a checkpoint -----------------------------------------------------------------

    def to_tensors(self) -> dict[str, torch.Tensor]:
        grams, counts = self.lm.to_tensors()
        return {"word_chars": _bytes(self.chars), "word_list": _bytes("\n".join(self.words)),
                "word_grams": grams, "word_counts": counts}

    @classmethod
    def from_tensors(cls, data: dict[str, torch.Tensor]) -> "WordScorer":
        words = [w for w in _text(data["word_list"]).split("\n") if w]
        lm = TokenNgramLM.from_tensors(data["word_grams"], data["word_counts"], len(words) + 1)
        return cls(_text(data["word_chars"]), words, lm)


WORD_KEYS = ("word_chars", "word_list", "word_grams", "word_counts")
