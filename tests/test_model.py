"""SpeechLLM: what trains, what the loss sees, batching, overfitting, checkpoints, bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from speechwire.config import load_config
from speechwire.model import IGNORE, WEIGHTS_NAME, SpeechLLM

from helpers import TINY_ADAPTER, ToyEncoder, make_batch, select


def build(tiny_llm_dir, *overrides, seed=0):
    torch.manual_seed(seed)
    cfg = load_config(None, [f"llm.model={tiny_llm_dir}", *TINY_ADAPTER, *overrides])
    return SpeechLLM(cfg, encoder=ToyEncoder().freeze())


TEXTS = ["hello world", "the cat sat", "good morning to you", "speech"]
LENGTHS = [8000, 12000, 16000, 6400]


def test_only_adapter_and_markers_train(tiny_llm_dir):
    model = build(tiny_llm_dir)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("adapter.") or n == "audio_markers" for n in trainable)
    assert "audio_markers" in trainable
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(make_batch(LENGTHS, TEXTS)).loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == (n in trainable) or (n in trainable and p.grad is not None and p.grad.abs().sum() == 0), n


def test_lora_adds_only_lora_weights(tiny_llm_dir):
    model = build(tiny_llm_dir, "llm.lora=true", "llm.lora_rank=2")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    llm_side = [n for n in trainable if n.startswith("llm.")]
    assert llm_side and all("lora_" in n for n in llm_side)


def test_loss_ignores_prompt_audio_and_padding(tiny_llm_dir):
    model = build(tiny_llm_dir).eval()
    batch = make_batch([8000, 16000], ["abc", "defgh"])
    out = model(batch)
    assert out.num_target_tokens == len(model.prompter.target_ids("abc")) + len(model.prompter.target_ids("defgh"))
    # garbage in the padded tail of the short item changes nothing
    noisy = dataclasses.replace(batch, audio=batch.audio.clone())
    noisy.audio[0, 8000:] = 5.0
    assert torch.allclose(model(noisy).loss, out.loss, atol=1e-6)
    # labels cover exactly the target tokens: the loss equals a hand-computed CE over them
    hidden, lengths = model.encode_audio(batch)
    ad = model.adapter(hidden, lengths)
    inputs, mask, pos, labels = model._sequences(batch, ad.embeds, ad.lengths, with_targets=True)
    assert int((labels != IGNORE).sum()) == out.num_target_tokens
    logits = model.llm(inputs_embeds=inputs, attention_mask=mask, position_ids=pos).logits
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                           ignore_index=IGNORE)
    assert torch.allclose(ce, out.loss, atol=1e-5)


def test_padding_invariance_of_loss(tiny_llm_dir):
    model = build(tiny_llm_dir).eval()
    batch = make_batch(LENGTHS, TEXTS, tasks=["asr", "st", "asr", "st"], tgt_langs=[None, "de", None, "fr"])
    total = model(batch)
    summed = 0.0
    for i in range(4):
        one = model(select(batch, [i]))
        summed += one.lm_loss * one.num_target_tokens
    assert torch.allclose(total.lm_loss * total.num_target_tokens, summed, rtol=1e-5)


def test_overfits_four_utterances_then_generates_them(tiny_llm_dir):
    model = build(tiny_llm_dir)
    batch = make_batch(LENGTHS, TEXTS)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    first = None
    for _ in range(250):
        loss = model(batch).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    assert model.generate(batch) == TEXTS


def test_batched_generation_equals_one_by_one(tiny_llm_dir):
    model = build(tiny_llm_dir, seed=3)
    batch = make_batch([3200, 16000, 9000], ["a", "b", "c"], tasks=["asr", "st", "st"], tgt_langs=[None, "de", "italian"])
    batched = model.generate(batch, max_new_tokens=12)
    single = [model.generate(select(batch, [i]), max_new_tokens=12)[0] for i in range(3)]
    assert batched == single


def test_draft_verification_gives_the_plain_greedy_answer_in_fewer_passes(tiny_llm_dir):
    """eval.draft: whatever the drafts (the answer itself, a wrong token midway, noise, longer than
    the answer, none), the answers are the plain greedy ones; an agreeing draft saves the passes."""
    model = build(tiny_llm_dir, seed=3).eval()
    batch = model.with_tokens(make_batch([3200, 16000, 9000], ["a", "b", "c"], tasks=["asr", "st", "asr"],
                                         tgt_langs=[None, "de", None]))
    passes = []
    model.llm.get_decoder().register_forward_hook(lambda *_: passes.append(1))
    with torch.no_grad():
        hidden, lengths = model.encode_audio(batch)
        out = model._adapt(batch, hidden, lengths)
        model._decode(batch, out.embeds, out.lengths, 10)  # the first call also computes the prompt prefix's cache
        passes[:] = []
        plain = model._decode(batch, out.embeds, out.lengths, 10)
        assert len(passes) == 10  # the random LLM never stops: one pass per token
        g = torch.Generator().manual_seed(0)
        vocab = model.llm.get_input_embeddings().weight.shape[0]
        noise = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (3, 0, 12)]
        wrong = [a[:4] + [(a[4] + 1) % vocab] + a[5:] for a in plain]
        for drafts in (plain, wrong, noise, [a + a for a in plain], [[], [], []], [plain[0], [], noise[2]]):
            assert model._decode(batch, out.embeds, out.lengths, 10, drafts=drafts) == plain
        passes[:] = []
        model._decode(batch, out.embeds, out.lengths, 10, drafts=plain)
        assert len(passes) == 1  # every draft agreed to max_new tokens: the first pass was the whole decode
        passes[:] = []
        model._decode(batch, out.embeds, out.lengths, 10, drafts=wrong)
        assert len(passes) == 1 + 10 - 5  # 4 agreed + the model's own 5th token in the first pass
        passes[:] = []
        assert model._decode(batch, out.embeds, out.lengths, 10, drafts=[plain[0], [], []]) == plain
        assert len(passes) == 10  # the items without a draft still take one pass per token


def test_generate_from_waveform_list(tiny_llm_dir):
    model = build(tiny_llm_dir)
    waves = [torch.randn(4000).numpy(), torch.randn(7000)]
    assert len(model.generate(waves, max_new_tokens=3)) == 2
    with pytest.raises(ValueError, match="16 kHz"):
        model.generate(waves, sample_rate=8000)
    with pytest.raises(ValueError, match="mono"):
        model.generate([torch.randn(2, 4000)])
    with pytest.raises(ValueError, match="empty"):
        model.generate([torch.zeros(0)])
    with pytest.raises(ValueError, match="tgt_lang"):
        model.generate(waves, task="st")


def test_nan_and_short_audio_are_named(tiny_llm_dir):
    model = build(tiny_llm_dir)
    batch = make_batch([4000, 4000], ["a", "b"])
    batch.audio[1, 10] = float("nan")
    with pytest.raises(ValueError, match=r"item\(s\) \[1\].*NaN"):
        model(batch)
    with pytest.raises(ValueError, match="minimum"):
        model(make_batch([100, 4000], ["a", "b"]))


def test_save_load_round_trip(tiny_llm_dir, tmp_path, monkeypatch):
    model = build(tiny_llm_dir, "adapter.name=mlp", "adapter.stack=2")
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "ckpt")
    state = load_file(str(tmp_path / "ckpt" / WEIGHTS_NAME))
    assert set(state) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(k.startswith(("llm.", "encoder.")) for k in state)
    import speechwire.model as m
    monkeypatch.setattr(m, "build_encoder", lambda cfg: ToyEncoder().freeze())
    loaded = SpeechLLM.from_pretrained(tmp_path / "ckpt").eval()
    batch = make_batch([4000, 9000], ["hi", "there"])
    assert torch.equal(model.eval()(batch).loss, loaded(batch).loss)
    assert model.generate(batch, max_new_tokens=5) == loaded.generate(batch, max_new_tokens=5)
    other = build(tiny_llm_dir, "adapter.name=base")
    with pytest.raises(ValueError, match="does not fit"):
        other.load_trainable(tmp_path / "ckpt")


def test_unknown_adapter_lists_known(tiny_llm_dir):
    with pytest.raises(ValueError, match=r"unknown adapter 'transformerz'; available: .*base.*mlp"):
        build(tiny_llm_dir, "adapter.name=transformerz")


def test_adapter_width_mismatch_is_clear(tiny_llm_dir):
    model = build(tiny_llm_dir)
    with pytest.raises(ValueError, match="speech encoder width 24 does not match the adapter's input width 16"):
        model.adapter(torch.zeros(1, 5, 24), torch.tensor([5]))


def test_lora_checkpoint_round_trip(tiny_llm_dir, tmp_path, monkeypatch):
    model = build(tiny_llm_dir, "llm.lora=true", "llm.lora_rank=2")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn_like(p) * 0.1)  # lora_B starts at 0: make LoRA change the outputs
    model.save_pretrained(tmp_path / "ckpt")
    state = load_file(str(tmp_path / "ckpt" / WEIGHTS_NAME))
    assert any("lora_B" in k for k in state) and not any("lora" not in k and k.startswith("llm.") for k in state)
    import speechwire.model as m
    monkeypatch.setattr(m, "build_encoder", lambda cfg: ToyEncoder().freeze())
    loaded = SpeechLLM.from_pretrained(tmp_path / "ckpt").eval()
    batch = make_batch([4000, 9000], ["hi", "there"])
    assert torch.allclose(model.eval()(batch).loss, loaded(batch).loss)


@pytest.mark.parametrize("adapter", ["mlp", "base", "wlqformer"])
def test_adapter_output_starts_at_the_llm_embedding_scale(tiny_llm_dir, adapter):
    model = build(tiny_llm_dir, f"adapter.name={adapter}").eval()
    table = model.llm.get_input_embeddings().weight
    token_rms = float(table.float().pow(2).mean().sqrt())
    hidden, lengths = model.encode_audio(make_batch([16000], ["x"]))
    out = model.adapter(hidden, lengths).embeds[0, : lengths[0]]
    speech_rms = float(out.detach().pow(2).mean().sqrt())
    assert 0.5 * token_rms < speech_rms < 2.0 * token_rms, (speech_rms, token_rms)


def test_every_answer_is_cleaned_of_the_quote_markers(tiny_llm_dir, monkeypatch):
    """generate, generate_output and the copy test all hand back decoding.clean_answer's text."""
    model = build(tiny_llm_dir, "llm.marker_init='\"'")
    monkeypatch.setattr(model.prompter, "decode", lambda ids: 'Sure, here it is: "power of close."')
    waves = [torch.randn(4000).numpy()]
    assert model.generate(waves, max_new_tokens=2) == ["power of close."]
    assert model.generate_output(waves, max_new_tokens=2).texts == ["power of close."]
    assert model.generate_from_text(["ten of clubs"], max_new_tokens=2) == ["power of close."]


def test_forward_takes_its_objective_from_the_caller_and_checks_it(tiny_llm_dir):
    """The trainer passes train.stage as the objective; the model itself reads no train.* field when
    it computes a loss or generates (only its constructor and from_pretrained do)."""
    import ast
    import inspect

    import speechwire.model as model_module

    tree = ast.parse(inspect.getsource(model_module.SpeechLLM))
    readers = {fn.name for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef)
               for node in ast.walk(fn) if isinstance(node, ast.Attribute) and node.attr == "train"
               and isinstance(node.value, ast.Attribute) and node.value.attr == "cfg"}
    assert readers <= {"__init__", "from_pretrained"}, readers
    model = build(tiny_llm_dir, "train.stage=align", "align.steps=1").eval()
    model.align_head.set_vocab(range(model.prompter.tok.vocab_size))
    batch = make_batch([8000, 16000], ["abc", "defgh"])
    with pytest.raises(ValueError, match="objective='ctc' must be one of lm, align"):
        model(batch, objective="ctc")
    align, lm = model(batch, objective="align"), model(batch)
    assert align.num_target_tokens > 0 and lm.num_target_tokens > 0
    assert not torch.isclose(align.loss, lm.loss)  # two different losses: the CTC one and the LLM's


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(400, 400_000), min_size=1, max_size=24))
def test_length_groups_cover_every_item_once_within_the_padding_allowance(lengths):
    from speechwire.model import PADDING_ALLOWANCE, length_groups

    groups = length_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    if len(groups) > 1:
        for g in groups:
            assert len(g) * max(lengths[i] for i in g) <= (1 + PADDING_ALLOWANCE) * sum(lengths[i] for i in g) + 1e-6


def test_encoding_in_length_groups_equals_one_padded_batch(tmp_path):
    """encode_audio on the CPU encodes a batch of mixed lengths in groups of similar length (no
    wasted padding); each item's frames are those of the one padded batch (trimmed Whisper masks the
    padding), and the batch keeps its order."""
    from speechwire.data.batch import Batch
    from speechwire.testing import save_tiny_llm, save_tiny_whisper

    cfg = load_config(None, [f"llm.model={save_tiny_llm(tmp_path / 'llm')}", "encoder.name=whisper",
                             f"encoder.model={save_tiny_whisper(tmp_path / 'whisper')}", *TINY_ADAPTER])
    model = SpeechLLM(cfg).eval()
    g = torch.Generator().manual_seed(0)
    waves = [torch.randn(n, generator=g) * 0.1 for n in (64000, 4000, 300000, 8000, 6000, 70000)]
    batch = Batch.from_waveforms(waves, ["asr"] * 6, ["en"] * 6, [None] * 6, 16000)
    grouped, lengths = model.encode_audio(batch)
    with torch.no_grad():
        whole = model.encoder(batch.audio, batch.audio_lengths)
    assert torch.equal(lengths, whole.lengths)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(grouped[b, :n], whole.hidden[b, :n], atol=1e-5, rtol=1e-4)
        assert not grouped[b, n:].any()
