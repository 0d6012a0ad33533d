"""Prefix caching: the same greedy tokens as prefilling the whole prompt, batched == one by one,
one prefill of the shared prompt per model."""

from __future__ import annotations

import pytest
import torch

from speechwire.config import load_config
from speechwire.model import SpeechLLM
from speechwire.prefix_cache import PrefixCache, common_prefix

from helpers import TINY_ADAPTER, ToyEncoder, make_batch, select

LENGTHS = [3200, 16000, 9000, 6400]
MIXED = dict(tasks=["asr", "st", "st", "asr"], tgt_langs=[None, "de", "italian", None])


def build(tiny_llm_dir, *overrides, seed=3):
    torch.manual_seed(seed)
    cfg = load_config(None, [f"llm.model={tiny_llm_dir}", *TINY_ADAPTER, "llm.quantize=none", *overrides])
    return SpeechLLM(cfg, encoder=ToyEncoder().freeze()).eval()


def tokens(model, batch, n=12):
    return model.generate_output(batch, max_new_tokens=n).token_ids


def test_common_prefix():
    assert common_prefix([]) == []
    assert common_prefix([[1, 2, 3], [1, 2, 4], [1, 2]]) == [1, 2]
    assert common_prefix([[5, 6]]) == [5, 6]
    assert common_prefix([[1], [2]]) == []


@pytest.mark.parametrize("overrides", [(), ("llm.system_prompt=You are terse.",),
                                       ("llm.audio_first=false",)], ids=["plain", "system", "instruction-first"])
def test_cached_equals_full_prefill(tiny_llm_dir, overrides):
    model = build(tiny_llm_dir, *overrides)
    batch = make_batch(LENGTHS, ["a", "b", "c", "d"], **MIXED)
    cached = tokens(model, batch)
    assert model.prefix_cache.misses == 1
    model.prefix_cache = None  # the path without reuse: the whole prompt prefilled per batch
    assert cached == tokens(model, batch)
    assert any(cached)  # the tiny LLM says something, so equality means something


def test_cached_batch_equals_one_by_one(tiny_llm_dir):
    model = build(tiny_llm_dir)
    batch = make_batch(LENGTHS, ["a", "b", "c", "d"], **MIXED)
    batched = tokens(model, batch)
    single = [tokens(model, select(batch, [i]))[0] for i in range(len(LENGTHS))]
    assert batched == single
    # audio_first: every task's prompt starts alike, so one prefix served every batch and every item
    assert model.prefix_cache.misses == 1 and len(model.prefix_cache) == 1


def test_instruction_first_caches_per_task(tiny_llm_dir):
    """With the instruction before the audio, items of one task share more than a mixed batch does."""
    model = build(tiny_llm_dir, "llm.audio_first=false")
    batch = make_batch(LENGTHS, ["a", "b", "c", "d"], **MIXED)
    single = [tokens(model, select(batch, [i]))[0] for i in range(len(LENGTHS))]
    assert tokens(model, batch) == single
    assert len(model.prefix_cache) == 4  # asr, st-de, st-it alone + the mixed batch's shorter prefix


def test_training_mode_clears_the_cache(tiny_llm_dir):
    model = build(tiny_llm_dir)
    tokens(model, make_batch([4000], ["a"]))
    assert len(model.prefix_cache) == 1
    model.train()
    assert len(model.prefix_cache) == 0


def test_stored_cache_is_not_extended_by_decoding(tiny_llm_dir):
    model = build(tiny_llm_dir)
    batch = make_batch([4000, 8000], ["a", "b"])
    first = tokens(model, batch)
    assert tokens(model, batch) == first  # a cache grown by the first batch would shift the second


def test_bad_arguments_are_named(tiny_llm_dir):
    with pytest.raises(ValueError, match="max_entries"):
        PrefixCache(0)
    model = build(tiny_llm_dir)
    with pytest.raises(ValueError, match="empty"):
        model.prefix_cache.batch_cache(model.llm, model.embed_text, [], 2)
    with pytest.raises(ValueError, match="batch_size"):
        model.prefix_cache.batch_cache(model.llm, model.embed_text, [1, 2], 0)


def test_the_prefix_pass_never_reads_the_output_layer(tiny_llm_dir):
    """Only keys and values are wanted: a real LLM's output layer is its biggest read (0.54 GB on
    the demo's), and its file-mapped pages would stay resident after the Latin rows released them."""
    model = build(tiny_llm_dir)
    calls = []
    hook = model.llm.get_output_embeddings().register_forward_hook(lambda *args: calls.append(1))
    try:
        cache = model.prefix_cache.batch_cache(model.llm, model.embed_text, [5, 6, 7], 2, model._cache_kw)
    finally:
        hook.remove()
    assert calls == [] and cache.get_seq_length() == 3
