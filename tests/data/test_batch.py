"""The Batch: collate's shapes, the collator's token ids (the same as SpeechLLM made them before the
collator did), and the model using them."""

from __future__ import annotations

import warnings

import pytest
import torch

from speechwire.config import DataConfig, LLMConfig, load_config
from speechwire.data import Batch, BatchTokenizer, Collator, SpeechDataset, Utterance, collate, make_dataloader
from speechwire.llm import AUDIO_END, AUDIO_START, ChatPrompter, load_tokenizer
from speechwire.model import IGNORE, SpeechLLM

from helpers import TINY_ADAPTER, ToyEncoder, make_batch, write_tone

PARAPHRASES = ["Transcribe A.", "Transcribe B.", "Transcribe C."], ["To {tgt} A.", "To {tgt} B.", "To {tgt} C."]
SYSTEM = "You are helpful."


def old_path(prompter: ChatPrompter, batch: dict, training: bool, seed: int, special: bool) -> tuple:
    """The token ids exactly as SpeechLLM made them inside forward before the collator did
    (model.py at commit 3d3a3a3: _sequences, _adapter_targets, _alignment_loss), from a dict batch."""
    B = len(batch["targets"])
    tasks = batch.get("tasks") or ["asr"] * B
    src = batch.get("src_langs") or ["en"] * B
    tgt = batch.get("tgt_langs") or [None] * B
    keys = batch.get("ids") or batch.get("targets") or [""] * B
    before, after, targets = [], [], []
    for i in range(B):
        variant = prompter.draw_variant(tasks[i], str(keys[i]), seed) if training else 0
        prompt = prompter.prompt(tasks[i], src[i], tgt[i], variant)
        before.append(prompt.before_audio)
        after.append(prompt.after_audio)
        targets.append(prompter.target_ids(batch["targets"][i]))
    sources = [t if t and t.strip() else (target if task == "asr" else None)
               for t, target, task in zip(batch.get("transcripts") or [None] * B, batch["targets"], tasks)]
    missing = [i for i, t in enumerate(sources) if t is None]
    counted = [prompter.text_ids(t if t is not None else target, special)
               for t, target in zip(sources, batch["targets"])]
    aligned = [prompter.text_ids(t or "") for t in batch["transcripts"]]
    return before, after, targets, counted, missing, aligned


def corpus(tmp_path) -> list[Utterance]:
    """ASR and ST (two target languages) items; one ST item without a transcript."""
    rows = [("Hello there.", None, None), ("Good morning, everyone!", "Guten Morgen zusammen!", "de"),
            ("the cat sat", None, None), ("", "Bonjour.", "fr"), ("See you soon.", "Bis bald.", "de"),
            ("  ", None, None)]
    return [Utterance(audio=str(write_tone(tmp_path / f"u{i}.wav", 0.2 + 0.05 * i)), transcript=en,
                      translation=tr, tgt_lang=lang) for i, (en, tr, lang) in enumerate(rows)]


@pytest.fixture(scope="module")
def prompter(tiny_llm_dir):
    cfg = LLMConfig(model=str(tiny_llm_dir), asr_prompt=list(PARAPHRASES[0]), st_prompt=list(PARAPHRASES[1]),
                    system_prompt=SYSTEM)
    return ChatPrompter(load_tokenizer(cfg), cfg)


def test_collate_shapes_audio_and_cached_features(tmp_path):
    utts = corpus(tmp_path)[:3]
    ds = SpeechDataset(utts)
    batch = collate([ds[0], None, ds[1], ds[2]])
    assert isinstance(batch, Batch) and len(batch) == 3
    S = max(int(round(16000 * (0.2 + 0.05 * i))) for i in range(3))
    assert batch.audio.shape == (3, S) and batch.audio_lengths.shape == (3,)  # (B, S), (B,)
    assert batch.audio_lengths.tolist() == [3200, 4000, 4800] and batch.hidden is None
    assert batch.tasks == ["asr", "st", "asr"] and batch.tgt_langs == [None, "de", None]
    hidden = [{**{k: v for k, v in ds[i].items() if k != "audio"}, "hidden": torch.randn(n, 16)}
              for i, n in enumerate([5, 9, 7])]
    cached = collate(hidden)
    assert cached.hidden.shape == (3, 9, 16) and cached.hidden_lengths.tolist() == [5, 9, 7]  # (B, T, d_enc)
    assert cached.audio is None and cached.hidden[0, 5:].abs().sum() == 0
    assert torch.equal(cached.hidden[2, :7], hidden[2]["hidden"])


def test_from_dict_fills_what_the_model_used_to_assume():
    b = Batch.from_dict({"audio": torch.zeros(2, 10), "audio_lengths": torch.tensor([10, 4]), "unused": 1})
    assert (b.tasks, b.src_langs, b.tgt_langs, b.ids, b.targets) == (["asr"] * 2, ["en"] * 2, [None] * 2, None, None)
    with pytest.raises(ValueError, match="needs audio"):
        Batch.from_dict({"durations": [1.0]})


@pytest.mark.parametrize("training", [True, False], ids=["training", "evaluation"])
@pytest.mark.parametrize("special", [False, True], ids=["plain", "special-tokens"])
def test_collator_token_ids_equal_the_old_path(tmp_path, prompter, training, special):
    utts = corpus(tmp_path)
    ds = SpeechDataset(utts)
    items = [ds[i] for i in range(len(utts))]
    batch = Collator(BatchTokenizer(prompter, seed=3, special_tokens=special, training=training))(items)
    plain = collate(items)
    assert batch.tokens is not None and plain.tokens is None and batch.tokens.training == training
    as_dict = {k: getattr(plain, k) for k in ("ids", "tasks", "src_langs", "tgt_langs", "targets", "transcripts")}
    before, after, targets, sources, missing, aligned = old_path(prompter, as_dict, training, 3, special)
    t = batch.tokens
    assert (t.before_audio, t.after_audio, t.targets) == (before, after, targets)
    assert (t.sources, t.missing_sources, t.transcripts) == (sources, missing, aligned)
    assert missing == [3]  # the French item has no transcript; the blank ASR one counts its target
    if training:  # the paraphrases really are drawn per item (this seed gives more than one)
        assert len({tuple(a) for a, task in zip(t.after_audio, plain.tasks) if task == "asr"}) > 1
    # the chat template, the markers and the end of turn, as the LLM reads the ST item
    tok = prompter.tok
    text = tok.decode(t.before_audio[1] + [prompter.audio_start_id, prompter.audio_end_id] + t.after_audio[1]
                      + t.targets[1])
    variant = "ABC"[prompter.draw_variant("st", utts[1].id, 3)] if training else "A"
    assert text == (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{AUDIO_START}{AUDIO_END}\n"
                    f"To German {variant}.<|im_end|>\n<|im_start|>assistant\nGuten Morgen zusammen!<|im_end|>")


def test_dataloader_workers_tokenise(tmp_path, prompter):
    utts = corpus(tmp_path)
    tokenizer = BatchTokenizer(prompter, seed=0, special_tokens=False, training=True)
    cfg = DataConfig(max_batch_seconds=0.8, max_batch_size=3, num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # huggingface/tokenizers' note about forked workers
        batches = list(make_dataloader(utts, cfg, seed=1, tokenizer=tokenizer))
    assert sum(len(b) for b in batches) == len(utts)
    for b in batches:
        assert b.tokens == tokenizer(b)  # the same ids as tokenising here


def build(tiny_llm_dir, *overrides):
    torch.manual_seed(0)
    cfg = load_config(None, [f"llm.model={tiny_llm_dir}", *TINY_ADAPTER, "adapter.name=cif",
                             f"llm.asr_prompt={list(PARAPHRASES[0])}", f"llm.st_prompt={list(PARAPHRASES[1])}",
                             *overrides])
    return SpeechLLM(cfg, encoder=ToyEncoder().freeze())


def test_model_uses_the_collators_tokens_only_for_its_own_mode(tiny_llm_dir):
    model = build(tiny_llm_dir)
    batch = make_batch([8000, 12000, 9600], ["hello world", "Hallo Welt", "a b c"], tasks=["asr", "st", "asr"],
                       tgt_langs=[None, "de", None], transcripts=["hello world", "hello world", "a b c"])
    for training in (True, False):
        model.train(training)
        own = model.batch_tokenizer(training).add_tokens(batch)
        other = model.batch_tokenizer(not training).add_tokens(batch)
        assert batch.tokens is None  # add_tokens copies
        ref = model(batch)  # tokenised inside, as before the collator did it
        for b in (own, other):
            out = model(b)
            assert torch.equal(out.loss, ref.loss) and out.num_target_tokens == ref.num_target_tokens
        assert model.with_tokens(own) is own and model.with_tokens(other).tokens == own.tokens
        hidden, lengths = model.encode_audio(batch)
        ad = model.adapter.eval()(hidden, lengths)
        inputs, mask, positions, labels = model._sequences(own, ad.embeds, ad.lengths, with_targets=True)
        n = [len(own.tokens.before_audio[i]) + 2 + int(ad.lengths[i]) + len(own.tokens.after_audio[i])
             + len(own.tokens.targets[i]) for i in range(3)]
        assert mask.sum(1).tolist() == n and inputs.shape == (3, max(n), model.audio_markers.shape[1])  # (B, L, d_llm)
        assert labels[labels != IGNORE].tolist() == sum(own.tokens.targets, [])


def test_generate_output_counts_tokens_and_takes_dicts(tiny_llm_dir):
    model = build(tiny_llm_dir).eval()
    batch = make_batch([8000, 16000], ["x", "y"], tasks=["asr", "st"], tgt_langs=[None, "de"])
    out = model.generate_output(batch, max_new_tokens=5)
    assert out.texts == model.generate(batch, max_new_tokens=5)
    assert out.num_tokens == sum(len(x) for x in out.token_ids) and all(len(x) <= 5 for x in out.token_ids)
    assert out.texts == [model.prompter.decode(x) for x in out.token_ids]
    as_dict = {"audio": batch.audio, "audio_lengths": batch.audio_lengths, "tasks": batch.tasks,
               "src_langs": batch.src_langs, "tgt_langs": batch.tgt_langs}
    assert model.generate(as_dict, max_new_tokens=5) == out.texts  # the earlier dict format still works
    assert not hasattr(model, "last_generated_tokens")


def test_pad_right_pads_any_trailing_shape_and_keeps_dtype():
    from speechwire.data.batch import pad_right

    x, lengths = pad_right([torch.ones(3, 2), torch.full((1, 2), 2.0)], value=-1.0)
    assert x.shape == (2, 3, 2) and lengths.tolist() == [3, 1]
    assert x[1, 0].tolist() == [2.0, 2.0] and (x[1, 1:] == -1.0).all()
    ids, n = pad_right([torch.tensor([1, 2]), torch.tensor([3])])
    assert ids.dtype == torch.long and ids.tolist() == [[1, 2], [3, 0]] and n.tolist() == [2, 1]


def test_batch_from_waveforms_takes_lists_arrays_and_tensors_and_names_the_bad_item():
    import numpy as np

    from speechwire.data import Batch

    batch = Batch.from_waveforms([[0.5, 0.25], np.ones(3, dtype=np.float64), torch.zeros(1)], ["asr"] * 3,
                                 ["en"] * 3, [None] * 3)
    assert batch.audio.dtype == torch.float32 and batch.audio.shape == (3, 3)
    assert batch.audio_lengths.tolist() == [2, 3, 1] and batch.audio[0].tolist() == [0.5, 0.25, 0.0]
    assert batch.tasks == ["asr"] * 3 and len(batch) == 3
    with pytest.raises(ValueError, match="audio item 1 is empty"):
        Batch.from_waveforms([np.ones(2), np.zeros(0)], ["asr"] * 2, ["en"] * 2, [None] * 2)
    with pytest.raises(ValueError, match="audio item 0: expected a 1-D mono waveform, got shape \\(2, 5\\)"):
        Batch.from_waveforms([np.ones((2, 5))], ["asr"], ["en"], [None])
    with pytest.raises(ValueError, match="no audio: give at least one waveform"):
        Batch.from_waveforms([], [], [], [])
    with pytest.raises(ValueError, match="got sample_rate=8000"):
        Batch.from_waveforms([np.ones(2)], ["asr"], ["en"], [None], sample_rate=8000)
