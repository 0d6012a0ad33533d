"""Prefix caching: the LLM's keys and values for the prompt before the audio, computed once.

Every request of a task starts with the same tokens (system turn, user-turn header: about 15
tokens for Qwen's template); only what follows `<audio_start>` differs. The LLM's KV cache of
that shared prefix is computed once per model and copied for every batch (transformers' own
recipe for re-using a prompt cache: deep-copy a `DynamicCache`, then
`batch_repeat_interleave(B)` to give each item its rows).

A batch then reads

    [shared prefix, cached] [pad ...] [rest of the prompt before the audio] <audio_start> speech ...

Padding sits after the prefix instead of in front of it; the attention mask hides it and the
position ids count real tokens only, so an item's numbers do not depend on its batch.

Letters: B batch, P prefix tokens, d_llm LLM width.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

MAX_ENTRIES = 8  # prefixes kept per model (tasks x languages when the instruction comes first)


def common_prefix(seqs: list[list[int]]) -> list[int]:
    """The longest list of ids every sequence starts with ([] for no sequences)."""
    return list(os.path.commonprefix(seqs))  # compares element by element, lists as well as strings ('' for none)


def cache_keyword(module: nn.Module) -> str:
    """The name `module.forward` takes a KV cache under: transformers renamed `past_key_values` to `cache`."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def returned_cache(output):
    """The KV cache a transformers forward returned (under either name), or None."""
    return getattr(output, "cache", None) or getattr(output, "past_key_values", None)


class PrefixCache:
    """KV caches of prompt prefixes, keyed by (ids, device, dtype), for one LLM.

    Args:
        max_entries: prefixes kept; the least recently used one goes first.

    The cache holds the LLM's outputs: `clear()` it whenever the LLM's weights change (SpeechLLM
    does on entering training mode, when LoRA may train, and after quantising).
    """

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"PrefixCache: max_entries={max_entries} must be >= 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, object] = OrderedDict()
        self.misses = 0  # prefixes computed (tests and benchmarks read it)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    @torch.no_grad()
    def batch_cache(self, llm: nn.Module, embed: Callable[[list[int]], torch.Tensor], ids: list[int],
                    batch_size: int, cache_kw: str = "past_key_values"):
        """A fresh KV cache of `ids` for `batch_size` items, ready for the LLM to extend.

        Args:
            llm: the causal LM (called with inputs_embeds, as SpeechLLM calls it).
            embed: ids -> (P, d_llm) input embeddings.
            ids: the shared prefix (P >= 1 tokens).
            batch_size: B.
            cache_kw: the LLM's name for the cache argument.

        Returns:
            A cache of B rows x P positions; the stored one is never changed.
        """
        if not ids:
            raise ValueError("PrefixCache.batch_cache: the prefix is empty; decode without a cache instead")
        if batch_size < 1:
            raise ValueError(f"PrefixCache.batch_cache: batch_size={batch_size} must be >= 1")
        inputs = embed(ids)[None]  # (1, P, d_llm)
        key = (tuple(ids), inputs.device, inputs.dtype)
        stored = self._entries.get(key)
        if stored is None:
            self.misses += 1
            kwargs = {"inputs_embeds": inputs, "use_cache": True, cache_kw: None,
                      "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=inputs.device),
                      "position_ids": torch.arange(len(ids), device=inputs.device)[None]}
            # only the keys and values are wanted: the decoder alone never reads the output layer
            # (0.54 GB on the demo LLM, whose pages would stay resident)
            res = llm.get_decoder()(**kwargs) if hasattr(llm, "get_decoder") else llm(**kwargs, logits_to_keep=1)
            stored = returned_cache(res)
            if stored is None:
                raise TypeError(f"{type(llm).__name__} returned no KV cache; prefix caching needs use_cache=True support")
            self._entries[key] = stored
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        cache = copy.deepcopy(stored)  # decoding appends to it in place
        if batch_size > 1:
            cache.batch_repeat_interleave(batch_size)  # (1, heads, P, hd) -> (B, heads, P, hd) per layer
        return cache
