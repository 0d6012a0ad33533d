"""decoding.py: the loop guard, the answer cleaning and logaddexp, on lists, strings and floats."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from speechwire.decoding import clean_answer, logaddexp, loop_cut, word_change


def test_loop_cut_keeps_max_repeats_copies_of_a_token_or_a_phrase():
    assert loop_cut([7, 7, 7], 2) == 2
    assert loop_cut([7, 7], 2) is None
    assert loop_cut([5, 1, 2, 1, 2, 1, 2], 2) == 5  # "1 2" a third time: cut to two copies
    assert loop_cut([9, 1, 2, 3] * 3, 2) == 8
    assert loop_cut([1, 2, 3, 1, 2, 3], 2) is None
    assert loop_cut([1, 1, 1, 1], 0) is None  # 0: the guard is off


def test_loop_cut_finds_a_clause_repeated_over_and_over():
    clause = list(range(100, 120))  # 20 tokens
    answer = [1, 2, 3] + clause * 3
    assert loop_cut(answer, 2) == 3 + 40


@given(st.lists(st.integers(0, 4), max_size=40), st.integers(1, 3))
def test_loop_cut_result_has_no_loop_and_is_a_prefix(tokens, max_repeats):
    """Decoding checks after every token: the answer it keeps never holds more than max_repeats copies
    of any unit in a row at any point, and is a prefix of what greedy produced."""
    kept: list[int] = []
    for t in tokens:
        kept.append(t)
        cut = loop_cut(kept, max_repeats)
        if cut is not None:
            del kept[cut:]
            break
    assert kept == tokens[: len(kept)]
    for end in range(1, len(kept) + 1):
        assert loop_cut(kept[:end], max_repeats) is None


def test_clean_answer_removes_quote_markers_and_chat_preambles():
    assert clean_answer('"power of close."', '"') == "power of close."
    assert clean_answer('"cling"', '"') == "cling"
    assert clean_answer('"Hello".', '"') == "Hello."
    assert clean_answer('Sure, here it is: "ten of clubs"', '"') == "ten of clubs"
    assert clean_answer("Certainly! Here's the repeated text: Goodbye.", '"') == "Goodbye."
    assert clean_answer("Sure, here it is:", '"') == ""
    assert clean_answer("The transcription is: please hold.", None) == "please hold."


def test_clean_answer_keeps_what_may_have_been_said():
    assert clean_answer('He said "hi"', '"') == 'He said "hi"'  # balanced quotes inside the text
    assert clean_answer("Okay.", '"') == "Okay."
    assert clean_answer("Here we are at last.", '"') == "Here we are at last."
    assert clean_answer('"quoted"', None) == '"quoted"'  # no marker: quotes may be the text's own


def _scripted(steps: list[list[int]], vocab: int = 10):
    """next_logits that plays back `steps` (one token per item per step) and records what it was given."""
    import torch

    given = []

    def next_logits(tokens):
        given.append(None if tokens is None else tokens.tolist())
        row = steps[len(given) - 1]
        logits = torch.zeros(len(row), vocab)
        logits[torch.arange(len(row)), torch.tensor(row)] = 1.0
        return logits
    return next_logits, given


def test_greedy_search_stops_each_item_on_its_own_and_feeds_back_its_choices():
    from speechwire.decoding import greedy_search

    next_logits, given = _scripted([[1, 2], [9, 3], [4, 9], [5, 6]])
    assert greedy_search(next_logits, 2, max_new=10, stops={9}) == [[1], [2, 3]]
    assert given == [None, [1, 2], [9, 3]]  # stops once every item has hit a stop token


def test_greedy_search_cuts_loops_keeps_max_new_and_obeys_on_step():
    from speechwire.decoding import greedy_search

    next_logits, _ = _scripted([[4, 1]] * 6)
    assert greedy_search(next_logits, 2, max_new=6, stops={9}, max_repeats=2) == [[4, 4], [1, 1]]
    next_logits, _ = _scripted([[4, 1], [5, 2], [6, 3]])
    assert greedy_search(next_logits, 2, max_new=2, stops={9}) == [[4, 5], [1, 2]]
    next_logits, given = _scripted([[4, 1], [5, 2], [6, 3]])
    assert greedy_search(next_logits, 2, max_new=3, stops={9},
                         on_step=lambda answers: [0] if len(answers[0]) == 2 else None) == [[4, 5], [1, 2, 3]]
    assert greedy_search(_scripted([])[0], 3, max_new=0, stops={9}) == [[], [], []]


def test_word_change_is_zero_for_a_copy_and_about_one_for_an_answer():
    assert word_change("What church do you belong to.", "what church do you belong to?") == 0.0
    assert word_change("I still owe you ten.", "I still owe you ten euros.") == 0.2  # one word added to five
    assert word_change("What church do you belong to.", "The church I belong to is the Catholic Church.") > 0.8
    assert word_change("", "anything") == 1.0 and word_change("", "") == 0.0
    assert word_change("Hello there.", "") == 1.0


@given(st.lists(st.sampled_from(["a", "bc", "it's", "ten", "Bc"]), max_size=8),
       st.lists(st.sampled_from(["a", "bc", "it's", "ten", "x"]), max_size=8))
def test_word_change_is_an_edit_distance_over_the_heard_words(heard, answer):
    h, a = " ".join(heard), " ".join(answer)
    change = word_change(h, a)
    assert change == 0.0 if [w.lower() for w in heard] == answer else change > 0
    assert change * max(len(heard), 1) <= max(len(heard), len(answer)) + 1e-9  # never more edits than words
    assert word_change(h, h.upper()) == 0.0


@given(st.one_of(st.just(-math.inf), st.floats(-1e4, 50, allow_nan=False)),
       st.one_of(st.just(-math.inf), st.floats(-1e4, 50, allow_nan=False)))
@settings(max_examples=300, deadline=None)
def test_logaddexp_gives_numpys_value(x, y):
    assert logaddexp(x, y) == float(np.logaddexp(x, y)) == logaddexp(y, x)
