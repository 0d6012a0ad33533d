"""rescore.py: the frozen LLM scores the beam's best texts (align.rescore)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from speechwire.config import ConfigError, load_config
from speechwire.llm import RowSubsetHead
from speechwire.rescore import candidate_logprobs, choose, start_token, text_logprobs


@pytest.fixture(scope="module")
def llm(tiny_llm_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_llm_dir).eval()


def _one_by_one(llm, ids: list[int], start: int) -> float:
    """log P(ids | start), token by token from the full logits of one unpadded sequence."""
    with torch.no_grad():
        logp = llm(input_ids=torch.tensor([[start, *ids]])).logits[0].float().log_softmax(-1)
    return float(sum(logp[t, tok] for t, tok in enumerate(ids)))


@given(st.lists(st.lists(st.integers(3, 60), min_size=0, max_size=9), min_size=1, max_size=5))
@settings(max_examples=20, deadline=None)
def test_batched_logprobs_equal_each_text_scored_alone(llm, texts):
    """Padding, chunks, the plain output layer and a RowSubsetHead of every row all give each text's own score."""
    with torch.no_grad():
        plain = text_logprobs(llm, None, texts, start=1, chunk=2)
        via_head = text_logprobs(llm, llm.get_output_embeddings(), texts, start=1)
        every_row = RowSubsetHead(llm.get_output_embeddings().weight, list(range(llm.config.vocab_size)))
        via_rows = text_logprobs(llm, every_row, texts, start=1, chunk=3)
    for i, ids in enumerate(texts):
        alone = _one_by_one(llm, ids, 1) if ids else 0.0
        assert float(plain[i]) == pytest.approx(alone, abs=1e-4)
        assert float(via_head[i]) == pytest.approx(alone, abs=1e-4)
        assert float(via_rows[i]) == pytest.approx(alone, abs=1e-4)


@given(st.lists(st.tuples(st.lists(st.integers(3, 60), max_size=6),
                          st.lists(st.lists(st.integers(3, 60), max_size=5), min_size=1, max_size=4)),
                min_size=1, max_size=6), st.integers(1, 4))
@settings(max_examples=30, deadline=None)
def test_shared_prefix_scores_equal_each_text_scored_alone(llm, items, chunk):
    """candidate_logprobs: each item's common beginning run once, the rests after its cache rows
    (chunked, in length order, across items): every candidate gets its own full-text score,
    including a candidate that is the whole common prefix and one-token candidates."""
    candidates = [[shared + rest for rest in rests] for shared, rests in items]
    candidates = [[c for c in cands if c] or [[7]] for cands in candidates]
    with torch.no_grad():
        got = candidate_logprobs(llm, None, candidates, start=1, chunk=chunk)
        every_row = RowSubsetHead(llm.get_output_embeddings().weight, list(range(llm.config.vocab_size)))
        via_rows = candidate_logprobs(llm, every_row, candidates, start=1, chunk=chunk)
    assert [len(g) for g in got] == [len(c) for c in candidates]
    for cands, scores, row_scores in zip(candidates, got, via_rows):
        for ids, score, row_score in zip(cands, scores, row_scores):
            alone = _one_by_one(llm, ids, 1)
            assert score == pytest.approx(alone, abs=1e-4) and row_score == pytest.approx(alone, abs=1e-4)


def test_choose_weighs_the_beam_score_against_the_llm(llm):
    texts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    with torch.no_grad():
        lm = text_logprobs(llm, None, texts, start=1).tolist()
    beam = [(t, -float(i)) for i, t in enumerate(texts)]  # best first by beam score
    with torch.no_grad():
        assert choose(llm, None, [beam], 0.0, 1) == [0]
        assert choose(llm, None, [beam], 1000.0, 1) == [max(range(3), key=lambda i: lm[i])]
        mixed = [max(range(3), key=lambda i: beam[i][1] + 0.3 * lm[i])]
        assert choose(llm, None, [beam], 0.3, 1) == mixed
        # items are independent: a batch chooses what each item chooses alone
        other = [([20, 21], 0.0), ([22], -0.5)]
        assert choose(llm, None, [beam, other, [], beam[:1]], 0.3, 1) == \
            [mixed[0], choose(llm, None, [other], 0.3, 1)[0], 0, 0]


def test_a_lone_candidate_is_not_scored():
    def fail(*args, **kwargs):
        raise AssertionError("the LLM ran")
    assert choose(SimpleNamespace(__call__=fail, get_input_embeddings=fail), None, [[([4, 5], -1.0)], []], 1.0, 0) == [0, 0]


def test_start_token_prefers_bos_then_padding_then_eos():
    tok = SimpleNamespace(bos_token_id=None, pad_token_id=151643, eos_token_id=151645)
    assert start_token(tok) == 151643
    assert start_token(SimpleNamespace(bos_token_id=1, pad_token_id=0, eos_token_id=2)) == 1
    assert start_token(SimpleNamespace(bos_token_id=None, pad_token_id=None, eos_token_id=2)) == 2
    with pytest.raises(ValueError, match="BOS, padding or EOS"):
        start_token(SimpleNamespace(bos_token_id=None, pad_token_id=None, eos_token_id=None))


@pytest.mark.parametrize("overrides, culprit", [
    (["align.rescore=0.5"], "needs decode=beam"),
    (["align.rescore=-1", "align.decode=beam", "align.collapse=true", "align.readout=posterior"], "rescore=-1"),
    (["align.rescore_nbest=0"], "rescore_nbest=0"),
    (["align.rescore_margin=-2"], "rescore_margin=-2"),
])
def test_rescore_settings_are_checked(overrides, culprit):
    with pytest.raises(ConfigError, match=culprit):
        load_config(None, overrides)
