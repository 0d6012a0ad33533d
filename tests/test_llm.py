"""LLM side: prompts with the model's own chat template, fallback template, errors."""

from __future__ import annotations

import pytest

from speechwire.config import LLMConfig
from speechwire.llm import AUDIO_END, AUDIO_START, ChatPrompter, language_name, load_tokenizer
from speechwire.testing import save_tiny_llm


def test_prompt_splits_around_audio_markers(tiny_llm_dir):
    cfg = LLMConfig(model=str(tiny_llm_dir))
    tok = load_tokenizer(cfg)
    p = ChatPrompter(tok, cfg)
    prompt = p.prompt("st", "en", "de")
    text = tok.decode(prompt.before_audio) + AUDIO_START + AUDIO_END + tok.decode(prompt.after_audio)
    assert text == ("<|im_start|>user\n<audio_start><audio_end>\nCan you translate this audio from English "
                    "into German?<|im_end|>\n<|im_start|>assistant\n")
    assert p.end_of_turn == "<|im_end|>"
    assert tok.decode(p.target_ids(" Hallo Welt ")) == "Hallo Welt<|im_end|>"
    assert tok.convert_tokens_to_ids("<|im_end|>") in p.stop_ids
    assert tok.padding_side == "left"


def test_instruction_after_audio_option(tiny_llm_dir):
    cfg = LLMConfig(model=str(tiny_llm_dir), audio_first=False)
    p = ChatPrompter(load_tokenizer(cfg), cfg)
    assert p.tok.decode(p.prompt("asr").before_audio).endswith("Can you transcribe this audio?\n")


def test_fallback_template_when_tokenizer_has_none(tmp_path):
    d = save_tiny_llm(tmp_path / "m", chat_template=None)
    cfg = LLMConfig(model=str(d))
    tok = load_tokenizer(cfg)
    p = ChatPrompter(tok, cfg)
    assert "### Assistant:" in tok.decode(p.prompt("asr").after_audio)
    assert p.end_of_turn == tok.eos_token


def test_llm_without_tokenizer_is_clear(tmp_path):
    d = save_tiny_llm(tmp_path / "m", with_tokenizer=False)
    with pytest.raises(ValueError, match="could not load its tokenizer"):
        load_tokenizer(LLMConfig(model=str(d)))


def test_unknown_task_and_language_names(tiny_llm_dir):
    cfg = LLMConfig(model=str(tiny_llm_dir))
    p = ChatPrompter(load_tokenizer(cfg), cfg)
    with pytest.raises(ValueError, match="unknown task 'sum'"):
        p.prompt("sum")
    assert language_name("de") == "German" and language_name("pt-BR") == "Portuguese"
    assert language_name("xx") == "xx"
