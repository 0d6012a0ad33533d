"""decoding.py: the loop guard, the answer cleaning and logaddexp, on lists, strings and floats."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speechwire.decoding import clean_answer, logaddexp, loop_cut, rewrite_bound, word_change


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


def _scripted(steps: list[list[int]]):
    """A greedy step that plays back `steps` (one token per item of the batch per step) and records
    what it was given: (the tokens fed back, the items still decoding)."""
    given = []

    def step(tokens, active):
        given.append((tokens, list(active)))
        row = steps[len(given) - 1]
        return [[row[b]] for b in active]
    return step, given


def test_greedy_search_stops_each_item_on_its_own_and_feeds_back_its_choices():
    from speechwire.decoding import greedy_search

    step, given = _scripted([[1, 2], [9, 3], [4, 9], [5, 6]])
    assert greedy_search(step, 2, max_new=10, stops={9}) == [[1], [2, 3]]
    # a finished item is no longer asked about; the step stops once every item has hit a stop token
    assert given == [(None, [0, 1]), ([1, 2], [0, 1]), ([3], [1])]


def test_greedy_search_cuts_loops_keeps_max_new_and_obeys_on_step():
    from speechwire.decoding import greedy_search

    step, _ = _scripted([[4, 1]] * 6)
    assert greedy_search(step, 2, max_new=6, stops={9}, max_repeats=2) == [[4, 4], [1, 1]]
    step, _ = _scripted([[4, 1], [5, 2], [6, 3]])
    assert greedy_search(step, 2, max_new=2, stops={9}) == [[4, 5], [1, 2]]
    step, given = _scripted([[4, 1], [5, 2], [6, 3]])
    assert greedy_search(step, 2, max_new=3, stops={9},
                         on_step=lambda answers: [0] if len(answers[0]) == 2 else None) == [[4, 5], [1, 2, 3]]
    assert greedy_search(_scripted([])[0], 3, max_new=0, stops={9}) == [[], [], []]


def test_greedy_search_takes_several_proposed_tokens_through_the_same_checks():
    from speechwire.decoding import greedy_search

    given = []

    def step(tokens, active):  # first pass: a verified draft; then one token per pass
        given.append((tokens, list(active)))
        return [[1, 2, 3], [5, 9, 7], [4, 4, 4, 4, 8], [6, 6]] if tokens is None else [[3] for _ in active]

    # item 0: three tokens at once, then one per pass until max_new; 1: its stop token inside the
    # proposal ends it there; 2: a loop inside the proposal is cut; 3: continues to max_new
    assert greedy_search(step, 4, max_new=5, stops={9}) == [[1, 2, 3, 3, 3], [5], [4, 4, 4, 4, 8], [6, 6, 3, 3, 3]]
    assert given[1] == ([3, 6], [0, 3])  # each item's newest token is what the model reads next
    given.clear()
    assert greedy_search(step, 4, max_new=5, stops={9}, max_repeats=2) == [[1, 2, 3, 3], [5], [4, 4], [6, 6, 3, 3]]


def test_accept_draft_keeps_the_agreed_prefix_then_the_models_own_choice():
    from speechwire.decoding import accept_draft

    assert accept_draft([5, 6, 9], [5, 6]) == [5, 6, 9]
    assert accept_draft([5, 7, 9], [5, 6]) == [5, 7]
    assert accept_draft([8, 6, 9], [5, 6]) == [8]
    assert accept_draft([4], []) == [4]
    with pytest.raises(ValueError, match="one more"):
        accept_draft([5, 6], [5, 6])


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


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["the", "cat", "Sat.", "on", "a", "mat,", "I'm", "42"]), max_size=12),
       st.lists(st.sampled_from(["dog", "the", "ran", "x", "Mat", "?"]), max_size=40),
       st.sampled_from([0.2, 0.5, 1.0, 2.5]))
def test_an_answer_past_the_rewrite_bound_is_always_rewritten(heard, answer, limit):
    heard_text, answer_text = " ".join(heard), " ".join(answer)
    if len([w for w in answer if w != "?"]) > rewrite_bound(heard_text, limit):
        assert word_change(heard_text, answer_text) > limit


def test_rewrite_bound_counts_the_words_heard():
    assert rewrite_bound("Press one, then pound.", 0.5) == 7  # 4 words + 2 changed + 1 for the rounding down
    assert rewrite_bound("", 0.5) == 1 and rewrite_bound("", 2.0) == 3
