"""The alignment stage (align.py): head, loss, decoding, collapse; training, resume, LM-stage start."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from speechwire.align import (
    ALPHABET,
    BLANK,
    TiedCTCHead,
    alignment_loss,
    collapse,
    greedy_decode,
    greedy_runs,
    restrict_labels,
    sentence,
    spell,
    time_mask,
    token_error_rate,
    transcript_vocab,
)
from speechwire.config import load_config
from speechwire.decoding import loop_cut
from speechwire.encoders.interface import EncoderOutput, SpeechEncoder
from speechwire.model import SpeechLLM
from speechwire.train import Trainer, stage_config, train

from helpers import write_experiment

WORDS = ["hi", "no", "up", "me", "go", "at"]  # one letter per tone: a frame-wise adapter can spell them


def _head(vocab=(5, 7, 9), d=4, V=12) -> TiedCTCHead:
    table = torch.randn(V, d, generator=torch.Generator().manual_seed(1))
    head = TiedCTCHead(table, temperature=0.1)
    head.set_vocab(vocab)
    return head


def test_head_maps_tokens_and_counts_unknown_ones():
    head = _head()
    labels, lengths, dropped = head.labels([[7, 5], [9, 11, 9], []])
    assert lengths.tolist() == [2, 2, 0] and dropped == 1
    assert labels[0, :2].tolist() == [2, 1] and labels[1, :2].tolist() == [3, 3]
    assert head.token_ids(torch.tensor([1, 3])) == [5, 9]


def test_head_scores_token_embeddings_highest_for_their_own_token():
    head = _head()
    y = head.table[head.vocab_ids] * 3.0  # (K, d): the tokens' own embeddings, louder
    logits = head(y[None])  # (1, K, K + 1)
    assert logits.shape == (1, 3, 4)
    assert logits[0, :, 1:].argmax(-1).tolist() == [0, 1, 2]


def test_sampled_candidates_keep_every_label_and_restricted_logits_match_the_full_ones():
    torch.manual_seed(0)
    table = torch.randn(50, 8, generator=torch.Generator().manual_seed(2))
    head = TiedCTCHead(table)
    head.set_vocab(range(3, 43))  # K = 40
    labels, lengths, _ = head.labels([[5, 9, 5], [40]])
    cand = head.sample_candidates(labels, lengths, negatives=6)
    assert cand is not None and set(labels[0, :3].tolist() + [labels[1, 0].item()]) <= set(cand.tolist())
    assert torch.equal(cand, cand.sort().values) and len(cand) <= 3 + 6
    y = torch.randn(2, 5, 8)
    full, part = head(y), head(y, cand)  # (2, 5, 41), (2, 5, C + 1)
    assert torch.allclose(part[..., 0], full[..., 0]) and torch.allclose(part[..., 1:], full[..., cand])
    mapped = restrict_labels(labels, cand)
    assert torch.equal(cand[mapped[0, :3] - 1], labels[0, :3])
    assert head.sample_candidates(labels, lengths, negatives=0) is None
    assert head.sample_candidates(labels, lengths, negatives=30) is None  # most of K: score them all


def test_greedy_runs_and_decode_merge_repeats_and_drop_blanks():
    # best path: blank a a blank b b a -> a b a
    path = [BLANK, 1, 1, BLANK, 2, 2, 1]
    logits = torch.full((1, len(path), 4), -5.0)
    for t, k in enumerate(path):
        logits[0, t, k] = 5.0
    assert greedy_runs(logits[0], len(path)) == [(0, 0, 1), (1, 1, 3), (0, 3, 4), (2, 4, 6), (1, 6, 7)]
    head = _head()
    assert greedy_decode(head, logits, torch.tensor([len(path)])) == [[5, 7, 5]]
    assert greedy_decode(head, logits, torch.tensor([3])) == [[5]]  # padding past the length is ignored


def test_collapse_keeps_one_mean_per_token_run_and_is_padding_invariant():
    path = [BLANK, 1, 1, BLANK, 2, 2, 1]
    logits = torch.full((2, 9, 4), -5.0)
    for t, k in enumerate(path):
        logits[:, t, k] = 5.0
    embeds = torch.arange(2 * 9 * 3, dtype=torch.float32).reshape(2, 9, 3)
    out, lengths = collapse(embeds, torch.tensor([7, 3]), logits)
    assert lengths.tolist() == [3, 1]
    assert torch.allclose(out[0, 0], embeds[0, 1:3].mean(0))
    assert torch.allclose(out[0, 1], embeds[0, 4:6].mean(0))
    assert torch.allclose(out[0, 2], embeds[0, 6])
    alone, n = collapse(embeds[1:, :3], torch.tensor([3]), logits[1:, :3])
    assert n.tolist() == [1] and torch.equal(alone[0, 0], out[1, 0])


def test_collapse_of_an_all_blank_item_keeps_its_least_blank_output():
    logits = torch.zeros(1, 4, 3)
    logits[0, :, BLANK] = torch.tensor([9.0, 8.0, 2.0, 7.0])
    embeds = torch.randn(1, 4, 5)
    out, lengths = collapse(embeds, torch.tensor([4]), logits)
    assert lengths.tolist() == [1] and torch.equal(out[0, 0], embeds[0, 2])


def test_alignment_loss_is_low_for_the_right_path_and_high_for_a_wrong_one():
    path = [BLANK, 1, BLANK, 2, 2]
    logits = torch.full((1, 5, 4), -8.0)
    for t, k in enumerate(path):
        logits[0, t, k] = 8.0
    right = alignment_loss(logits, torch.tensor([5]), torch.tensor([[1, 2]]), torch.tensor([2]))
    wrong = alignment_loss(logits, torch.tensor([5]), torch.tensor([[3, 1]]), torch.tensor([2]))
    assert float(right) < 0.01 < 1.0 < float(wrong)
    # one output per token (CIF): position i against token i; items whose counts differ are skipped
    per_token = alignment_loss(logits[:, 1:4:2], torch.tensor([2]), torch.tensor([[1, 2]]), torch.tensor([2]),
                               one_per_token=True)
    assert float(per_token) < 0.01


def test_time_mask_zeroes_about_the_asked_share_and_only_valid_frames():
    torch.manual_seed(0)
    hidden = torch.ones(4, 200, 3)
    masked = time_mask(hidden, torch.tensor([200, 200, 200, 100]), share=0.2)
    zeroed = (masked[..., 0] == 0).float()
    assert 0.05 < float(zeroed[:3].mean()) < 0.35
    assert float(zeroed[3, 110:].sum()) == 0  # spans start inside the valid frames (<= n - span + span)
    assert torch.equal(time_mask(hidden, torch.tensor([200] * 4), share=0.0), hidden)


def test_token_error_rate_and_vocab():
    assert token_error_rate([[1, 2, 3], [4]], [[1, 2, 3], [4]]) == 0.0
    assert token_error_rate([[1, 2, 3, 4]], [[1, 3, 4, 5]]) == pytest.approx(0.5)
    assert token_error_rate([[1, 2]], [[]]) == 1.0
    assert transcript_vocab(["ab", "ba", None, ""], lambda t: [ord(c) for c in t]) == [97, 98]


def test_alignment_vocab_words_spells_new_words_and_full_is_everything(tiny_llm_dir):
    from speechwire.align import alignment_vocab, word_vocab
    from speechwire.config import LLMConfig
    from speechwire.llm import ChatPrompter, load_tokenizer

    cfg = LLMConfig(model=str(tiny_llm_dir))
    prompter = ChatPrompter(load_tokenizer(cfg), cfg)
    tok = prompter.tok
    train = ["abc."]
    own = alignment_vocab("transcripts", train, prompter)
    assert own == sorted(set(prompter.text_ids("abc.")))
    words = alignment_vocab("words", train, prompter)
    assert set(own) < set(words)
    never_trained = prompter.text_ids("Zebra quiz, 42!")  # letters, digits, punctuation not in "abc."
    assert set(never_trained) <= set(words) and not set(never_trained) <= set(own)
    assert not {tok.convert_tokens_to_ids(c) for c in ("{", "_", "<", "#")} & set(words)  # code, markup
    special = set(tok.all_special_ids) | {prompter.audio_start_id, prompter.audio_end_id}
    assert not special & set(words)
    assert alignment_vocab("full", train, prompter) == sorted(set(range(len(tok))) - special)
    assert set(word_vocab(tok)) <= set(words)
    with pytest.raises(ValueError, match="align.vocab='bogus' must be one of transcripts, words, full, chars"):
        alignment_vocab("bogus", train, prompter)


@pytest.mark.parametrize("text, spelt", [
    ("Café-bar, 2 cups!", "cafe bar two cups"), ("It’s  OK.", "it's ok"), ("  \t", ""),
    ("Dial 1 -- then #.", "dial one then"), ("Ünïcödé naïve", "unicode naive"), ("日本", ""),
    ("Press 5 to leave a message", "press five to leave a message"), ("room 101", "room one hundred one"),
    ("In 1999 it cost 21,000", "in nineteen ninety nine it cost twenty one thousand"),
    ("the 1st, 22nd and 40th", "the first twenty second and fortieth"), ("agent 007", "agent zero zero seven"),
    ("3.5 acres in 1805", "three point five acres in eighteen oh five"),
])
def test_spell_writes_what_a_chars_head_can(text, spelt):
    from speechwire.align import ALPHABET, sentence, spell

    assert spell(text) == spelt and set(spell(text)) <= set(ALPHABET)
    assert sentence(spelt) == (spelt[:1].upper() + spelt[1:] + "." if spelt else "")


@given(st.integers(0, 10**15 - 1))
@settings(max_examples=200, deadline=None)
def test_numbers_are_spelt_as_words_the_wer_normaliser_reads_back(n):
    """A chars head learns "five" from every clip that says it; Whisper's normaliser (every WER here)
    turns the words back into the reference's digits, so scores are unchanged."""
    from speechwire.align import ALPHABET, number_words, spell
    from speechwire.metrics import normalize_text

    words = number_words(n)
    assert set(words) <= set(ALPHABET) and spell(f"room {n}").startswith("room ")
    assert normalize_text(f"room {words}") == normalize_text(f"room {n}")


def test_char_speller_uses_the_llms_one_character_tokens(tiny_llm_dir):
    from transformers import AutoTokenizer

    from speechwire.align import ALPHABET, CharSpeller, alignment_vocab
    from speechwire.llm import ChatPrompter
    from speechwire.schema import LLMConfig

    tok = AutoTokenizer.from_pretrained(tiny_llm_dir)
    speller = CharSpeller(tok)
    assert speller("No, 2!") == [tok.encode(c, add_special_tokens=False)[0] for c in "no two"]
    assert tok.decode(speller("Hello there")) == "hello there"
    prompter = ChatPrompter(tok, LLMConfig(model=str(tiny_llm_dir)))
    assert alignment_vocab("chars", ["never used"], prompter) == sorted(speller.ids.values())
    assert len(set(speller.ids.values())) == len(ALPHABET)

    class MergedSpace:  # a tokenizer whose space is no token of its own (SentencePiece-style)
        def encode(self, text, add_special_tokens=False):
            return [] if text == " " else [ord(text)]

    with pytest.raises(ValueError, match="align.vocab=chars: the LLM's tokenizer has no single token for ' '"):
        CharSpeller(MergedSpace())


# --- the stage end to end on tiny models ---------------------------------------------------------


def _word_corpus(root: Path, n_rep: int = 2) -> Path:
    """Two-letter words as speech-like events: per letter a 0.2 s tone burst (its pitch depends on
    the letter and the word), between 0.25 s pauses -> a manifest of real wav files."""
    rng = np.random.default_rng(0)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for rep in range(n_rep):
        for i, word in enumerate(WORDS):
            pieces = [np.zeros(4000)]
            for j, letter in enumerate(word):
                t = np.arange(3200) / 16000
                pieces += [0.3 * np.sin(2 * np.pi * (300 + 90 * (ord(letter) - 97) + 40 * i) * t), np.zeros(4000)]
            wave = np.concatenate(pieces) + 0.01 * rng.standard_normal(sum(len(x) for x in pieces))
            name = f"wav/{word}-{rep}.wav"
            sf.write(root / name, wave.astype(np.float32), 16000)
            rows.append({"id": f"{word}-{rep}", "audio": name, "transcript": word, "task": "asr"})
    manifest = root / "words.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


class BandEncoder(SpeechEncoder):
    """A stand-in SFM that hears pitch: log energy of 20 ms frames in 32 frequency bands. (The tiny
    random Whisper's outputs are dominated by its positional table: every clip looks the same.)"""

    dim, frame_rate, min_samples, name, model_id = 32, 50.0, 320, "bands", "bands"

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        B, S = waveforms.shape
        T = S // 320
        spec = torch.fft.rfft(waveforms[:, : T * 320].reshape(B, T, 320), dim=-1).abs()[..., :160]  # (B, T, 160)
        bands = torch.log1p(spec.reshape(B, T, 32, 5).mean(-1))  # (B, T, 32)
        n = lengths // 320
        return EncoderOutput(bands * (torch.arange(T)[None] < n[:, None])[..., None], n)


def _cache_features(cfg_path: Path, manifest: Path) -> None:
    """Fill the run's feature cache with BandEncoder outputs (the stage reads the cache, as the demo)."""
    from speechwire.data import load_manifest
    from speechwire.features import FeatureCache

    cfg = load_config(cfg_path)
    FeatureCache.for_config(cfg).build(BandEncoder().freeze(), load_manifest(manifest), progress=False)


ALIGN = {"adapter": {"name": "mlp", "hidden_size": 64, "stack": 2, "dropout": 0.0},
         "data": {"max_batch_seconds": 20.0, "max_batch_size": 12},
         "align": {"lr": 1e-2, "max_batch_seconds": 20.0, "weight_decay": 0.0},
         "train": {"stage": "align", "max_steps": 100, "save_every": 20, "log_every": 10, "keep_last": 5,
                   "warmup_ratio": 0.0, "eval_every": 0}}


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("align")
    manifest = _word_corpus(tmp)
    run = tmp / "run"
    extra = {k: dict(v) for k, v in ALIGN.items()}
    extra["data"].update(dev_manifest=str(manifest), feature_cache=str(tmp / "cache"))
    cfg_path = write_experiment(tmp, manifest, run, extra)
    _cache_features(cfg_path, manifest)
    summary = train(load_config(cfg_path), progress=False)
    return tmp, manifest, run, cfg_path, summary


def test_alignment_stage_loss_falls_and_the_outputs_spell_the_words(aligned):
    tmp, manifest, run, cfg_path, summary = aligned
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < 0.5 * losses[0]
    dev = summary["final_dev"]["metrics"]
    assert dev["align"]["token_error_rate"] < 0.25 and dev["align"]["oov_tokens"] == 0.0
    assert dev["asr"]["wer"] < 0.5
    saved = load_file(str(run / "trainable.safetensors"))
    assert "align_head.vocab_ids" in saved and "align_head.blank" in saved
    assert sorted(saved["align_head.vocab_ids"].tolist()) == saved["align_head.vocab_ids"].tolist()
    cfg = load_config(run / "config.yaml")
    assert cfg.train.lr == ALIGN["align"]["lr"]  # the stage's own step size was used and recorded


def test_alignment_stage_resumes_exactly(aligned):
    tmp, manifest, run, cfg_path, _ = aligned
    again = tmp / "resumed"
    shutil.copytree(run, again)
    for name in ("trainable.safetensors", "train_summary.json"):
        (again / name).unlink()
    for late in ("step-000100", "step-000080", "step-000060"):
        shutil.rmtree(again / "checkpoints" / late)
    (again / "log.jsonl").write_text("")
    cfg = load_config(cfg_path, [f"train.output_dir={again}"])
    train(cfg, progress=False)
    ref, got = load_file(str(run / "trainable.safetensors")), load_file(str(again / "trainable.safetensors"))
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.allclose(ref[k].float(), got[k].float(), atol=1e-6), k


def test_lm_stage_starts_from_the_aligned_adapter(aligned):
    tmp, manifest, run, cfg_path, _ = aligned
    cfg = load_config(cfg_path, ["train.stage=lm", f"train.init_from={run}", f"train.output_dir={tmp / 'lm'}",
                                 "align.collapse=true"])
    trainer = Trainer(stage_config(cfg), progress=False)
    trainer.setup()
    model = trainer.unwrapped
    ref = load_file(str(run / "trainable.safetensors"))
    last_norm = ("adapter.proj.3.weight", "adapter.proj.3.bias")  # mlp: Linear, GELU, Linear, LayerNorm
    for k, v in model.trainable_state_dict().items():
        if (k.startswith("adapter.") or k.startswith("align_head.")) and k not in last_norm:
            assert torch.equal(v.cpu(), ref[k].to(v.dtype)), k
    # the last LayerNorm is scaled by one factor to the LLM's embedding RMS: directions are kept
    w, b = (model.trainable_state_dict()[k] for k in last_norm)
    factor = w / ref[last_norm[0]]
    assert torch.allclose(factor, factor[0].expand_as(factor), rtol=1e-5)
    assert torch.allclose(b, ref[last_norm[1]] * factor[0], rtol=1e-5, atol=1e-7)
    assert float((w.pow(2).mean() + b.pow(2).mean()).sqrt()) == pytest.approx(model.token_rms, rel=1e-4)
    # collapse: the LLM sees about one vector per word token; batched == one by one
    from speechwire.data import CachedFeatureDataset, collate, load_manifest

    items = [CachedFeatureDataset(load_manifest(manifest), trainer.feature_cache)[i] for i in range(4)]
    together = model.generate(collate(items), max_new_tokens=4)
    assert together == [model.generate(collate([it]), max_new_tokens=4)[0] for it in items]
    hidden = collate(items)
    out = model._adapt(hidden, hidden.hidden, hidden.hidden_lengths)
    assert out.lengths.tolist() == [2, 2, 2, 2]  # two letters each, as the aligned head reads them


def test_two_stage_training_in_one_command(aligned, capsys):
    tmp, manifest, run, cfg_path, _ = aligned
    out = tmp / "both"
    cfg = load_config(cfg_path, ["train.stage=lm", "align.steps=20", "align.collapse=true", "train.max_steps=4",
                                 "data.dev_manifest=null", f"train.output_dir={out}"])
    summary = train(cfg, progress=False)
    assert summary["align"]["steps"] == 20 and summary["steps"] == 4
    assert (out / "align" / "trainable.safetensors").is_file()
    lm_cfg = load_config(out / "config.yaml")
    assert lm_cfg.train.stage == "lm" and lm_cfg.train.init_from == str(out / "align")
    model = SpeechLLM.from_pretrained(out)
    assert model.align_head is not None and len(model.align_head.vocab_ids) > 0
    # a rerun skips the finished alignment stage and resumes (nothing left to do) the LM stage
    again = train(cfg, progress=False)
    assert again["align"]["steps"] == 20


def test_align_stage_without_vocabulary_is_a_clear_error(tmp_path, tiny_llm_dir, toy_encoder):
    cfg = load_config(None, ["encoder.name=whisper", f"llm.model={tiny_llm_dir}", "adapter.name=mlp",
                             "adapter.hidden_size=16", "align.collapse=true"])
    model = SpeechLLM(cfg, encoder=toy_encoder)
    with pytest.raises(RuntimeError, match="no vocabulary"):
        model.generate([torch.randn(8000)], max_new_tokens=2)


def test_lm_stage_of_zero_steps_saves_the_aligned_adapter_rescaled(aligned):
    tmp, manifest, run, cfg_path, _ = aligned
    out = tmp / "zero"
    cfg = load_config(cfg_path, ["train.stage=lm", f"train.init_from={run}", "train.max_steps=0",
                                 "align.collapse=true", f"train.output_dir={out}"])
    summary = train(cfg, progress=False)
    assert summary["steps"] == 0 and summary["final_dev"]["metrics"]["asr"]["num_utterances"] == 12
    model = SpeechLLM.from_pretrained(out)
    ref = load_file(str(run / "trainable.safetensors"))
    assert torch.equal(model.trainable_state_dict()["adapter.proj.0.weight"], ref["adapter.proj.0.weight"])
    w = model.trainable_state_dict()["adapter.proj.3.weight"]
    assert float(w.pow(2).mean().sqrt()) < float(ref["adapter.proj.3.weight"].pow(2).mean().sqrt())


def test_zero_steps_without_a_start_is_a_config_error():
    from speechwire.config import ConfigError

    with pytest.raises(ConfigError, match="max_steps=0 trains nothing"):
        load_config(None, ["train.max_steps=0"])
    assert load_config(None, ["train.max_steps=0", "align.steps=10"]).align.steps == 10


def test_posterior_readout_is_the_posterior_weighted_token_embeddings():
    head = _head(vocab=(5, 7, 9), d=4, V=12)
    logits = torch.tensor([[[9.0, 0.0, 0.0, 0.0], [0.0, 50.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])  # (1, 3, K + 1)
    out = head.posterior_embeddings(logits)  # (1, 3, d)
    assert torch.allclose(out[0, 1], head.table[5], atol=1e-5)  # a sure token: its own embedding
    assert torch.allclose(out[0, 2], head.table[[5, 7, 9]].mean(0), atol=1e-6)  # unsure: the mean
    assert torch.allclose(out[0, 0], out[0, 2], atol=1e-6)  # the blank takes no share


def test_lm_stage_with_posterior_readout_feeds_the_llm_token_embeddings(aligned):
    tmp, manifest, run, cfg_path, _ = aligned
    out = tmp / "posterior"
    cfg = load_config(cfg_path, ["train.stage=lm", f"train.init_from={run}", "train.max_steps=0",
                                 "align.collapse=true", "align.readout=posterior", f"train.output_dir={out}",
                                 "data.dev_manifest=null"])
    train(cfg, progress=False)
    model = SpeechLLM.from_pretrained(out)
    from speechwire.data import CachedFeatureDataset, collate, load_manifest
    from speechwire.features import FeatureCache

    items = [CachedFeatureDataset(load_manifest(manifest), FeatureCache.for_config(model.cfg))[i] for i in range(3)]
    batch = collate(items)
    speech = model._adapt(batch, batch.hidden, batch.hidden_lengths)
    table = model.llm.get_input_embeddings().weight.detach()
    vocab = table[model.align_head.vocab_ids]  # (K, d): every output lies in the span of these rows
    coef = torch.linalg.lstsq(vocab.T, speech.embeds[0, : speech.lengths[0]].T).solution
    assert torch.allclose(vocab.T @ coef, speech.embeds[0, : speech.lengths[0]].T, atol=1e-4)
    together = model.generate(batch, max_new_tokens=4)
    assert together == [model.generate(collate([it]), max_new_tokens=4)[0] for it in items]
    # eval.draft (on by default): what the head heard is verified as a draft; the answers are unchanged
    undrafted = SpeechLLM.from_pretrained(out, ["eval.draft=false"]).eval()
    assert model._greedy(batch, 12)[0] == undrafted._greedy(batch, 12)[0]


def test_beam_decoding_with_the_stage_lm_feeds_the_llm_exact_token_embeddings(aligned, tmp_path):
    """align.lm_order builds an n-gram LM in the alignment stage; it rides in the checkpoint to the LM
    stage; align.decode=beam hands the LLM the token rows of each item's best beam."""
    tmp, manifest, run, cfg_path, _ = aligned
    lm_text = tmp_path / "more.txt"
    lm_text.write_text("one two three\n\nfour five\n")
    align_run = tmp_path / "align"
    cfg = load_config(cfg_path, [f"train.output_dir={align_run}", "train.max_steps=30", "train.save_every=0",
                                 "align.lm_order=3", f"align.lm_text=[{lm_text}]"])
    train(cfg, progress=False)
    saved = load_file(str(align_run / "trainable.safetensors"))
    assert saved["align_head.lm_grams"].shape[1] == 3 and len(saved["align_head.lm_counts"]) > 0
    out = tmp_path / "lm"
    train(load_config(cfg_path, ["train.stage=lm", f"train.init_from={align_run}", "train.max_steps=0",
                                 "align.collapse=true", "align.readout=posterior", "align.decode=beam",
                                 f"train.output_dir={out}", "data.dev_manifest=null"]), progress=False)
    model = SpeechLLM.from_pretrained(out).eval()
    assert model.align_head.lm is not None and list(model.align_head.lm.items()) == \
        list(SpeechLLM.from_pretrained(align_run).align_head.lm.items())
    from speechwire.data import CachedFeatureDataset, collate, load_manifest
    from speechwire.features import FeatureCache

    items = [CachedFeatureDataset(load_manifest(manifest), FeatureCache.for_config(model.cfg))[i] for i in range(3)]
    batch = collate(items)
    speech = model._adapt(batch, batch.hidden, batch.hidden_lengths)
    table = model.llm.get_input_embeddings().weight.detach()
    rows = table[model.align_head.vocab_ids]  # (K, d)
    for b in range(3):
        got = speech.embeds[b, : speech.lengths[b]]  # each output is exactly one vocabulary row
        assert torch.cdist(got, rows).min(-1).values.max() < 1e-4
    together = model.generate(batch, max_new_tokens=4)
    assert together == [model.generate(collate([it]), max_new_tokens=4)[0] for it in items]
    # eval.draft (on by default): what the head heard is verified as a draft; the answers are unchanged
    undrafted = SpeechLLM.from_pretrained(out, ["eval.draft=false"]).eval()
    assert model._greedy(batch, 12)[0] == undrafted._greedy(batch, 12)[0]
    # align.rescore on a word-piece head: the LLM reads the rows of the beam text it scored best
    rescored = SpeechLLM.from_pretrained(out, ["align.rescore=1000", "align.rescore_margin=1000000"]).eval()
    with torch.no_grad():
        speech = rescored._adapt(batch, batch.hidden, batch.hidden_lengths)
        adapted = rescored.adapter(batch.hidden.float(), batch.hidden_lengths)
        log_probs = rescored.align_head(adapted.embeds).float().log_softmax(-1).numpy()
    from speechwire.decoding import ctc_nbest
    from speechwire.rescore import start_token, text_logprobs

    a, choices = rescored.cfg.align, 0
    for b in range(3):
        nbest = [rescored.align_head.token_ids(torch.tensor(p)) for p, _ in
                 ctc_nbest(log_probs[b, : int(adapted.lengths[b])], beam=a.beam_size,
                           lm=rescored.align_head.lm, lm_weight=a.lm_weight, token_bonus=a.lm_bonus)[: a.rescore_nbest]
                 if p]
        with torch.no_grad():
            best = nbest[int(text_logprobs(rescored.llm, None, nbest, start_token(rescored.tokenizer)).argmax())]
        assert torch.equal(speech.embeds[b, : int(speech.lengths[b])], table[best].float())
        choices += len(nbest) > 1
    assert choices >= 1
    with pytest.raises(FileNotFoundError, match="align.lm_text: .*nope.txt does not exist"):
        train(load_config(cfg_path, [f"train.output_dir={tmp_path / 'x'}", "align.lm_order=2",
                                     f"align.lm_text=[{tmp_path / 'nope.txt'}]"]), progress=False)


def test_beam_decoding_needs_the_posterior_readout():
    with pytest.raises(Exception, match="decode=beam needs collapse: true and readout: posterior"):
        load_config(None, ["align.decode=beam"])
    with pytest.raises(Exception, match="vocab=chars needs decode=beam"):
        load_config(None, ["align.vocab=chars"])


def test_a_chars_head_spells_and_the_llm_reads_the_spelt_texts_own_tokens(aligned, tmp_path):
    """align.vocab=chars: the head learns letters (labels: CharSpeller), its character LM rides in the
    checkpoint as int8, and the LLM reads the beam's text tokenised as the LLM tokenises text."""
    tmp, manifest, run, cfg_path, _ = aligned
    align_run = tmp_path / "align"
    chars = ["align.vocab=chars", "align.lm_order=4", "align.collapse=true", "align.readout=posterior",
             "align.decode=beam"]
    summary = train(load_config(cfg_path, [f"train.output_dir={align_run}", "train.save_every=0",
                                           f"data.dev_manifest={manifest}", *chars]), progress=False)
    assert summary["final_dev"]["metrics"]["asr"]["wer"] < 0.5  # greedy, letter by letter
    saved = load_file(str(align_run / "trainable.safetensors"))
    assert saved["align_head.lm_grams"].dtype == torch.int8 and saved["align_head.lm_grams"].shape[1] == 4
    out = tmp_path / "lm"
    train(load_config(cfg_path, ["train.stage=lm", f"train.init_from={align_run}", "train.max_steps=0",
                                 f"train.output_dir={out}", "data.dev_manifest=null", *chars]), progress=False)
    model = SpeechLLM.from_pretrained(out).eval()
    tok = model.prompter.tok
    assert sorted(model.align_head.vocab_ids.tolist()) == sorted(model.transcript_ids.ids.values())
    from speechwire.align import sentence
    from speechwire.data import CachedFeatureDataset, collate, load_manifest
    from speechwire.decoding import ctc_beam_search, ctc_nbest
    from speechwire.features import FeatureCache
    from speechwire.rescore import start_token, text_logprobs

    utts = load_manifest(manifest)
    items = [CachedFeatureDataset(utts, FeatureCache.for_config(model.cfg))[i] for i in range(4)]
    batch = collate(items)
    with torch.no_grad():
        speech = model._adapt(batch, batch.hidden, batch.hidden_lengths)
        out_ = model.adapter(batch.hidden.float(), batch.hidden_lengths)
        log_probs = model.align_head(out_.embeds).float().log_softmax(-1).numpy()
    table = model.llm.get_input_embeddings().weight.detach()
    heard = 0
    for b in range(4):
        a = model.cfg.align
        beam = ctc_beam_search(log_probs[b, : int(out_.lengths[b])], beam=a.beam_size, lm=model.align_head.lm,
                               lm_weight=a.lm_weight, token_bonus=a.lm_bonus)
        text = sentence(tok.decode(model.align_head.token_ids(torch.tensor(beam))))
        heard += text == sentence(utts[b].transcript)
        ids = model.prompter.text_ids(text)
        assert int(speech.lengths[b]) == len(ids)
        assert torch.equal(speech.embeds[b, : len(ids)], table[ids].float())
    assert heard >= 2
    together = model.generate(batch, max_new_tokens=4)
    assert together == [model.generate(collate([it]), max_new_tokens=4)[0] for it in items]
    # eval.draft (on by default): what the head heard is verified as a draft; the answers are unchanged
    undrafted = SpeechLLM.from_pretrained(out, ["eval.draft=false"]).eval()
    assert model._greedy(batch, 12)[0] == undrafted._greedy(batch, 12)[0]
    # eval.max_rewrite: the tiny random LLM writes noise, never a copy, so ASR answers fall back to what the head heard
    ids, spelt = model._greedy(batch, 4)
    assert spelt is not None and len(spelt) == 4 and all(s == sentence(s.rstrip(".").lower()) for s in spelt if s)
    guarded = SpeechLLM.from_pretrained(out, ["eval.max_rewrite=0.5"]).eval()
    assert guarded.generate(batch, max_new_tokens=4) == spelt
    passes = []
    guarded.llm.get_decoder().register_forward_hook(lambda *_: passes.append(1))
    assert guarded.generate(batch, max_new_tokens=48) == [s for s in guarded._greedy(batch, 4)[1]]
    assert len(passes) < 48 / 2  # the noise stops as soon as it is sure to be replaced, not after 48 tokens
    st_batch = dataclasses.replace(batch, tasks=["st"] * 4, tgt_langs=["de"] * 4, tokens=None)
    assert guarded.generate(st_batch, max_new_tokens=4) == model.generate(st_batch, max_new_tokens=4)  # ASR only
    # align.rescore: each item hears the one of its beam's best 3 texts (within the margin of the best's
    # beam score) with the best beam score + weight * LLM log-prob
    a = model.cfg.align
    for margin in (1e6, 1.0):
        rescored = SpeechLLM.from_pretrained(out, ["align.rescore=0.5", "align.rescore_nbest=3",
                                                   f"align.rescore_margin={margin}"]).eval()
        choices = 0
        with torch.no_grad():
            _, heard_rescored = rescored._greedy(batch, 1)
            for b in range(4):
                nbest = ctc_nbest(log_probs[b, : int(out_.lengths[b])], beam=a.beam_size, lm=model.align_head.lm,
                                  lm_weight=a.lm_weight, token_bonus=a.lm_bonus)[:3]
                nbest = [(sentence(tok.decode(model.align_head.token_ids(torch.tensor(p)))), score) for p, score in nbest
                         if p and score >= nbest[0][1] - margin]
                llm_scores = text_logprobs(rescored.llm, None, [model.prompter.text_ids(t) for t, _ in nbest],
                                           start_token(tok)).tolist()
                totals = [score + 0.5 * lp for (_, score), lp in zip(nbest, llm_scores)]
                assert heard_rescored[b] == nbest[totals.index(max(totals))][0]
                choices += len(nbest) > 1
        assert choices >= 2 or margin < 1e6  # the LLM had texts to choose from


def test_max_repeats_ends_a_greedy_loop_and_cuts_the_extra_copies(aligned):
    tmp, manifest, run, cfg_path, _ = aligned
    model = SpeechLLM.from_pretrained(run, ["eval.max_repeats=1"])
    from speechwire.data import CachedFeatureDataset, collate, load_manifest
    from speechwire.features import FeatureCache

    items = [CachedFeatureDataset(load_manifest(manifest), FeatureCache.for_config(model.cfg))[i] for i in range(4)]
    free = SpeechLLM.from_pretrained(run)
    long, _ = free._greedy(collate(items), 12)
    capped, heard = model._greedy(collate(items), 12)
    assert heard is None  # only a chars head's beam is text
    for a, b in zip(long, capped):
        assert all(b[i] != b[i - 1] for i in range(1, len(b)))  # no token twice in a row
        cuts = (loop_cut(a[: i + 1], 1) for i in range(len(a)))  # the first loop, token or phrase, as it completes
        assert b == a[: next((c for c in cuts if c is not None), len(a))]  # the same answer up to the first loop
    assert capped == [model._greedy(collate([it]), 12)[0][0] for it in items]


def test_head_inference_logits_and_token_rows_equal_the_reference_computation():
    """No-grad scoring reuses one cached (K + 1, d) key matrix (built in chunks, blank row written per
    call) and token_rows gathers from the table: both bit-equal to normalising and stacking afresh."""
    table = torch.randn(9000, 8, generator=torch.Generator().manual_seed(4))  # K > one 4096-row chunk
    head = TiedCTCHead(table)
    head.set_vocab(range(1, 8999, 2))
    y = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(5))
    ref_keys = torch.cat([F.normalize(head.blank.float(), dim=-1)[None], F.normalize(table[head.vocab_ids], dim=-1)])
    ref = head.log_scale.exp() * F.normalize(y, dim=-1) @ ref_keys.T
    with torch.no_grad():
        assert torch.equal(head(y), ref)
        head.blank.add_(1.0)  # a changed blank is seen on the next call
        assert torch.equal(head(y)[..., 1:], ref[..., 1:]) and not torch.equal(head(y)[..., 0], ref[..., 0])
    assert torch.equal(head.token_rows(head.token_ids(torch.tensor([1, 4, 4499]))), table[head.vocab_ids[[0, 3, 4498]]])


def test_cif_fires_one_vector_per_letter_under_a_chars_head_and_is_read_output_by_output(aligned, tmp_path):
    """align.vocab=chars with the cif adapter: its training target count is the transcript's letters
    (the head's labels), its outputs are scored one by one (cross-entropy) and decoded one by one
    (nothing merged, decoding.label_nbest); a ctc adapter's own head predicts the same alphabet."""
    tmp, manifest, _, cfg_path, _ = aligned
    chars = ["align.vocab=chars", "align.lm_order=3", "align.collapse=true", "align.readout=posterior",
             "align.decode=beam"]
    cif = ["adapter.name=cif", "adapter.hidden_size=64", "adapter.num_layers=1", "adapter.num_heads=4",
           "adapter.ffn_size=128"]
    run = tmp_path / "cif"
    summary = train(load_config(cfg_path, [f"train.output_dir={run}", "train.save_every=0",
                                           f"data.dev_manifest={manifest}", *chars, *cif]), progress=False)
    assert summary["final_dev"]["metrics"]["asr"]["wer"] < 0.5  # greedy, output by output
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if "lm_loss" in x]
    assert log[-1]["lm_loss"] < 0.5 * log[0]["lm_loss"]  # the per-output cross-entropy is trained (not 0: counts match)
    from speechwire.data import CachedFeatureDataset, collate, load_manifest
    from speechwire.features import FeatureCache

    model = SpeechLLM.from_pretrained(run).train()
    utts = load_manifest(manifest)
    batch = collate([CachedFeatureDataset(utts, FeatureCache.for_config(model.cfg))[i] for i in range(4)])
    targets = model._adapter_targets(batch)
    assert targets.target_lengths.tolist() == [len(spell(u.transcript)) for u in utts[:4]]
    model.eval()
    with torch.no_grad():
        speech = model._adapt(batch, batch.hidden, batch.hidden_lengths)  # beam over outputs: label_nbest
    assert sum(h == sentence(u.transcript) for h, u in zip(speech.heard, utts)) >= 2
    ctc = SpeechLLM(load_config(cfg_path, [*chars, "adapter.name=ctc", "adapter.hidden_size=64", "adapter.num_layers=1",
                                           "adapter.num_heads=4", "adapter.ffn_size=128"])).train()
    ctc.align_head.set_vocab(ctc.transcript_ids.ids.values())
    assert ctc.adapter.head.out_features == len(ALPHABET) + 1 and ctc.adapter.blank == 0
    targets = ctc._adapter_targets(batch)
    assert targets.ctc_labels[0, : len(utts[0].transcript)].tolist() == ctc.align_head.head_indices(
        [ctc.transcript_ids(utts[0].transcript)])[0]


def test_a_lexicon_rides_in_the_checkpoint_and_the_beam_spells_with_it(aligned, tmp_path):
    """align.word_weight: the alignment stage builds the lexicon (the texts' words + align.lexicon's word
    list) and word LM, the LM stage inherits them, and the loaded model's beam adds their scores; a
    checkpoint without one cannot be asked to use one."""
    tmp, manifest, run, cfg_path, _ = aligned
    (tmp_path / "words.txt").write_text("Tuesday\nApril\n", encoding="utf-8")
    chars = ["align.vocab=chars", "align.lm_order=3", "align.collapse=true", "align.readout=posterior",
             "align.decode=beam", "align.word_weight=0.5", "align.word_order=2", f"align.lexicon=[{tmp_path / 'words.txt'}]"]
    align_run, out = tmp_path / "align", tmp_path / "lm"
    train(load_config(cfg_path, [f"train.output_dir={align_run}", "train.save_every=0", "data.dev_manifest=null",
                                 "train.max_steps=40", *chars]), progress=False)
    saved = load_file(str(align_run / "trainable.safetensors"))
    assert {"align_head.word_list", "align_head.word_grams"} <= saved.keys()
    train(load_config(cfg_path, ["train.stage=lm", f"train.init_from={align_run}", "train.max_steps=0",
                                 f"train.output_dir={out}", "data.dev_manifest=null", *chars]), progress=False)
    model = SpeechLLM.from_pretrained(out, ["align.word_oov=-2.5"]).eval()
    words = model.align_head.words
    from speechwire.data import CachedFeatureDataset, collate, load_manifest
    from speechwire.decoding import ctc_nbest
    from speechwire.features import FeatureCache
    from speechwire.lexicon import WordScorer

    utts = load_manifest(manifest)
    assert {"tuesday", "april"} <= set(words.words) and set(spell(utts[0].transcript).split()) <= set(words.words)
    assert words.lm.order == 2 and "".join(sorted(words.chars)) == "".join(sorted(ALPHABET))
    batch = collate([CachedFeatureDataset(utts, FeatureCache.for_config(model.cfg))[i] for i in range(4)])
    with torch.no_grad():
        _, heard = model._greedy(batch, 1)
        assert (words.weight, words.oov) == (0.5, -2.5)  # set from the config, as loaded
        o = model.adapter(batch.hidden.float(), batch.hidden_lengths)
        log_probs = model.align_head(o.embeds).float().log_softmax(-1).numpy()
    reference = WordScorer.from_tensors({k.removeprefix("align_head."): v for k, v in saved.items() if "word_" in k})
    reference.weight, reference.oov = 0.5, -2.5  # the config's weight, the override's penalty
    a, tok = model.cfg.align, model.prompter.tok
    for b in range(4):
        best = ctc_nbest(log_probs[b, : int(o.lengths[b])], beam=a.beam_size, lm=model.align_head.lm,
                         lm_weight=a.lm_weight, token_bonus=a.lm_bonus, words=reference)[0][0]
        assert heard[b] == sentence(tok.decode(model.align_head.token_ids(torch.tensor(best))))
    # align.beam_workers: the batch's searches in two worker processes hear the same texts
    model.cfg.align.beam_workers = 2
    with torch.no_grad():
        assert model._greedy(batch, 1)[1] == heard
    assert model.beam_search._pool is not None and not model.beam_search._failed
    model.beam_search.close()
    bare = tmp_path / "bare"
    shutil.copytree(out, bare)
    from safetensors.torch import save_file

    weights = load_file(str(bare / "trainable.safetensors"))
    save_file({k: v for k, v in weights.items() if "word_" not in k}, str(bare / "trainable.safetensors"))
    with pytest.raises(ValueError, match=r"align.word_weight=0.5 but this checkpoint has no lexicon.*add_lexicon"):
        SpeechLLM.from_pretrained(bare)
    assert SpeechLLM.from_pretrained(bare, ["align.word_weight=0"]).align_head.words is None
    # scripts/add_lexicon.py gives it back from the config's own texts and word lists
    import importlib.util

    spec = importlib.util.spec_from_file_location("add_lexicon", Path(__file__).parents[1] / "scripts" / "add_lexicon.py")
    add_lexicon = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(add_lexicon)
    assert add_lexicon.add_lexicon(bare, ["align.word_oov=-2.5"]) == len(words)
    again = SpeechLLM.from_pretrained(bare).align_head.words
    assert again.words == words.words and list(again.lm.items()) == list(words.lm.items()) and again.chars == words.chars
    assert load_config(bare / "config.yaml").align.word_oov == -2.5
    with pytest.raises(Exception, match="word_weight > 0 needs vocab=chars"):
        load_config(None, ["align.word_weight=0.5"])
    with pytest.raises(Exception, match="word_oov=1.0 <= 0"):
        load_config(None, ["align.word_oov=1.0"])
