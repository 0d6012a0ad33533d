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


def test_tokenizer_drops_its_build_copies_and_tokenizes_as_before(tmp_path):
    """Qwen2.5's tokenizer class keeps the vocabulary dict and merge list it built its Rust
    tokenizer from (~64 MB); load_tokenizer frees them, and encoding, decoding and the vocabulary
    still come from the Rust tokenizer, unchanged."""
    import json

    from transformers import AutoTokenizer

    d = save_tiny_llm(tmp_path / "m")
    config = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "Qwen2Tokenizer"}))
    plain = AutoTokenizer.from_pretrained(d)
    assert type(plain).__name__ == "Qwen2Tokenizer" and len(plain._vocab) > 100 and hasattr(plain, "_merges")
    tok = load_tokenizer(LLMConfig(model=str(d)))
    assert not hasattr(tok, "_vocab") and not hasattr(tok, "_merges")
    text = "Mr John Dashwood had then leisure, 12 ten of clubs!"
    assert tok(text)["input_ids"] == plain(text)["input_ids"]
    assert tok.decode(plain(text)["input_ids"]) == text
    assert all(tok.get_vocab()[t] == i for t, i in plain.get_vocab().items())


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
