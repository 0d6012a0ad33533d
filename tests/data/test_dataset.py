"""SpeechDataset, collate and make_dataloader: batch format, worker errors, skipping, resume."""

from __future__ import annotations

import pytest
import torch

from speechwire.audio import AudioError
from speechwire.config import DataConfig
from speechwire.data import Batch, SpeechDataset, Utterance, collate, make_dataloader

from helpers import write_tone


def corpus(tmp_path, n=12) -> list[Utterance]:
    utts = []
    for i in range(n):
        path = write_tone(tmp_path / f"u{i}.wav", 0.2 + 0.1 * (i % 4), sr=8000 if i % 2 else 16000)
        st = i % 3 == 0
        utts.append(Utterance(audio=str(path), transcript=f"text {i}", translation=f"Text {i}" if st else None,
                              tgt_lang="de" if st else None, duration=0.2 + 0.1 * (i % 4)))
    return utts


def test_collate_batch_format(tmp_path):
    utts = corpus(tmp_path, 3)
    ds = SpeechDataset(utts)
    batch = collate([ds[0], ds[1]])
    assert isinstance(batch, Batch) and len(batch) == 2
    assert batch.audio.dtype == torch.float32 and batch.audio.shape == (2, 4800)
    assert batch.audio_lengths.dtype == torch.long and batch.audio_lengths.tolist() == [3200, 4800]
    assert batch.audio[0, 3200:].abs().sum() == 0 and batch.audio[0, :3200].abs().sum() > 0
    assert batch.hidden is None and batch.hidden_lengths is None and batch.tokens is None
    assert batch.ids == ["u0_0_de", "u1_0"]
    assert batch.tasks == ["st", "asr"] and batch.src_langs == ["en", "en"]
    assert batch.tgt_langs == ["de", None]
    assert batch.targets == ["Text 0", "text 1"] and batch.transcripts == ["text 0", "text 1"]
    assert batch.durations == pytest.approx([0.2, 0.3])
    empty = collate([None])
    assert empty.audio.shape == (0, 0) and empty.ids == [] and len(empty) == 0


def test_dataloader_with_workers_covers_every_utterance_once(tmp_path):
    utts = corpus(tmp_path)
    cfg = DataConfig(max_batch_seconds=1.0, max_batch_size=4, num_buckets=2, num_workers=2, min_seconds=0.1)
    loader = make_dataloader(utts, cfg, seed=0)
    ids = []
    for batch in loader:
        assert sum(batch.durations) <= 1.0 + 1e-6 and len(batch.ids) <= 4
        assert batch.audio.shape[1] == int(batch.audio_lengths.max())
        ids += batch.ids
    assert sorted(ids) == sorted(u.id for u in utts)


def test_worker_error_names_the_file(tmp_path):
    utts = corpus(tmp_path, 4)
    (tmp_path / "u2.wav").write_bytes(b"not audio at all" * 50)
    loader = make_dataloader(utts, DataConfig(num_workers=1), seed=0)
    with pytest.raises(AudioError, match=r"utterance 'u2_0': .*u2\.wav: cannot decode audio"):
        list(loader)


def test_skip_invalid_drops_item_with_warning(tmp_path):
    utts = corpus(tmp_path, 4)
    (tmp_path / "u1.wav").write_bytes(b"")
    cfg = DataConfig(skip_invalid=True, num_workers=0)
    with pytest.warns(UserWarning, match=r"skipping utterance 'u1_0'.*u1\.wav"):
        ids = [i for b in make_dataloader(utts, cfg, seed=0, shuffle=False) for i in b.ids]
    assert sorted(ids) == sorted(u.id for u in utts if u.id != "u1_0")
    cfg.num_workers = 1
    ids = [i for b in make_dataloader(utts, cfg, seed=0) for i in b.ids]
    assert "u1_0" not in ids and len(ids) == 3


def test_duration_filter_warns(tmp_path):
    utts = corpus(tmp_path, 4)
    with pytest.warns(UserWarning, match=r"dropped 2 of 4 utterances outside"):
        loader = make_dataloader(utts, DataConfig(min_seconds=0.25, max_seconds=0.45), seed=0)
    assert sorted(i for b in loader for i in b.ids) == ["u1_0", "u2_0"]


def test_loader_resume_with_prefetching_workers(tmp_path):
    utts = corpus(tmp_path)
    cfg = DataConfig(max_batch_seconds=0.7, max_batch_size=3, num_workers=2)
    full = [b.ids for b in make_dataloader(utts, cfg, seed=5, epoch=2)]
    loader = make_dataloader(utts, cfg, seed=5, epoch=2)
    it = iter(loader)
    head = [next(it).ids for _ in range(2)]
    state = loader.state_dict()
    assert state["batches_done"] == 2 and state["epoch"] == 2
    del it
    resumed = make_dataloader(utts, cfg, seed=5)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    assert head + [b.ids for b in resumed] == full
