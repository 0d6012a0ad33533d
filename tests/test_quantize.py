"""llm.quantize: which runs get an int8 LLM, and how far its logits move on a tiny random LLM.

Tolerance: on the tiny random LLM (hidden 64, weights of std 0.2: int8 steps are coarse against
its near-random logits) int8 logits are within 20 % relative L2 of float and pick the same top
token for at least 85 % of positions (measured: 11.5 %, 90 %). On the demo's real LLM the benchmark
measures WER instead: equal to float32's (docs/results/speed).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from speechwire.config import ConfigError, LLMConfig, load_config
from speechwire.model import SpeechLLM
from speechwire.quantize import AUTO_MIN_PARAMS, quantize_linear_int8, resolve_quantize

from helpers import TINY_ADAPTER, ToyEncoder, make_batch

CPU, GPU = torch.device("cpu"), torch.device("cuda")
BIG, SMALL = AUTO_MIN_PARAMS, AUTO_MIN_PARAMS - 1


@pytest.mark.parametrize("fields, device, params, expected", [
    ({}, CPU, BIG, "int8"),
    ({}, CPU, SMALL, "none"),  # tiny LLMs stay float
    ({}, GPU, BIG, "none"),
    ({"dtype": "bfloat16"}, CPU, BIG, "none"),
    ({"lora": True}, CPU, BIG, "none"),
    ({"quantize": "none"}, CPU, BIG, "none"),
    ({"quantize": "int8"}, CPU, SMALL, "int8"),
])
def test_resolve_quantize(fields, device, params, expected):
    assert resolve_quantize(LLMConfig(**fields), device, params) == expected


def test_bad_choices_are_named():
    with pytest.raises(ValueError, match="CPU only"):
        resolve_quantize(LLMConfig(quantize="int8"), GPU, BIG)
    with pytest.raises(ConfigError, match="quantize='int4' must be one of"):
        LLMConfig(quantize="int4")
    with pytest.raises(ConfigError, match="lora=true"):
        LLMConfig(quantize="int8", lora=True)


def build(tiny_llm_dir):
    torch.manual_seed(3)
    cfg = load_config(None, [f"llm.model={tiny_llm_dir}", *TINY_ADAPTER])
    return SpeechLLM(cfg, encoder=ToyEncoder().freeze()).eval()


def test_int8_logits_within_tolerance(tiny_llm_dir):
    model = build(tiny_llm_dir)
    ids = torch.randint(0, 200, (2, 30), generator=torch.Generator().manual_seed(0))
    ref = model.llm(input_ids=ids).logits
    n_linear = sum(1 for m in model.llm.modules() if type(m) is nn.Linear)
    assert quantize_linear_int8(model.llm) == n_linear - 1
    assert [n for n, m in model.llm.named_modules() if type(m) is nn.Linear] == ["lm_head"]  # KEEP_FLOAT
    q = model.llm(input_ids=ids).logits
    err, agree = float((q - ref).norm() / ref.norm()), float((q.argmax(-1) == ref.argmax(-1)).float().mean())
    assert err < 0.20
    assert agree >= 0.85
    texts = model.generate(make_batch([4000, 9000], ["a", "b"]), max_new_tokens=4)  # decoding runs on int8
    assert len(texts) == 2


def test_from_pretrained_quantizes_on_request(tiny_llm_dir, tmp_path, monkeypatch):
    import speechwire.model as m

    build(tiny_llm_dir).save_pretrained(tmp_path / "run")
    monkeypatch.setattr(m, "build_encoder", lambda cfg: ToyEncoder().freeze())
    auto = SpeechLLM.from_pretrained(tmp_path / "run")  # tiny LLM: auto keeps float
    assert auto.llm_quantized == "none" and any(type(x) is nn.Linear for x in auto.llm.modules())
    int8 = SpeechLLM.from_pretrained(tmp_path / "run", ["llm.quantize=int8"])
    assert int8.llm_quantized == "int8"
    assert [n for n, x in int8.llm.named_modules() if type(x) is nn.Linear] == ["lm_head"]


def test_streamed_int8_load_equals_quantizing_a_plain_load(tiny_llm_dir):
    """load_int8 (empty model, one tensor at a time, each Linear quantised as it arrives) gives the
    same int8 LLM as torch's quantize_dynamic on a plain float load: bit-equal logits, same greedy tokens."""
    from transformers import AutoModelForCausalLM

    from speechwire.quantize import load_int8

    cfg = LLMConfig(model=str(tiny_llm_dir), quantize="int8")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    plain = AutoModelForCausalLM.from_pretrained(tiny_llm_dir, dtype=torch.float32).eval()
    quantize_dynamic(plain, {nn.Linear: per_channel_dynamic_qconfig, "lm_head": None}, inplace=True)  # torch's own
    streamed = load_int8(tiny_llm_dir, cfg, CPU).eval()
    assert [n for n, m in streamed.named_modules() if type(m) is nn.Linear] == ["lm_head"]
    assert {n: type(m) for n, m in streamed.named_modules()} == {n: type(m) for n, m in plain.named_modules()}
    ids = torch.randint(0, 200, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(streamed(input_ids=ids).logits, plain(input_ids=ids).logits)
        kw = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
        assert torch.equal(streamed.generate(ids[:1, :5], **kw), plain.generate(ids[:1, :5], **kw))
    assert load_int8(tiny_llm_dir, LLMConfig(model=str(tiny_llm_dir)), CPU) is None  # auto: tiny stays float


def test_the_second_int8_load_reads_the_first_ones_layers_and_is_bit_equal(tiny_llm_dir, tmp_path, monkeypatch):
    """derived.py: the first load keeps its int8 layers on disk, the second builds them from there
    without quantising; a damaged file or a changed model file is never read (computed again)."""
    import os
    import shutil

    from speechwire import quantize
    from speechwire.quantize import load_int8

    monkeypatch.setenv("SPEECHWIRE_DERIVED", str(tmp_path / "derived"))
    folder = tmp_path / "llm"
    shutil.copytree(tiny_llm_dir, folder)
    cfg = LLMConfig(model=str(folder), quantize="int8")
    ids = torch.randint(0, 200, (2, 30), generator=torch.Generator().manual_seed(0))
    first = load_int8(folder, cfg, CPU).eval()
    files = list((tmp_path / "derived").glob("int8-llm-*.safetensors"))
    assert len(files) == 1
    quantised = []
    monkeypatch.setattr(quantize, "quantize_linear_int8", lambda llm, names=None: quantised.append(names))
    second = load_int8(folder, cfg, CPU).eval()
    assert quantised == []  # every layer came from the file
    with torch.no_grad():
        assert torch.equal(first(input_ids=ids).logits, second(input_ids=ids).logits)
    monkeypatch.undo()
    monkeypatch.setenv("SPEECHWIRE_DERIVED", str(tmp_path / "derived"))
    files[0].write_bytes(b"not a safetensors file")  # damaged: ignored, computed again and rewritten
    with torch.no_grad():
        assert torch.equal(load_int8(folder, cfg, CPU).eval()(input_ids=ids).logits, first(input_ids=ids).logits)
    assert files[0].stat().st_size > 1000
    os.utime(folder / "model.safetensors", ns=(1, 1))  # the model file changed: another key
    load_int8(folder, cfg, CPU)
    assert len(list((tmp_path / "derived").glob("int8-llm-*.safetensors"))) == 2
    monkeypatch.setenv("SPEECHWIRE_DERIVED", "off")
    shutil.rmtree(tmp_path / "derived")
    load_int8(folder, cfg, CPU)
    assert not (tmp_path / "derived").exists()


def test_streamed_load_falls_back_without_a_single_safetensors_file(tiny_llm_dir, tmp_path):
    import shutil

    from speechwire.quantize import load_int8

    cfg = LLMConfig(model=str(tmp_path), quantize="int8")
    shutil.copytree(tiny_llm_dir, tmp_path, dirs_exist_ok=True)
    (tmp_path / "model.safetensors").rename(tmp_path / "other.safetensors")
    assert load_int8(tmp_path, cfg, CPU) is None
