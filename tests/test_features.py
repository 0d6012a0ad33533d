"""Frozen-feature cache: hits/misses, atomic + concurrent writes, partial files, cached == audio loss."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest
import torch

from speechwire.config import EncoderConfig, load_config
from speechwire.data import CachedFeatureDataset, load_manifest, make_dataloader
from speechwire.features import FeatureCache
from speechwire.train import train

from helpers import mustc_manifest, write_experiment


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("features")
    return tmp, mustc_manifest(tmp, "train.jsonl", tasks=("asr",))


def _cfg(tmp: Path, manifest: Path, name: str, cache: Path | None = None, dtype: str = "float32", steps: int = 4):
    data = {"feature_cache": str(cache) if cache else None, "feature_cache_dtype": dtype}
    path = write_experiment(tmp, manifest, tmp / name, {"train": {"max_steps": steps, "log_every": 1,
                                                                  "save_every": 0}, "data": data})
    return load_config(path)


def test_hits_misses_and_reuse(corpus):
    tmp, manifest = corpus
    cfg = _cfg(tmp, manifest, "hm", tmp / "cache-hm")
    utts = load_manifest(manifest)
    cache = FeatureCache.for_config(cfg)
    cache.ensure(utts, progress=False)
    assert (cache.stats.hits, cache.stats.misses, cache.stats.writes) == (0, 8, 8)
    assert cache.stats.encoder_batches >= 1
    again = FeatureCache.for_config(cfg)  # a second run over the same audio: all hits, no encoding
    again.ensure(utts, progress=False)
    assert (again.stats.hits, again.stats.misses, again.stats.encoder_batches) == (8, 0, 0)
    other = FeatureCache(cfg.data.feature_cache, EncoderConfig(name=cfg.encoder.name, model=cfg.encoder.model,
                                                               mode="padded"), "float32")
    assert other.dir != cache.dir and len(other.missing(utts)) == 8  # another SFM identity


def test_partial_tmp_and_corrupt_entries_are_never_read(corpus, tmp_path):
    tmp, manifest = corpus
    utts = load_manifest(manifest)[:2]
    cache = FeatureCache(tmp_path, EncoderConfig(name="toy", model="toy"), "float32")
    cache.put(utts[0], torch.ones(5, 3), 1600)
    path = cache.path(cache.key(utts[1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    Path(str(path) + ".123.abcd.tmp").write_bytes(b"half a file")  # a killed writer's leftover
    assert cache.get(utts[1]) is None and cache.missing(utts) == [utts[1]]
    path.write_bytes(b"\x00" * 10)  # a corrupt final entry (e.g. a foreign copy)
    assert cache.get(utts[1]) is None and cache.stats.corrupt == 1
    assert cache.missing(utts, verify=True) == [utts[1]]
    hidden, samples = cache.get(utts[0])
    assert torch.equal(hidden, torch.ones(5, 3)) and samples == 1600


def _writer(args):
    root, manifest, seed = args
    utts = load_manifest(manifest)
    cache = FeatureCache(root, EncoderConfig(name="toy", model="toy"), "float32")
    for rep in range(3):
        for i, u in enumerate(utts):
            cache.put(u, torch.full((4 + i, 3), float(i)), 100 * i)
    return cache.stats.writes


def test_concurrent_writers_leave_complete_entries(corpus, tmp_path):
    _, manifest = corpus
    with mp.get_context("spawn").Pool(3) as pool:
        writes = pool.map(_writer, [(str(tmp_path), str(manifest), s) for s in range(3)])
    assert writes == [24, 24, 24]
    cache = FeatureCache(tmp_path, EncoderConfig(name="toy", model="toy"), "float32")
    for i, u in enumerate(load_manifest(manifest)):
        hidden, samples = cache.get(u)
        assert hidden.shape == (4 + i, 3) and float(hidden[0, 0]) == i and samples == 100 * i
    assert not list(tmp_path.rglob("*.tmp"))


def test_cached_batches_hold_the_same_items(corpus):
    tmp, manifest = corpus
    cfg = _cfg(tmp, manifest, "items", tmp / "cache-items")
    utts = load_manifest(manifest)
    cache = FeatureCache.for_config(cfg)
    cache.ensure(utts, progress=False)
    audio = [b.ids for b in make_dataloader(utts, cfg.data, seed=0)]
    cached = list(make_dataloader(utts, cfg.data, seed=0, feature_cache=cache))
    assert audio == [b.ids for b in cached]
    b = cached[0]
    assert b.hidden.shape[:2] == (len(b.ids), int(b.hidden_lengths.max())) and b.audio is None
    assert isinstance(CachedFeatureDataset(utts, cache)[0]["duration"], float)


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float16", 2e-3)])
def test_training_from_cache_gives_the_audio_loss(corpus, dtype, tol):
    tmp, manifest = corpus
    ref = tmp / "audio-ref"
    if not (ref / "log.jsonl").exists():
        train(_cfg(tmp, manifest, "audio-ref"), progress=False)
    summary = train(_cfg(tmp, manifest, f"cached-{dtype}", tmp / f"cache-{dtype}", dtype), progress=False)
    assert summary["feature_cache"]["misses"] == 8
    a, c = _losses(ref), _losses(tmp / f"cached-{dtype}")
    assert len(a) == len(c) == 4
    assert a == pytest.approx(c, rel=tol, abs=tol)
