"""Frozen-feature cache: each utterance goes through the frozen SFM once, every run reuses it.

The SFM (speech foundation model) never trains, so its output for an utterance depends only on
(SFM identity, audio). A grid of A adapters x L LLMs thus needs one encoder pass per utterance per
SFM instead of A x L x epochs. Letters: T encoder frames, d encoder width.

    cache = FeatureCache.for_config(cfg)             # data.feature_cache, data.feature_cache_dtype
    cache.build(encoder, cache.missing(utts))        # encode what is missing, in duration-sorted batches
    ds = CachedFeatureDataset(utts, cache)           # (speechwire.data) items carry "hidden" (T, d) instead of "audio"

Layout (one safetensors file per utterance):

    <root>/<encoder name>-<sha256(SFM identity)[:16]>/sfm.json            identity + dim, frame_rate
    <root>/<...>/<key[:2]>/<key>.safetensors                               "hidden" (T, d); metadata
                                                                           key, frames, samples

- SFM identity = encoder name, model id, mode, weight dtype, cache dtype (+ size/mtime of the
  weight files when the model is a local folder, so re-written weights never hit stale entries).
- Utterance key = sha256(sha256 of the audio file bytes, offset, duration, sample rate): the same
  audio under another path or id hits; an edited file misses.
- Writes go to a unique temp file and `os.replace` into place: concurrent writers of one entry
  both leave a complete file, a killed writer leaves only a `*.tmp` that readers never open.
  Building holds an flock on `<sfm folder>/.lock`, so two processes sharing a cache (grid workers)
  encode each utterance once: the second finds the first one's entries.
- Readers verify the safetensors header, the stored key, the shape and a sha256 of the tensor
  bytes (entries written before the checksum existed are checked without it). A damaged entry
  (bit flip, truncation) counts as `corrupt`, is reported in a warning that names it, and is
  re-encoded on the spot by `get_or_rebuild` (training and evaluation read through it).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from speechwire.data import SpeechDataset, collate
from speechwire.data.manifest import Utterance, utterance_duration
from speechwire.data.sampler import by_duration, fill_batches
from speechwire.encoders import build_encoder
from speechwire.encoders.interface import SAMPLE_RATE, EncoderOutput, SpeechEncoder
from speechwire.errors import DamagedFileError
from speechwire.files import fault_point, read_safetensors, read_text, safetensors_bytes, try_lock, write_atomic
from speechwire.schema import DTYPES, EncoderConfig, ExperimentConfig, torch_dtype

CACHE_FORMAT = 1  # part of the SFM key: bump when the file layout changes


@lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, memoised per (path, size, mtime) so talk-level files hash once."""
    st = os.stat(path)
    return _file_digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def utterance_key(u: Utterance, sample_rate: int = SAMPLE_RATE) -> str:
    """Content key of an utterance's audio: file hash + segment (offset, duration) + sample rate."""
    dur = "end" if u.duration is None else f"{u.duration:.6f}"
    raw = f"{file_digest(u.audio)}|{u.offset:.6f}|{dur}|{sample_rate}"
    return hashlib.sha256(raw.encode()).hexdigest()


def sfm_identity(enc: EncoderConfig, cache_dtype: str) -> dict[str, Any]:
    """What makes two encoders' outputs interchangeable (see the module docstring)."""
    ident: dict[str, Any] = {"format": CACHE_FORMAT, "name": enc.name, "model": enc.model, "mode": enc.mode,
                             "dtype": enc.dtype, "cache_dtype": cache_dtype}
    folder = Path(enc.model).expanduser()
    if folder.is_dir():
        ident["model"] = str(folder.resolve())
        ident["files"] = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    return ident


@dataclass
class CacheStats:
    hits: int = 0  # utterances found in the cache when a run planned its encoding
    misses: int = 0  # utterances that had to be encoded
    reads: int = 0  # feature files loaded (every epoch, every run)
    writes: int = 0
    corrupt: int = 0  # entries that failed verification
    encoder_batches: int = 0  # SFM forward passes made by build()
    encoder_seconds: float = 0.0
    audio_seconds: float = 0.0  # audio encoded by build()


class CachedEncoder(SpeechEncoder):
    """Stand-in for the SFM when every item comes from the cache: knows dim and frame rate, holds
    no weights, and refuses audio (so a cache gap is loud, never silently re-encoded)."""

    def __init__(self, dim: int, frame_rate: float, name: str, model_id: str) -> None:
        super().__init__()
        self.dim, self.frame_rate, self.name, self.model_id = dim, frame_rate, name, model_id

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        raise RuntimeError(f"encoder {self.model_id!r} is served from the feature cache, which has no entry for "
                           "this audio; run `speechwire cache build CONFIG` or unset data.feature_cache")


class FeatureCache:
    """On-disk SFM outputs for one SFM identity.

    Args:
        root: the cache folder (shared by all SFMs; each gets a subfolder).
        encoder: the SFM's config (identity).
        cache_dtype: float32 | float16 | bfloat16 on disk.
    """

    def __init__(self, root: str | Path, encoder: EncoderConfig, cache_dtype: str = "float16") -> None:
        if cache_dtype not in DTYPES:
            raise ValueError(f"data.feature_cache_dtype={cache_dtype!r} must be one of {', '.join(DTYPES)}")
        self.identity = sfm_identity(encoder, cache_dtype)
        digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root).expanduser() / f"{encoder.name}-{digest}"
        self.encoder_cfg, self.dtype = encoder, torch_dtype(cache_dtype)
        self.stats = CacheStats()
        self._keys: dict[tuple, str] = {}
        self._rebuild_encoder: SpeechEncoder | None = None

    @classmethod
    def for_config(cls, cfg: ExperimentConfig) -> "FeatureCache":
        if not cfg.data.feature_cache:
            raise ValueError("data.feature_cache is not set; pass data.feature_cache=path/to/cache")
        return cls(cfg.data.feature_cache, cfg.encoder, cfg.data.feature_cache_dtype)

    # --- entries ------------------------------------------------------------------------------

    def key(self, u: Utterance) -> str:
        k = (u.audio, u.offset, u.duration)
        if k not in self._keys:
            self._keys[k] = utterance_key(u)
        return self._keys[k]

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    def get(self, u: Utterance, warn: bool = True) -> tuple[torch.Tensor, int] | None:
        """The cached (T, d) features and sample count of `u`, or None: missing, or damaged (then
        counted in stats.corrupt and, with warn, reported in a warning naming the file)."""
        key = self.key(u)
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            tensors, meta = read_safetensors(path, "feature-cache entry")  # checks the sha256 when stored
            hidden = tensors.get("hidden")  # (T, d)
            if meta.get("key") != key:
                raise DamagedFileError(f"{path}: the key stored inside ({str(meta.get('key'))[:12]}...) is not the "
                                       "file's name")
            if hidden is None or hidden.dim() != 2 or str(hidden.shape[0]) != meta.get("frames"):
                raise DamagedFileError(f"{path}: features shape {None if hidden is None else tuple(hidden.shape)} "
                                       f"does not match frames={meta.get('frames')}")
            samples = int(meta["samples"])
        except (DamagedFileError, OSError, KeyError, ValueError) as e:
            self.stats.corrupt += 1
            if warn:
                reason = " ".join(str(e).replace(f"{path}: ", "").split())
                warnings.warn(f"feature cache: entry {path} (utterance {u.id!r}) is damaged ({reason}); it is not "
                              "used and is re-encoded", stacklevel=2)
            return None
        self.stats.reads += 1
        return hidden, samples

    def get_or_rebuild(self, u: Utterance) -> tuple[torch.Tensor, int]:
        """`get`, re-encoding a missing or damaged entry with the SFM (loaded on first need, on CPU)."""
        got = self.get(u)
        if got is not None:
            return got
        if self._rebuild_encoder is None:
            self._rebuild_encoder = build_encoder(self.encoder_cfg)
        self.build(self._rebuild_encoder, [u], progress=False)
        got = self.get(u)
        if got is None:
            raise DamagedFileError(f"{self.path(self.key(u))}: feature-cache entry of {u.id!r} is still unreadable "
                                   "after re-encoding it; check the disk (`speechwire cache build` rewrites it)")
        return got

    def put(self, u: Utterance, hidden: torch.Tensor, num_samples: int) -> Path:
        """Store (T, d) features atomically (temp file + os.replace), with a sha256 of their bytes."""
        key = self.key(u)
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"key": key, "frames": str(hidden.shape[0]), "samples": str(int(num_samples)), "id": u.id}
        data = safetensors_bytes({"hidden": hidden.detach().to("cpu", self.dtype)}, meta)
        write_atomic(path, data, f"feature-cache entry of utterance {u.id!r}")
        fault_point("cache.after-put")
        self.stats.writes += 1
        return path

    def locked(self) -> AbstractContextManager[bool]:
        """Exclusive build lock of this SFM's folder (held by one process at a time; freed if it dies)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        return try_lock(self.dir / ".lock", block=True)

    def missing(self, utts: Sequence[Utterance], verify: bool = False) -> list[Utterance]:
        """Utterances without an entry (with verify=True also those whose entry fails to load)."""
        first: dict[str, Utterance] = {}  # each key's first utterance, in input order
        for u in utts:
            first.setdefault(self.key(u), u)
        return [u for key, u in first.items() if not self.path(key).is_file() or (verify and self.get(u) is None)]

    # --- SFM metadata -------------------------------------------------------------------------

    def write_meta(self, encoder: SpeechEncoder) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = {**self.identity, "dim": int(encoder.dim), "frame_rate": float(encoder.frame_rate)}
        write_atomic(self.dir / "sfm.json", json.dumps(meta, indent=2), "feature-cache SFM metadata")

    def read_meta(self) -> dict[str, Any] | None:
        """sfm.json (dim, frame rate), or None when missing or damaged (the next build rewrites it)."""
        try:
            meta = json.loads(read_text(self.dir / "sfm.json", "feature-cache SFM metadata"))
            return meta if isinstance(meta.get("dim"), int) and isinstance(meta.get("frame_rate"), float) else None
        except (OSError, ValueError, AttributeError):
            return None

    def stub_encoder(self) -> CachedEncoder:
        meta = self.read_meta()
        if meta is None:
            raise FileNotFoundError(f"{self.dir / 'sfm.json'}: feature cache has no (readable) SFM metadata; "
                                    "run `speechwire cache build CONFIG`")
        return CachedEncoder(meta["dim"], meta["frame_rate"], self.encoder_cfg.name, self.encoder_cfg.model)

    # --- precompute ---------------------------------------------------------------------------

    def build(self, encoder: SpeechEncoder, utts: Sequence[Utterance], max_batch_seconds: float = 160.0,
              max_batch_size: int = 32, num_workers: int = 0, progress: bool = True, store: bool = True) -> CacheStats:
        """Encode `utts` (typically `missing(...)`) in duration-sorted batches and store them.

        Args:
            encoder: the frozen SFM (its device is used).
            utts: utterances to encode.
            max_batch_seconds, max_batch_size: batch limits (sorted by duration: little padding).
            num_workers: DataLoader workers decoding audio.
            progress: show a tqdm bar.
            store: False only times the encoder (the grid's real-time-factor probe) and writes nothing.

        Returns:
            the cache's running stats (misses/writes/encoder_batches updated).
        """
        if store:
            self.write_meta(encoder)
        utts = list(utts)
        self.stats.misses += len(utts) if store else 0
        if not utts:
            return self.stats
        durations = [utterance_duration(u) for u in utts]
        batches = fill_batches(by_duration(durations), durations, max_batch_seconds, max_batch_size)
        loader = DataLoader(SpeechDataset(utts), batch_sampler=batches, collate_fn=collate, num_workers=num_workers)
        device = next(encoder.parameters(), torch.empty(0)).device
        bar = tqdm(loader, total=len(batches), desc=f"cache {self.encoder_cfg.name}", disable=not progress,
                   dynamic_ncols=True)
        for idx, batch in zip(batches, bar):
            t0 = time.perf_counter()
            with torch.no_grad():
                out = encoder(batch.audio.to(device), batch.audio_lengths.to(device))  # (B, T, d)
            self.stats.encoder_seconds += time.perf_counter() - t0
            self.stats.encoder_batches += 1
            self.stats.audio_seconds += float(batch.audio_lengths.sum()) / SAMPLE_RATE
            for b, i in enumerate(idx if store else []):
                self.put(utts[i], out.hidden[b, : int(out.lengths[b])], int(batch.audio_lengths[b]))
        return self.stats

    def ensure(self, utts: Sequence[Utterance], encoder: SpeechEncoder | None = None,
               device: torch.device | str = "cpu", progress: bool = True, **build_kw: Any) -> CacheStats:
        """Count hits, encode the misses (loading the SFM only when there are any). Holds the build
        lock: a process sharing the cache waits, then finds these entries written."""
        with self.locked():
            todo = self.missing(utts)
            self.stats.hits += len({self.key(u) for u in utts}) - len(todo)  # unique utterances found
            if todo or self.read_meta() is None:
                if encoder is None:
                    encoder = build_encoder(self.encoder_cfg).to(device)
                self.build(encoder, todo, progress=progress, **build_kw)
        return self.stats

    def stats_dict(self) -> dict[str, Any]:
        s = self.stats
        return {**asdict(s), "encoder_seconds": round(s.encoder_seconds, 3), "audio_seconds": round(s.audio_seconds, 3),
                "encoder_rtf": round(s.encoder_seconds / s.audio_seconds, 5) if s.audio_seconds else None, "dir": str(self.dir)}


def prepare_feature_cache(cfg: ExperimentConfig, utts: Sequence[Utterance], device: torch.device | str = "cpu",
                          is_main: bool = True, barrier: Any = None, progress: bool = True,
                          ) -> tuple[FeatureCache, CachedEncoder]:
    """Fill the cache for `utts` (main process only; others wait at `barrier`) and return it with a
    weightless stand-in encoder for the model (so a fully cached run never loads the SFM)."""
    cache = FeatureCache.for_config(cfg)
    if is_main:
        cache.ensure(utts, device=device, progress=progress, max_batch_seconds=cfg.data.max_batch_seconds,
                     max_batch_size=cfg.data.max_batch_size, num_workers=cfg.data.num_workers)
    if barrier is not None:
        barrier()
    return cache, cache.stub_encoder()
