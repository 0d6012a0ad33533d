"""lexicon.py: a lexicon and word LM in a spelling head's CTC beam (align.word_weight)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speechwire.decoding import ctc_nbest, label_nbest
from speechwire.lexicon import WordScorer, read_word_list
from speechwire.ngram import EOS

CHARS = "zyxwvutsrqponmlkjihgfedcba' "  # a head order unlike the alphabet's: index k spells CHARS[k - 1]
TEXTS = ["ten of clubs", "the twelfth day", "ten of them", "of the day"]


def ids(text: str) -> tuple[int, ...]:
    return tuple(CHARS.index(c) + 1 for c in text)


def scorer(order: int = 2, weight: float = 0.5, oov: float = -3.0, lexicon=("tuesday", "twelve")) -> WordScorer:
    words = WordScorer.build(CHARS, TEXTS, lexicon, order)
    words.weight, words.oov = weight, oov
    return words


def reference(words: WordScorer, text: str) -> float:
    """The score a text should get, from its words: `oov` for each word not in the lexicon, the
    weighted word LM over whole words, the end of the sentence."""
    total, seen = 0.0, []
    for w in text.split(" ") if text else []:
        if not w:
            continue
        if w not in words.words:
            total += words.oov
        total += words.weight * words.lm.logprob(words.lm.context(seen), words.word_id(w))
        seen.append(words.word_id(w))
    return total + words.weight * words.lm.logprob(words.lm.context(seen), EOS)


def incremental(words: WordScorer, text: str) -> float:
    prefix = ids(text)
    return sum(words.extend(prefix[:i], prefix[i]) for i in range(len(prefix))) + words.final(prefix)


@given(st.lists(st.text("tenofclubsday", min_size=1, max_size=6), max_size=5), st.integers(1, 3),
       st.booleans())
@settings(max_examples=150, deadline=None)
def test_what_the_beam_adds_letter_by_letter_is_the_score_of_the_words(word_list, order, trailing_space):
    words = scorer(order)
    text = " ".join(word_list) + (" " if trailing_space and word_list else "")
    assert incremental(words, text) == pytest.approx(reference(words, text.strip()), abs=1e-9)


def test_leaving_the_lexicon_costs_once_and_lexicon_words_need_no_counts():
    words = scorer(order=1, weight=0.0, oov=-3.0)
    assert words.extend(ids("twe"), ids("l")[0]) == 0.0  # "twel" starts "twelfth" and "twelve"
    assert words.extend(ids("twel"), ids("t")[0]) == -3.0  # "twelt": no word starts so
    assert words.extend(ids("twelt"), ids("s")[0]) == 0.0  # already outside: not again
    assert words.extend(ids("twelts"), ids(" ")[0]) == 0.0 and words.final(ids("twelts")) == 0.0
    assert words.extend(ids("twelf"), ids(" ")[0]) == -3.0 == words.final(ids("twelf"))  # inside, not a word
    assert words.extend(ids("tu"), ids("e")[0]) == 0.0  # "tuesday": from the word list alone
    assert {"tuesday", "twelve", "clubs"} <= set(words.words) and len(words) == 9
    counted = scorer(order=1, weight=1.0)
    assert counted.extend(ids("of"), ids(" ")[0]) > counted.extend(ids("twelve"), ids(" ")[0])  # read 3x vs never


def _frames(frames: list[dict[str, float]]) -> np.ndarray:
    """(T, K + 1) log-probs: each frame's letters ("_": the blank) with their probabilities."""
    rows = []
    for frame in frames:
        row = np.full(len(CHARS) + 1, 1e-4)
        for c, p in frame.items():
            row[0 if c == "_" else CHARS.index(c) + 1] = p
        rows.append(row / row.sum())
    return np.log(np.stack(rows))


def spelt(nbest) -> str:
    return "".join(CHARS[k - 1] for k in nbest[0][0])


def test_a_lexicon_word_beats_an_acoustic_near_miss():
    """The frames lean to "twelt"; only "twelfth" is a word (the beam hears both)."""
    sure = [{c: 1.0} for c in "t_w_e_l_"]
    frames = _frames(sure + [{"t": 0.55, "f": 0.4}, {"t": 0.55, "_": 0.4}, {"h": 0.4, "_": 0.55}])
    lexicon = scorer(order=1, weight=0.0, oov=-3.0)
    assert spelt(ctc_nbest(frames, beam=8)) == "twelt"
    assert spelt(ctc_nbest(frames, beam=8, words=lexicon)) == "twelfth"
    # CIF's search (one letter per output) takes the same scorer
    outputs = _frames([{c: 1.0} for c in "twel"] + [{"t": 0.55, "f": 0.4}, {"t": 1.0}, {"s": 0.55, "h": 0.4}])
    assert spelt(label_nbest(outputs, beam=8)) == "tweltts"
    assert spelt(label_nbest(outputs, beam=8, words=lexicon)) == "twelfth"


@given(st.integers(0, 2**31 - 1))
@settings(max_examples=25, deadline=None)
def test_a_scorer_with_no_weight_changes_nothing(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(12, len(CHARS) + 1)) * 2
    logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    assert ctc_nbest(logp, beam=6, words=scorer(weight=0.0, oov=0.0)) == ctc_nbest(logp, beam=6)


def test_the_scorer_round_trips_through_checkpoint_tensors():
    words = scorer(order=2)
    back = WordScorer.from_tensors(words.to_tensors())
    back.weight, back.oov = words.weight, words.oov
    assert back.chars == CHARS and back.words == words.words and list(back.lm.items()) == list(words.lm.items())
    for text in ("ten of clubs", "twelt of", "the tuesday", ""):
        assert incremental(back, text) == incremental(words, text)


def test_word_lists_are_read_and_a_missing_one_is_named(tmp_path):
    (tmp_path / "words").write_text("Tuesday\n\nApril's\n", encoding="utf-8")
    assert read_word_list([str(tmp_path / "words")]) == ["Tuesday", "April's"]
    with pytest.raises(FileNotFoundError, match=r"align.lexicon: /usr/share/dict/nope does not exist.*wamerican"):
        read_word_list(["/usr/share/dict/nope"])
    with pytest.raises(ValueError, match="needs a head alphabet with the space"):
        WordScorer.build("abc", ["abc"])


def test_the_memos_stay_bounded_and_never_change_a_score(monkeypatch):
    import speechwire.lexicon as lexicon

    words = scorer(order=2)
    texts = ["twelt of clubs", "ten of them", "the tuesday", "qxz zzq"]
    expected = [incremental(words, t) for t in texts]
    monkeypatch.setattr(lexicon, "MEMO_ENTRIES", 5)
    words.clear()
    for _ in range(3):
        assert [incremental(words, t) for t in texts] == expected
        assert len(words._inside) <= 6 and len(words._word_ids) <= 6
