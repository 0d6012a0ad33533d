"""Dataset and DataLoader: utterances -> batches of padded 16 kHz waveforms for the model.

Letters: B batch, S samples at 16 kHz. The batch format (what SpeechLLM consumes) is
speechwire.data.batch.Batch: audio (B, S) zero-padded, audio_lengths (B,), and per item the id,
task, languages, target, transcript and duration; with a BatchTokenizer also their token ids.

Audio is decoded (and, with a tokenizer, text tokenised) in DataLoader workers (data.num_workers).
A bad file raises AudioError naming the file and the utterance; with skip_invalid the item is
dropped with a warning, so a batch may be smaller than planned, and it is empty (B = 0) when every
item failed: skip such batches.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from speechwire.audio import SAMPLE_RATE, AudioError, load_audio
from speechwire.data.batch import ITEM_FIELDS, Batch, BatchTokenizer, Collator
from speechwire.data.manifest import Utterance, utterance_duration
from speechwire.data.sampler import DurationBucketSampler, by_duration, fill_batches
from speechwire.schema import DataConfig, ExperimentConfig


class SpeechDataset(Dataset):
    """Utterances -> dicts with the decoded waveform and the utterance's fields.

    Args:
        utts: the utterances (e.g. from load_manifest).
        sample_rate: output rate of the waveforms.
        min_seconds: loaded segments shorter than this are invalid.
        max_seconds: loaded segments longer than this are invalid.
        skip_invalid: return None (and warn) for an invalid item instead of raising.
    """

    def __init__(self, utts: Sequence[Utterance], sample_rate: int = SAMPLE_RATE,
                 min_seconds: float | None = None, max_seconds: float | None = None,
                 skip_invalid: bool = False) -> None:
        self.utts = list(utts)
        self.sample_rate, self.min_seconds, self.max_seconds = sample_rate, min_seconds, max_seconds
        self.skip_invalid = skip_invalid

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        u = self.utts[i]
        try:
            wav = load_audio(u.audio, u.offset, u.duration, self.sample_rate, self.min_seconds, self.max_seconds)
        except AudioError as e:
            msg = f"utterance {u.id!r}: {e}"
            if not self.skip_invalid:
                raise AudioError(msg) from None
            warnings.warn(f"skipping {msg}", stacklevel=2)
            return None
        return {"audio": torch.from_numpy(wav), "duration": len(wav) / self.sample_rate,  # (S,)
                **{k: getattr(u, k) for k in ITEM_FIELDS}}


class SpeechDataLoader(DataLoader):
    """DataLoader over a DurationBucketSampler that counts the batches it delivered, so that
    `state_dict()` is exact even when workers prefetch ahead of the training loop."""

    def __init__(self, dataset: SpeechDataset, batch_sampler: DurationBucketSampler,
                 collate_fn: Collator | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, batch_sampler=batch_sampler, collate_fn=collate_fn or Collator(), **kwargs)
        self._delivered = 0

    @property
    def sampler_(self) -> DurationBucketSampler:
        assert isinstance(self.batch_sampler, DurationBucketSampler)
        return self.batch_sampler

    def __iter__(self) -> Iterator[Batch]:
        self._delivered = self.sampler_._skip  # resumed batches count as delivered
        for batch in super().__iter__():
            self._delivered += 1
            yield batch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.sampler_.epoch:
            self._delivered = 0
        self.sampler_.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state with the number of batches the training loop actually received."""
        return self.sampler_.state_dict(batches_done=self._delivered)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler_.load_state_dict(state)
        self._delivered = int(state["batches_done"])


def filter_by_duration(utts: Sequence[Utterance], min_seconds: float, max_seconds: float) -> list[Utterance]:
    """Keep utterances with min_seconds <= duration <= max_seconds; warn with the dropped count."""
    kept = [u for u in utts if min_seconds <= utterance_duration(u) <= max_seconds]
    if len(kept) < len(utts):
        warnings.warn(f"dropped {len(utts) - len(kept)} of {len(utts)} utterances outside "
                      f"data.min_seconds={min_seconds} .. data.max_seconds={max_seconds}", stacklevel=2)
    return kept


def make_dataloader(utts: Sequence[Utterance], cfg: DataConfig, seed: int, epoch: int = 0,
                    num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                    feature_cache: Any = None, tokenizer: BatchTokenizer | None = None) -> SpeechDataLoader:
    """Build the DataLoader for training (shuffle=True) or evaluation (shuffle=False).

    Utterances outside [cfg.min_seconds, cfg.max_seconds] are dropped with a warning. Task
    weights (cfg.task_weights) apply only when shuffle=True, so evaluation sees each item once.

    Args:
        utts: the utterances.
        cfg: batching, filtering and worker settings.
        seed: base seed of the sampler (epoch e shuffles with seed + e).
        epoch: the epoch to start at (call loader.set_epoch(e) for the next ones).
        num_replicas: distributed world size.
        rank: this process's rank.
        shuffle: shuffle and apply task weights.
        feature_cache: a speechwire.features.FeatureCache: batches carry cached hidden (B, T, d)
            + hidden_lengths instead of audio; the same items per batch (batching uses durations only).
        tokenizer: the model's BatchTokenizer (SpeechLLM.batch_tokenizer): the workers add each
            batch's token ids; None: the model tokenises.

    Returns:
        a SpeechDataLoader yielding Batches (speechwire.data.batch), with
        set_epoch / state_dict / load_state_dict.
    """
    utts = filter_by_duration(utts, cfg.min_seconds, cfg.max_seconds)
    if not utts:
        raise ValueError("no utterance left after the duration filter; check data.min_seconds/max_seconds")
    sampler = DurationBucketSampler(
        [utterance_duration(u) for u in utts], [u.task for u in utts],
        max_batch_seconds=cfg.max_batch_seconds, max_batch_size=cfg.max_batch_size,
        num_buckets=cfg.num_buckets, shuffle=shuffle, seed=seed,
        task_weights=cfg.task_weights if shuffle else None, num_replicas=num_replicas, rank=rank,
    )
    sampler.set_epoch(epoch)
    # its own generator: a new iterator draws its base seed from it, not from the global RNG that
    # dropout draws from (a run resumed mid-epoch would otherwise draw once more than the original)
    kwargs: dict[str, Any] = {"num_workers": cfg.num_workers, "generator": torch.Generator().manual_seed(seed)}
    if cfg.num_workers > 0:
        kwargs.update(persistent_workers=False, prefetch_factor=2, worker_init_fn=_seed_worker)
    return SpeechDataLoader(_dataset(utts, cfg, feature_cache), sampler, Collator(tokenizer), **kwargs)


def eval_loader(utts: Sequence[Utterance], cfg: ExperimentConfig, feature_cache=None,
                tokenizer: BatchTokenizer | None = None) -> tuple[DataLoader, list[list[int]]]:
    """Evaluation batches of eval.batch_size utterances sorted by duration (little padding), from
    the feature cache when one is given, else from the audio, tokenised by `tokenizer` in the
    DataLoader workers (SpeechLLM.batch_tokenizer(training=False)); returns the loader and its batches."""
    utts = list(utts)
    durations = [utterance_duration(u) for u in utts]
    batches = fill_batches(by_duration(durations), durations, max_items=cfg.eval.batch_size)
    return DataLoader(_dataset(utts, cfg.data, feature_cache), batch_sampler=batches, collate_fn=Collator(tokenizer),
                      num_workers=cfg.data.num_workers), batches


def _dataset(utts: list[Utterance], cfg: DataConfig, feature_cache: Any) -> Dataset:
    """Items from the feature cache when one is given, else decoded from the audio."""
    if feature_cache is not None:
        return CachedFeatureDataset(utts, feature_cache)
    return SpeechDataset(utts, cfg.sample_rate, skip_invalid=cfg.skip_invalid)


def _seed_worker(worker_id: int) -> None:
    np.random.seed(torch.initial_seed() % 2**32)


class CachedFeatureDataset(Dataset):
    """Like SpeechDataset, but items carry the cached SFM output "hidden" (T, d) instead of "audio"
    (collate then fills Batch.hidden and hidden_lengths).

    Args:
        utts: the utterances, in the order the sampler indexes them.
        cache: a speechwire.features.FeatureCache (or anything with its `get_or_rebuild(utt)`).
    """

    def __init__(self, utts: Sequence[Utterance], cache) -> None:
        self.utts, self.cache = list(utts), cache

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        u = self.utts[i]
        hidden, samples = self.cache.get_or_rebuild(u)  # a damaged entry is reported and re-encoded
        return {"hidden": hidden, "duration": samples / SAMPLE_RATE, **{k: getattr(u, k) for k in ITEM_FIELDS}}
