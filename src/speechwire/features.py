"""Frozen-feature cache: each utterance goes through the frozen SFM once, every run reuses it.

The SFM (speech foundation model) never trains, so its output for an utterance depends only on
(SFM identity, audio). A grid of A adapters x L LLMs thus needs one encoder pass per utterance per
SFM instead of A x L x epochs. Letters: T encoder frames, d encoder width.

    cache = FeatureCache.for_config(cfg)             # data.feature_cache, data.feature_cache_dtype
    cache.build(encoder, cache.missing(utts))        # encode what is missing, in duration-sorted batches
    ds = CachedFeatureDataset(utts, cache)           # items carry "hidden" (T, d) instead of "audio"

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
- Readers verify (safetensors header, stored key, shape); a bad entry counts as `corrupt`, is a
  miss for `missing(verify=True)`, and is rewritten by the next build.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .config import EncoderConfig, ExperimentConfig
from .data.manifest import Utterance, utterance_duration
from .encoders.interface import SAMPLE_RATE, EncoderOutput, SpeechEncoder

CACHE_FORMAT = 1  # part of the SFM key: bump when the file layout changes
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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
        if cache_dtype not in TORCH_DTYPES:
            raise ValueError(f"data.feature_cache_dtype={cache_dtype!r} must be one of {sorted(TORCH_DTYPES)}")
        self.identity = sfm_identity(encoder, cache_dtype)
        digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root).expanduser() / f"{encoder.name}-{digest}"
        self.encoder_cfg, self.dtype = encoder, TORCH_DTYPES[cache_dtype]
        self.stats = CacheStats()
        self._keys: dict[tuple, str] = {}

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

    def get(self, u: Utterance) -> tuple[torch.Tensor, int] | None:
        """The cached (T, d) features and sample count of `u`, or None (missing or failed verification)."""
        from safetensors import safe_open

        key = self.key(u)
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                hidden = f.get_tensor("hidden")  # (T, d)
            ok = meta.get("key") == key and hidden.dim() == 2 and hidden.shape[0] == int(meta.get("frames", -1))
        except Exception:  # truncated or foreign file
            ok = False
        if not ok:
            self.stats.corrupt += 1
            return None
        self.stats.reads += 1
        return hidden, int(meta["samples"])

    def put(self, u: Utterance, hidden: torch.Tensor, num_samples: int) -> Path:
        """Store (T, d) features atomically (temp file + os.replace)."""
        from safetensors.torch import save_file

        key = self.key(u)
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        meta = {"key": key, "frames": str(hidden.shape[0]), "samples": str(int(num_samples)), "id": u.id}
        try:
            save_file({"hidden": hidden.detach().to("cpu", self.dtype).contiguous()}, str(tmp), metadata=meta)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.stats.writes += 1
        return path

    def missing(self, utts: Sequence[Utterance], verify: bool = False) -> list[Utterance]:
        """Utterances without an entry (with verify=True also those whose entry fails to load)."""
        out, seen = [], set()
        for u in utts:
            key = self.key(u)
            if key in seen:
                continue
            seen.add(key)
            if not self.path(key).is_file() or (verify and self.get(u) is None):
                out.append(u)
        return out

    # --- SFM metadata -------------------------------------------------------------------------

    def write_meta(self, encoder: SpeechEncoder) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = {**self.identity, "dim": int(encoder.dim), "frame_rate": float(encoder.frame_rate)}
        tmp = self.dir / f"sfm.json.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, self.dir / "sfm.json")

    def stub_encoder(self) -> CachedEncoder:
        meta_path = self.dir / "sfm.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: feature cache has no SFM metadata; run `speechwire cache build CONFIG`")
        meta = json.loads(meta_path.read_text())
        return CachedEncoder(meta["dim"], meta["frame_rate"], self.encoder_cfg.name, self.encoder_cfg.model)

    # --- precompute ---------------------------------------------------------------------------

    def build(self, encoder: SpeechEncoder, utts: Sequence[Utterance], max_batch_seconds: float = 160.0,
              max_batch_size: int = 32, num_workers: int = 0, progress: bool = True) -> CacheStats:
        """Encode `utts` (typically `missing(...)`) in duration-sorted batches and store them.

        Args:
            encoder: the frozen SFM (its device is used).
            utts: utterances to encode.
            max_batch_seconds, max_batch_size: batch limits (sorted by duration: little padding).
            num_workers: DataLoader workers decoding audio.
            progress: show a tqdm bar.

        Returns:
            the cache's running stats (misses/writes/encoder_batches updated).
        """
        from .data.dataset import SpeechDataset, collate

        self.write_meta(encoder)
        utts = list(utts)
        self.stats.misses += len(utts)
        if not utts:
            return self.stats
        order = sorted(range(len(utts)), key=lambda i: utterance_duration(utts[i]))
        batches, cur, secs = [], [], 0.0
        for i in order:
            d = utterance_duration(utts[i])
            if cur and (secs + d > max_batch_seconds or len(cur) >= max_batch_size):
                batches.append(cur)
                cur, secs = [], 0.0
            cur.append(i)
            secs += d
        batches.append(cur)
        loader = DataLoader(SpeechDataset(utts), batch_sampler=batches, collate_fn=collate, num_workers=num_workers)
        device = next(encoder.parameters(), torch.empty(0)).device
        bar = tqdm(loader, total=len(batches), desc=f"cache {self.encoder_cfg.name}", disable=not progress,
                   dynamic_ncols=True)
        for idx, batch in zip(batches, bar):
            t0 = time.perf_counter()
            with torch.no_grad():
                out = encoder(batch["audio"].to(device), batch["audio_lengths"].to(device))  # (B, T, d)
            self.stats.encoder_seconds += time.perf_counter() - t0
            self.stats.encoder_batches += 1
            self.stats.audio_seconds += float(batch["audio_lengths"].sum()) / SAMPLE_RATE
            for b, i in enumerate(idx):
                n = int(out.lengths[b])
                self.put(utts[i], out.hidden[b, :n], int(batch["audio_lengths"][b]))
        return self.stats

    def ensure(self, utts: Sequence[Utterance], encoder: SpeechEncoder | None = None,
               device: torch.device | str = "cpu", progress: bool = True, **build_kw: Any) -> CacheStats:
        """Count hits, encode the misses (loading the SFM only when there are any)."""
        todo = self.missing(utts)
        unique = len({self.key(u) for u in utts})
        self.stats.hits += unique - len(todo)
        if todo or not (self.dir / "sfm.json").is_file():
            if encoder is None:
                from .encoders import build_encoder

                encoder = build_encoder(self.encoder_cfg).to(device)
            self.build(encoder, todo, progress=progress, **build_kw)
        return self.stats

    def stats_dict(self) -> dict[str, Any]:
        s = asdict(self.stats)
        s["encoder_seconds"] = round(s["encoder_seconds"], 3)
        s["audio_seconds"] = round(s["audio_seconds"], 3)
        s["encoder_rtf"] = round(self.stats.encoder_seconds / self.stats.audio_seconds, 5) if self.stats.audio_seconds else None
        s["dir"] = str(self.dir)
        return s


class CachedFeatureDataset(Dataset):
    """Like SpeechDataset, but items carry the cached SFM output "hidden" (T, d) instead of "audio"."""

    def __init__(self, utts: Sequence[Utterance], cache: FeatureCache) -> None:
        self.utts, self.cache = list(utts), cache

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        u = self.utts[i]
        got = self.cache.get(u)
        if got is None:
            raise RuntimeError(f"utterance {u.id!r} ({u.audio}): no valid entry in the feature cache {self.cache.dir}; "
                               "run `speechwire cache build CONFIG` (it rewrites bad entries) or unset data.feature_cache")
        hidden, samples = got
        return {"hidden": hidden, "id": u.id, "task": u.task, "src_lang": u.src_lang, "tgt_lang": u.tgt_lang,
                "target": u.target, "transcript": u.transcript, "duration": samples / SAMPLE_RATE}


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
