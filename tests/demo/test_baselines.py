"""demo/baselines.py: the LLM cascade's prompt names each utterance's target language."""

from __future__ import annotations

import pytest


def test_cascade_prompt_names_each_utterances_target_language():
    import torch
    from transformers import BatchEncoding

    from speechwire.demo.baselines import llm_translate

    prompts: list[str] = []

    class Tokenizer:
        padding_side, pad_token_id = "right", 0

        def apply_chat_template(self, msgs, tokenize, add_generation_prompt):
            prompts.append(msgs[-1]["content"])
            return "chat"

        def __call__(self, chats, **kwargs):
            return BatchEncoding({"input_ids": torch.zeros(len(chats), 2, dtype=torch.long)})

        def decode(self, ids, skip_special_tokens):
            return "translated"

    class LLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, **kwargs):
            return torch.zeros(input_ids.shape[0], 3, dtype=torch.long)

    tok = Tokenizer()
    out, _ = llm_translate(LLM(), tok, ["hello", "good day"], ["de", "fr"], batch_size=1)
    assert out == ["translated", "translated"] and tok.padding_side == "right"
    assert "into German." in prompts[0] and "into French." in prompts[1]
    with pytest.raises(ValueError, match="2 texts but 1 target languages"):
        llm_translate(LLM(), tok, ["hello", "good day"], ["de"])
