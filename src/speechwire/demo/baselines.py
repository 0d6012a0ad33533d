"""The demo's reference systems, run on the same 16 kHz audio as speechwire and timed alike.

- Plain Whisper: the same Whisper checkpoint whose encoder speechwire uses, with its own decoder
  (`WhisperForConditionalGeneration`, standard 30 s padded input, greedy, English, no timestamps).
- Cascade (ST): plain Whisper's transcript, then the same LLM prompted with its chat template to
  translate it into each utterance's target language (greedy).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from speechwire.audio import SAMPLE_RATE, load_audio
from speechwire.data import Utterance, utterance_duration
from speechwire.llm import language_name

CASCADE_PROMPT = "Translate the following English text into {tgt}. Reply with the translation only.\n\n{text}"


def _batches(utts: list[Utterance], size: int) -> list[list[int]]:
    order = sorted(range(len(utts)), key=lambda i: utterance_duration(utts[i]))  # little padding
    return [order[i:i + size] for i in range(0, len(order), size)]


def _load(u: Utterance):
    return load_audio(u.audio, offset=u.offset, duration=u.duration)


class PlainWhisper:
    """Whisper's own encoder-decoder, greedy.

    Args:
        folder: a Hugging Face Whisper checkpoint folder (`resolve_model("weights:whisper-tiny.en")`).
        max_new_tokens: decoding limit.
        decode: ids -> text; default the checkpoint's tokenizer (tiny random test models have none).
    """

    def __init__(self, folder: str, max_new_tokens: int = 128,
                 decode: Callable[[list[int]], str] | None = None) -> None:
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

        self.model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
        self.features = WhisperFeatureExtractor.from_pretrained(folder)
        self.max_new_tokens = max_new_tokens
        gen = self.model.generation_config
        self.multilingual = bool(getattr(gen, "is_multilingual", False))
        if decode is None:
            from transformers import WhisperTokenizer

            tok = WhisperTokenizer.from_pretrained(folder)
            decode = lambda ids: tok.decode(ids, skip_special_tokens=True).strip()  # noqa: E731
        self.decode = decode

    @torch.no_grad()
    def generate(self, waves: list) -> torch.Tensor:
        """16 kHz mono float waveforms -> (B, L) token ids, greedy; a multilingual Whisper is told to
        transcribe English (left to itself it may detect another language, or translate)."""
        feats = self.features(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        kwargs = {"language": "en", "task": "transcribe"} if self.multilingual else {}
        return self.model.generate(feats, max_new_tokens=self.max_new_tokens, num_beams=1, do_sample=False,
                                   return_timestamps=False, **kwargs)

    def transcribe(self, waves: list) -> list[str]:
        """16 kHz mono float waveforms -> one transcript each (batched)."""
        return [self.decode([int(t) for t in row]) for row in self.generate(waves)]

    def run(self, utts: list[Utterance], batch_size: int = 8, progress: bool = True,
            desc: str = "plain whisper") -> tuple[list[str], float]:
        """Transcribe every utterance; returns (texts in input order, seconds spent in the model)."""
        out: list[str] = [""] * len(utts)
        seconds = 0.0
        for idx in tqdm(_batches(utts, batch_size), desc=desc, disable=not progress, dynamic_ncols=True):
            waves = [_load(utts[i]) for i in idx]
            t0 = time.perf_counter()
            texts = self.transcribe(waves)
            seconds += time.perf_counter() - t0
            for i, t in zip(idx, texts):
                out[i] = t
        return out, seconds


@torch.no_grad()
def llm_translate(llm, tokenizer, texts: list[str], tgt_langs: Sequence[str | None], system_prompt: str | None = None,
                  max_new_tokens: int = 128, batch_size: int = 8) -> tuple[list[str], float]:
    """Translate English texts with a chat LLM, greedy, batched (left padding).

    Args:
        llm: a Hugging Face causal LM (the demo model's frozen LLM).
        tokenizer: its tokenizer, with a chat template.
        texts: English sentences.
        tgt_langs: each text's target language code from its manifest line ("de"), named in the
            prompt in English ("German").
        system_prompt: the system turn speechwire uses for this LLM (None: the template's default).
        max_new_tokens: decoding limit.
        batch_size: sentences per generate call.

    Returns:
        (translations in input order, seconds spent in the model).
    """
    if len(tgt_langs) != len(texts):
        raise ValueError(f"llm_translate: {len(texts)} texts but {len(tgt_langs)} target languages; pass one per text")
    out: list[str] = []
    seconds = 0.0
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(llm.parameters()).device
    try:
        for i in range(0, len(texts), batch_size):
            chats = []
            for text, lang in zip(texts[i:i + batch_size], tgt_langs[i:i + batch_size]):
                msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
                prompt = CASCADE_PROMPT.format(tgt=language_name(lang), text=text.strip() or "...")
                msgs.append({"role": "user", "content": prompt})
                chats.append(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
            enc = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            t0 = time.perf_counter()
            ids = llm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                               pad_token_id=tokenizer.pad_token_id)
            seconds += time.perf_counter() - t0
            new = ids[:, enc["input_ids"].shape[1]:]
            out += [tokenizer.decode(row, skip_special_tokens=True).strip().split("\n")[0] for row in new]
    finally:
        tokenizer.padding_side = side
    return out, seconds
