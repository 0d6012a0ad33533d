"""llm.output_vocab=auto: on the int8 CPU path, a Latin-script answer is decoded over the output
layer's Latin-script rows only (llm.latin_token_ids, RowSubsetHead), the rest of the vocabulary
never scored; other answer languages, and output_vocab=full, score every row.
The CPU path also trims the C heap after each generation."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from speechwire.config import load_config
from speechwire.llm import RowSubsetHead, latin_token_ids
from speechwire.model import SpeechLLM
from speechwire.quantize import quantize_linear_int8
from speechwire.testing import tiny_tokenizer

from helpers import TINY_ADAPTER, ToyEncoder, make_batch


def test_latin_rows_of_a_byte_level_tokenizer():
    tok = tiny_tokenizer()  # 4 specials + the 256 byte pieces
    rows = set(latin_token_ids(tok, keep=set()))
    assert set(tok.all_special_ids) <= rows
    for text in ["Hello, world 42!", "Größe “Straße” — 5 € …", "ça œuvre naïve", "Łódź", "Việt Nam"]:
        assert set(tok.encode(text, add_special_tokens=False)) <= rows, text
    for text in ["日本", "Привет", "😀"]:  # 3- and 4-byte lead bytes, Cyrillic's 2-byte ones
        assert not set(tok.encode(text, add_special_tokens=False)) <= rows, text


class SentencePieceLike:
    """The tokenizer calls latin_token_ids makes, with SentencePiece's pieces (▁ for spaces, <0xNN>)."""

    pieces = ["<unk>", "▁the", "<0xC3>", "<0xE6>", "▁日本", "é", "▁Straße", "</s>"]
    all_special_ids = [0, 7]

    def __len__(self):
        return len(self.pieces)

    def get_added_vocab(self):
        return {}

    def convert_ids_to_tokens(self, ids):
        return [self.pieces[i] for i in ids]


def test_latin_rows_of_a_sentencepiece_tokenizer():
    assert latin_token_ids(SentencePieceLike(), keep={4}) == [0, 1, 2, 4, 5, 6, 7]  # 4: kept as asked (a stop id)
    assert latin_token_ids(SentencePieceLike(), keep=set()) == [0, 1, 2, 5, 6, 7]


def test_row_subset_head_scores_its_rows_only():
    weight = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    hidden = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    head = RowSubsetHead(weight, [2, 7, 30, 49, 60])  # 60: past the layer's rows (tokenizer larger than the table)
    scores, full = head(hidden), F.linear(hidden, weight)
    assert scores.shape == (3, 50)
    assert torch.allclose(scores[:, [2, 7, 30, 49]], full[:, [2, 7, 30, 49]], atol=1e-6)
    assert torch.isinf(scores).sum() == 3 * 46
    targets = torch.tensor([7, 49, 3])  # 3: outside the rows
    picked = head.logprobs(hidden, targets)
    expected = scores.log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    assert torch.allclose(picked[:2], expected[:2], atol=1e-5) and picked[2] == float("-inf") == expected[2]
    assert torch.allclose(head.logprobs(hidden, targets, chunk=1), picked, atol=1e-6)  # chunked positions: same values


@pytest.mark.parametrize("precision, tolerance", [("bfloat16", 0.01), ("int8", 0.03)])
def test_row_subset_head_in_fewer_bytes_stays_close_to_float(precision, tolerance):
    """bfloat16 and int8 rows: every score within `tolerance` of the largest score's size, the same
    best row where float's best leads by more than twice that, logprobs from the same scores."""
    weight = torch.randn(500, 64, generator=torch.Generator().manual_seed(0))
    hidden = torch.randn(6, 64, generator=torch.Generator().manual_seed(1)) * 3
    rows = list(range(0, 500, 3))
    exact, low = RowSubsetHead(weight, rows), RowSubsetHead(weight, rows, chunk=40, precision=precision)
    a, b = exact(hidden)[:, rows], low(hidden)[:, rows]
    size = a.abs().amax(1, keepdim=True)
    assert ((a - b).abs() <= tolerance * size).all()
    top2 = a.topk(2).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * tolerance * size[:, 0]
    assert (a.argmax(1) == b.argmax(1))[clear].all() and clear.any()
    targets = torch.tensor(rows[::30][:6])  # rows in different pieces of 40: the denominator sums them all
    expected = low(hidden).log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    assert torch.allclose(low.logprobs(hidden, targets), expected, atol=1e-4)
    with pytest.raises(ValueError, match="llm.output_precision='fp8'"):
        RowSubsetHead(weight, rows, precision="fp8")


def int8_model(tiny_llm_dir, *overrides):
    torch.manual_seed(3)
    cfg = load_config(None, [f"llm.model={tiny_llm_dir}", *TINY_ADAPTER, *overrides])
    model = SpeechLLM(cfg, encoder=ToyEncoder().freeze()).eval()
    quantize_linear_int8(model.llm)
    model.llm_quantized = "int8"  # what from_pretrained sets on the CPU
    return model


def test_a_latin_answer_is_decoded_over_the_latin_rows(tiny_llm_dir):
    auto = int8_model(tiny_llm_dir, "llm.output_precision=float32")  # the rows' values as the layer's: same scores
    full = int8_model(tiny_llm_dir, "llm.output_vocab=full")
    rows = set(latin_token_ids(auto.tokenizer, set(auto.prompter.stop_ids)))
    batch = make_batch([4000, 9000, 6000], ["a", "b", "c"], tasks=["asr", "st", "asr"], tgt_langs=[None, "de", None])
    got, ref = auto.generate_output(batch, max_new_tokens=12), full.generate_output(batch, max_new_tokens=12)
    assert auto._latin_head is not None and full._latin_head is None
    for a, f in zip(got.token_ids, ref.token_ids):
        assert set(a) <= rows
        if set(f) <= rows:  # the full vocabulary's best token was a Latin one at every step: same answer
            assert a == f
    # an answer in another script (ST into Japanese) scores every row
    assert auto._output_head(make_batch([4000], ["x"], tasks=["st"], tgt_langs=["ja"])) is None
    assert auto._output_head(batch) is auto._latin_head


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_the_latin_rows_in_fewer_bytes_decode_latin_answers(tiny_llm_dir, precision):
    model = int8_model(tiny_llm_dir, f"llm.output_precision={precision}")
    rows = set(latin_token_ids(model.tokenizer, set(model.prompter.stop_ids)))
    out = model.generate_output(make_batch([4000, 9000], ["a", "b"]), max_new_tokens=8)
    assert model._latin_head.precision == precision and all(set(ids) <= rows for ids in out.token_ids)
    assert sum(map(len, out.token_ids)) > 0


def test_float_path_scores_every_row(tiny_llm_dir):
    torch.manual_seed(3)
    cfg = load_config(None, [f"llm.model={tiny_llm_dir}", *TINY_ADAPTER])
    model = SpeechLLM(cfg, encoder=ToyEncoder().freeze()).eval()
    assert model._output_head(make_batch([4000], ["x"])) is None  # training and float inference: the LLM as it is


def test_cpu_generation_hands_freed_heap_pages_back(tiny_llm_dir, monkeypatch):
    import speechwire.model as model_module

    calls = []
    monkeypatch.setattr(model_module, "trim_heap", lambda: calls.append(1) or True)
    model = int8_model(tiny_llm_dir)
    model.generate_output(make_batch([4000], ["a"]), max_new_tokens=2)
    assert calls == [1]


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "int8"])
def test_an_earlier_starts_latin_rows_are_read_back_unchanged(tiny_llm_dir, tmp_path, monkeypatch, precision):
    """derived.py: the first model keeps its Latin rows on disk; the next one reads them instead of
    picking and quantising them again, and scores every hidden state the same."""
    monkeypatch.setenv("SPEECHWIRE_DERIVED", str(tmp_path))
    first = int8_model(tiny_llm_dir, f"llm.output_precision={precision}")
    hidden = torch.randn(5, first.llm.config.hidden_size, generator=torch.Generator().manual_seed(0))
    reference = first._latin_rows()(hidden)
    assert len(list(tmp_path.glob("latin-rows-*.safetensors"))) == 1

    def not_again(*args, **kwargs):
        raise AssertionError("the Latin rows were computed again")
    monkeypatch.setattr(RowSubsetHead, "__init__", not_again)
    second = int8_model(tiny_llm_dir, f"llm.output_precision={precision}")
    head = second._latin_rows()
    assert head.precision == precision and torch.equal(head.rows, first._latin_rows().rows)
    assert torch.equal(head(hidden), reference)
