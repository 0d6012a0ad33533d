"""Paper fidelity (docs/adapters.md): the `paper` preset, presets in configs, the CIF/CTC targets
from the source transcript, the output-scale switch, instruction paraphrases.

Adapter-level switches are tested beside their adapters (tests/adapters/test_cif.py, test_ctc.py,
test_conv.py, test_transformer.py); Whisper's padded_full mode in tests/encoders/test_whisper.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speechwire.config import ConfigError, ExperimentConfig, available_presets, load_config
from speechwire.grid.spec import load_grid, plan, run_config
from speechwire.model import SpeechLLM

from helpers import TINY_ADAPTER, ToyEncoder, make_batch, select

CONFIGS = Path(__file__).parents[1] / "configs"

# every switch of the issue, at the authors' value (speechlmm; docs/adapters.md names the files)
AUTHORS = {
    "encoder.mode": "padded_full",
    "adapter.ctc_keep_blanks": True,
    "adapter.conv_final_relu": False,
    "adapter.cif_tail_rescale": True,
    "adapter.targets_add_special_tokens": True,
    "adapter.match_output_scale": False,
    "adapter.init_std": 0.02,
    "adapter.layer_norm_eps": 1e-12,
    "adapter.bert_dropout": True,
    "adapter.dropout": 0.1,
    "llm.dtype": "bfloat16",
    "train.mixed_precision": "bf16",
}


def _get(cfg: ExperimentConfig, dotted: str):
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def test_paper_preset_sets_each_authors_value():
    assert "paper" in available_presets()
    cfg, ours = load_config(None, ["preset=paper"]), ExperimentConfig()
    for key, value in AUTHORS.items():
        assert _get(cfg, key) == value, key
    # each is a real switch: our default differs, except the fixed CTC bug (blanks kept by default)
    assert [k for k in AUTHORS if _get(ours, k) == AUTHORS[k]] == ["adapter.ctc_keep_blanks", "adapter.dropout"]
    assert len(cfg.llm.asr_prompt) == 9 and len(cfg.llm.st_prompt) == 9
    assert cfg.llm.asr_prompt[0] == "Can you transcribe this audio?"
    assert cfg.llm.st_prompt[0] == "Can you translate this audio from {src} to {tgt}?"
    assert (cfg.adapter.hidden_size, cfg.adapter.num_layers, cfg.adapter.num_heads, cfg.adapter.ffn_size) == (768, 4, 12, 3072)


def test_preset_sits_under_the_file_and_the_overrides(tmp_path):
    (tmp_path / "mine.yaml").write_text("adapter:\n  cif_tail_rescale: false\n")
    cfg_file = tmp_path / "x.yaml"
    cfg_file.write_text("preset: [paper, mine.yaml]\nadapter:\n  init_std: 0.05\n")
    cfg = load_config(cfg_file, ["adapter.match_output_scale=true"])
    assert cfg.adapter.init_std == 0.05  # the file wins over the preset
    assert cfg.adapter.match_output_scale  # the override wins over both
    assert not cfg.adapter.cif_tail_rescale  # a later preset (a path next to the file) wins
    assert cfg.encoder.mode == "padded_full" and cfg.adapter.layer_norm_eps == 1e-12
    with pytest.raises(ConfigError, match="preset='papr' is unknown; available: .*paper"):
        load_config(None, ["preset=papr"])
    (tmp_path / "nested.yaml").write_text("preset: paper\n")
    with pytest.raises(ConfigError, match="cannot name another preset"):
        load_config(None, [f"preset={tmp_path / 'nested.yaml'}"])


def test_paper_configs_use_the_preset():
    cfg = load_config(CONFIGS / "paper_mustc.yaml")
    for key, value in AUTHORS.items():
        assert _get(cfg, key) == value, key
    spec = load_grid(CONFIGS / "paper_grid.yaml")
    for run in plan(spec):
        cfg = run_config(spec, run, Path("runs/x"), None)
        assert cfg.adapter.init_std == 0.02 and not cfg.adapter.match_output_scale, run.name
        assert cfg.encoder.mode == "padded_full" and cfg.llm.system_prompt, run.name


def build(tiny_llm_dir, *overrides):
    torch.manual_seed(0)
    return SpeechLLM(load_config(None, [f"llm.model={tiny_llm_dir}", *TINY_ADAPTER, *overrides]),
                     encoder=ToyEncoder().freeze())


def test_cif_target_is_the_transcript_for_st_too(tiny_llm_dir):
    model = build(tiny_llm_dir, "adapter.name=cif").train()
    batch = make_batch([16000, 16000], ["Das ist ein ziemlich langer deutscher Satz.", "hello there"],
                       tasks=["st", "asr"], tgt_langs=["de", None], transcripts=["This is long.", "hello there"])
    t = model._adapter_targets(batch)
    n = [len(model.prompter.text_ids("This is long.")), len(model.prompter.text_ids("hello there"))]
    assert t.target_lengths.tolist() == n  # not the translation's token count
    assert t.ctc_label_lengths.tolist() == n
    assert model(batch).adapter_frames == sum(n)  # training fires exactly that many CIF vectors


def test_targets_count_the_tokenizers_bos_when_asked(tiny_llm_dir):
    from tokenizers.processors import TemplateProcessing

    model = build(tiny_llm_dir, "adapter.name=ctc", "adapter.targets_add_special_tokens=true")
    tok = model.prompter.tok
    bos = tok.convert_tokens_to_ids("<|endoftext|>")  # stands in for Llama's <|begin_of_text|>
    tok._tokenizer.post_processor = TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)])
    batch = make_batch([16000], ["Hallo."], tasks=["st"], tgt_langs=["de"], transcripts=["Hello."])
    t = model._adapter_targets(batch)
    plain = model.prompter.text_ids("Hello.")
    assert t.ctc_labels[0, : t.ctc_label_lengths[0]].tolist() == [bos, *plain]
    assert t.target_lengths.tolist() == [len(plain) + 1]


def test_missing_transcript_falls_back_to_the_target_with_a_warning(tiny_llm_dir):
    model = build(tiny_llm_dir, "adapter.name=cif").train()
    batch = make_batch([16000, 8000], ["Guten Morgen zusammen.", "hi"], tasks=["st", "asr"],
                       tgt_langs=["de", None], transcripts=["", None])
    with pytest.warns(UserWarning, match=r"ST items \['0'\] have no transcript"):
        t = model._adapter_targets(batch)
    assert t.target_lengths.tolist() == [len(model.prompter.text_ids("Guten Morgen zusammen.")), 2]
    assert t.ctc_labels is None  # the ctc adapter would raise, naming the transcript field
    ctc = build(tiny_llm_dir, "adapter.name=ctc").train()
    with pytest.raises(ValueError, match="transcript"):
        ctc(batch)


def test_output_scale_switch(tiny_llm_dir):
    ours, paper = build(tiny_llm_dir), build(tiny_llm_dir, "adapter.match_output_scale=false")
    table = ours.llm.get_input_embeddings().weight.detach()
    rms = float(table.float().pow(2).mean().sqrt())
    torch.testing.assert_close(ours.adapter.stack.out_proj[1].weight, torch.full_like(table[0], rms))
    assert torch.equal(paper.adapter.stack.out_proj[1].weight, torch.ones_like(table[0]))  # PyTorch's init


PARAPHRASES = ["llm.asr_prompt=[Transcribe A., Transcribe B., Transcribe C.]",
               "llm.st_prompt=['To {tgt} A.', 'To {tgt} B.', 'To {tgt} C.']"]


def test_instruction_paraphrases_train_drawn_eval_first(tiny_llm_dir):
    model = build(tiny_llm_dir, *PARAPHRASES)
    p = model.prompter
    assert p.instruction("st", "en", "de", 1) == "To German B."
    rng = torch.get_rng_state()
    draws = {i: p.draw_variant("asr", f"utt{i}", seed=0) for i in range(60)}
    assert torch.equal(rng, torch.get_rng_state())  # its own seeded generator: global RNG untouched
    assert set(draws.values()) == {0, 1, 2}
    assert draws == {i: p.draw_variant("asr", f"utt{i}", seed=0) for i in range(60)}  # same item, same draw
    assert draws != {i: p.draw_variant("asr", f"utt{i}", seed=1) for i in range(60)}  # the seed matters

    batch = make_batch([8000] * 6, ["a", "b", "c", "d", "e", "f"], seed=1)
    hidden, lengths = model.encode_audio(batch)
    out = model.adapter.eval()(hidden, lengths)

    def instructions_seen() -> list[str]:
        inputs, *_ = model._sequences(batch, out.embeds, out.lengths, with_targets=False)
        texts = []
        for i in range(6):
            v = [j for j in range(3) if torch.allclose(
                inputs[i, -len(p.prompt("asr", variant=j).after_audio):],
                model.embed_text(p.prompt("asr", variant=j).after_audio))]
            texts.append(v[0])
        return texts

    model.train()
    assert instructions_seen() == [p.draw_variant("asr", batch.ids[i], 0) for i in range(6)]
    model.eval()
    assert instructions_seen() == [0] * 6


def test_batched_generation_equals_one_by_one_with_paraphrases(tiny_llm_dir):
    model = build(tiny_llm_dir, *PARAPHRASES)
    batch = make_batch([3200, 16000, 9000], ["a", "b", "c"], tasks=["asr", "st", "st"], tgt_langs=[None, "de", "it"])
    batched = model.generate(batch, max_new_tokens=6)
    assert batched == [model.generate(select(batch, [i]), max_new_tokens=6)[0] for i in range(3)]
