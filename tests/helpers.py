"""Shared helpers for the tests (fixtures live in conftest.py): import them with `from helpers import ...`
(pytest puts tests/ on sys.path, beside the rootdir conftest).

Sections, in reading order:
- audio files: tones written to disk; espeak-ng speech separated by known pauses (long-form, serving);
  skip marks for the `speechwire data synth` system packages
- a toy SFM and model batches: `ToyEncoder`, `TINY_ADAPTER`, `make_batch`, `select`
- adapters alone: tiny seeded configs, encoder frames with garbage padding, CIF/CTC targets
- a tiny experiment on disk: a MuST-C-layout corpus, its manifest, tiny Whisper + tiny LLM + YAML
- faults: a tiny trained run, the CLI's verdict on a call, an injected full disk, and warm forked
  processes to SIGKILL at fault points (`Forker`)

Adapter dims: d_enc 16, hidden 32, 2 layers, 4 heads, FFN 64, d_llm 24, vocab 40 (blank = pad = 0).
"""

from __future__ import annotations

import dataclasses
import errno
import fnmatch
import io
import json
import os
import re
import select as io_select  # the stdlib module; `select` below is the sub-batch helper
import shutil
import subprocess
import sys
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
import yaml

from speechwire.adapters import Adapter, AdapterContext, AdapterTargets, build_adapter
from speechwire.config import AdapterConfig
from speechwire.data import Batch
from speechwire.data.synth import sources as synth_sources
from speechwire.encoders.interface import EncoderOutput, SpeechEncoder, check_waveforms
from speechwire.errors import BUG_HINT, USER_ERROR, explain
from speechwire.testing import save_tiny_llm, save_tiny_whisper

# --- audio files ----------------------------------------------------------------------------------

def tone(seconds: float, sr: int = 16000, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, 1) if channels > 1 else x


def write_tone(path: Path, seconds: float, sr: int = 16000, freq: float = 440.0, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, sr, freq), sr, **kw)
    return path


SR = 16000
SPOKEN_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back when you get this message.",
    "It is going to rain again tomorrow afternoon.",
    "We need three more chairs for the meeting room.",
]


@lru_cache(maxsize=None)
def espeak(text: str) -> np.ndarray:
    """`text` spoken by espeak-ng at 16 kHz (deterministic); skips the test when it is missing."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (scripts/install_system_deps.sh installs it)")
    out = subprocess.run([exe, "--stdout", "-v", "en-us", "-s", "160", text], check=True, capture_output=True).stdout
    wav, sr = sf.read(io.BytesIO(out), dtype="float32")
    wav = soxr.resample(wav, sr, SR).astype(np.float32)
    loud = np.flatnonzero(np.abs(wav) > 0.01)
    return wav[loud[0]: loud[-1] + 1]  # trimmed: spans below are the speech itself


def speech_with_pauses(pauses: list[float], lead: float = 0.5) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Sentences separated by `pauses` seconds of near-silence (faint noise).

    Returns:
        the waveform (S,) at 16 kHz and each sentence's (start, end) in seconds.
    """
    rng = np.random.default_rng(0)
    parts, spans, t = [np.zeros(int(lead * SR), np.float32)], [], lead
    for i, pause in enumerate([*pauses, lead]):
        x = espeak(SPOKEN_SENTENCES[i % len(SPOKEN_SENTENCES)])
        spans.append((t, t + len(x) / SR))
        parts += [x, np.zeros(int(pause * SR), np.float32)]
        t += len(x) / SR + pause
    wav = np.concatenate(parts)
    return (wav + 1e-4 * rng.standard_normal(len(wav))).astype(np.float32), spans


needs_synth = pytest.mark.skipif(
    not (shutil.which("espeak-ng") is not None and synth_sources.DING_PATH.is_file()),
    reason="espeak-ng or trans-de-en missing: run scripts/install_system_deps.sh as root",
)
needs_asterisk = pytest.mark.skipif(
    not (synth_sources.ASTERISK_SOUNDS_DIR.is_dir() and synth_sources.ASTERISK_TRANSCRIPTS.is_file()),
    reason="asterisk-core-sounds-en(-wav) missing: run install_system_deps.sh",
)


# --- a toy SFM and model batches ------------------------------------------------------------------

class ToyEncoder(SpeechEncoder):
    """A fast stand-in SFM: 20 ms frames (320 samples) -> Linear -> d=16. Frozen like real ones."""

    dim = 16
    frame_rate = 50.0
    min_samples = 320
    name = "toy"
    model_id = "toy"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Linear(320, self.dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.dim, 320, generator=g) * 0.1)
            self.proj.bias.zero_()

    def output_length(self, num_samples: torch.Tensor) -> torch.Tensor:
        return num_samples // 320

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        check_waveforms(waveforms, lengths, self.min_samples, 30 * 16000, "toy encoder")
        B, S = waveforms.shape
        T = S // 320
        x = self.proj(waveforms[:, : T * 320].reshape(B, T, 320))  # (B, T, d)
        out_lengths = self.output_length(lengths)
        valid = torch.arange(T)[None, :] < out_lengths[:, None]
        return EncoderOutput(x * valid[..., None], out_lengths)


TINY_ADAPTER = ["adapter.hidden_size=32", "adapter.num_layers=1", "adapter.num_heads=4",
                "adapter.ffn_size=64", "adapter.dropout=0.0", "adapter.qformer_layers=1"]


def make_batch(lengths, texts, tasks=None, tgt_langs=None, seed=0, transcripts=None) -> Batch:
    """A Batch of random audio (seeded) with the given texts; no token ids (the model makes them)."""
    g = torch.Generator().manual_seed(seed)
    audio = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        audio[i, :n] = torch.randn(n, generator=g) * 0.3
    B = len(lengths)
    return Batch(audio=audio, audio_lengths=torch.tensor(lengths), targets=list(texts),
                 transcripts=list(transcripts or texts), tasks=list(tasks or ["asr"] * B),
                 src_langs=["en"] * B, tgt_langs=list(tgt_langs or [None] * B), ids=[str(i) for i in range(B)])


def select(batch: Batch, idx: list[int]) -> Batch:
    """Sub-batch of items `idx`, re-padded to their own longest audio (token ids dropped)."""
    n = int(batch.audio_lengths[idx].max())
    out = {}
    for f in dataclasses.fields(batch):
        v = getattr(batch, f.name)
        if v is None or f.name == "tokens":
            continue
        if f.name == "audio":
            out[f.name] = v[idx][:, :n]
        elif torch.is_tensor(v):
            out[f.name] = v[idx]
        else:
            out[f.name] = [v[i] for i in idx]
    return Batch(**out)


# --- adapters alone -------------------------------------------------------------------------------

D_ENC, D_LLM, VOCAB, PAD = 16, 24, 40, 0


def tiny_adapter_cfg(name: str, **kw) -> AdapterConfig:
    base = dict(name=name, hidden_size=32, num_layers=2, num_heads=4, ffn_size=64, qformer_layers=2, dropout=0.0)
    return AdapterConfig(**{**base, **kw})


def tiny_adapter_ctx(frame_rate: float = 50.0) -> AdapterContext:
    return AdapterContext(in_dim=D_ENC, out_dim=D_LLM, frame_rate=frame_rate, vocab_size=VOCAB, pad_id=PAD)


def tiny_adapter(name: str, seed: int = 0, frame_rate: float = 50.0, **kw) -> Adapter:
    torch.manual_seed(seed)
    return build_adapter(tiny_adapter_cfg(name, **kw), tiny_adapter_ctx(frame_rate))


def make_frames(lengths: list[int], seed: int = 0, d: int = D_ENC) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, max(lengths), d) normal frames; padding is large garbage so any leak shows."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths)
    x = torch.randn(len(lengths), max(lengths), d, generator=g)
    pad = torch.arange(max(lengths))[None, :] >= lens[:, None]
    x[pad] = 100.0 * torch.randn(int(pad.sum()), d, generator=g)
    return x, lens


def make_targets(lengths: torch.Tensor, seed: int = 0) -> AdapterTargets:
    """CIF target lengths and CTC labels of about one token per 4 frames (never the blank 0)."""
    g = torch.Generator().manual_seed(seed)
    n = (lengths // 4).clamp(min=1)
    labels = torch.randint(1, VOCAB, (len(lengths), int(n.max())), generator=g)
    return AdapterTargets(target_lengths=n, ctc_labels=labels, ctc_label_lengths=n)


# --- a tiny experiment on disk --------------------------------------------------------------------

MUSTC_SENTENCES = [
    ("Hello there.", "Hallo."), ("Good morning.", "Guten Morgen."), ("The cat sleeps.", "Die Katze schläft."),
    ("I like tea.", "Ich mag Tee."), ("See you soon.", "Bis bald."), ("It is cold.", "Es ist kalt."),
    ("Thank you.", "Danke."), ("Where is it?", "Wo ist es?"),
]


def write_mustc(root: Path, split: str = "train", n: int = 8, seed: int = 0) -> Path:
    """MuST-C layout: one talk wav per 4 segments, txt/{split}.yaml + .en + .de."""
    rng = np.random.default_rng(seed)
    data = root / "en-de" / "data" / split
    (data / "wav").mkdir(parents=True, exist_ok=True)
    (data / "txt").mkdir(parents=True, exist_ok=True)
    segs, en, de = [], [], []
    for talk in range(0, n, 4):
        pieces, offset = [], 0.0
        for k in range(min(4, n - talk)):
            i = talk + k
            dur = 0.6 + 0.2 * (i % 4)
            t = np.arange(int(dur * 16000)) / 16000
            wave = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.01 * rng.standard_normal(len(t))
            pieces.append(wave)
            segs.append({"duration": round(dur, 3), "offset": round(offset, 3), "speaker_id": f"spk{talk}",
                         "wav": f"ted_{talk}.wav"})
            offset += dur
            en.append(MUSTC_SENTENCES[i % len(MUSTC_SENTENCES)][0])
            de.append(MUSTC_SENTENCES[i % len(MUSTC_SENTENCES)][1])
        sf.write(data / "wav" / f"ted_{talk}.wav", np.concatenate(pieces).astype(np.float32), 16000)
    (data / "txt" / f"{split}.yaml").write_text(yaml.safe_dump(segs))
    (data / "txt" / f"{split}.en").write_text("\n".join(en) + "\n")
    (data / "txt" / f"{split}.de").write_text("\n".join(de) + "\n")
    return root


def write_experiment(tmp: Path, manifest: Path, run_dir: Path, extra: dict | None = None) -> Path:
    """Tiny Whisper + tiny LLM on disk and a YAML config pointing at them and the manifest."""
    whisper = tmp / "models" / "whisper"
    llm = tmp / "models" / "llm"
    if not whisper.exists():
        save_tiny_whisper(whisper, d_model=32, layers=1)
        save_tiny_llm(llm)
    cfg = {
        "encoder": {"name": "whisper", "model": str(whisper)},
        "llm": {"model": str(llm)},
        "adapter": {"name": "mlp", "hidden_size": 32, "stack": 2, "dropout": 0.1},
        "data": {"train_manifest": str(manifest), "max_batch_seconds": 2.5, "max_batch_size": 4},
        "train": {"output_dir": str(run_dir), "max_steps": 12, "lr": 3e-3, "save_every": 4,
                  "log_every": 2, "keep_last": 2, "seed": 0},
        "eval": {"max_new_tokens": 8, "batch_size": 4},
    }
    for section, values in (extra or {}).items():
        cfg.setdefault(section, {}).update(values)
    path = tmp / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def mustc_manifest(tmp: Path, name: str, tasks: tuple[str, ...] = ("asr", "st"), n: int = 8) -> Path:
    """Write a MuST-C-layout corpus under `tmp` and import it with `speechwire data import mustc`."""
    from speechwire.cli import main

    write_mustc(tmp / "MUSTC", "train", n=n)
    manifest = tmp / name
    assert main(["data", "import", "mustc", "--root", str(tmp / "MUSTC"), "--tgt-lang", "de", "--split", "train",
                 "--out", str(manifest), "--tasks", *tasks]) == 0
    return manifest


# --- faults ---------------------------------------------------------------------------------------

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error",
       "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}


def tiny_run(tmp: Path, steps: int = 2, save_every: int = 1, extra: dict | None = None) -> tuple[Path, Path, Path]:
    """(config, manifest, run folder): a tiny Whisper + tiny LLM run trained `steps` steps in-process."""
    from speechwire.config import load_config
    from speechwire.train import train

    manifest = mustc_manifest(tmp, "train.jsonl", tasks=("asr",), n=4)
    run = tmp / "run"
    extra = {"train": {"max_steps": steps, "save_every": save_every, "keep_last": 2, "log_every": 1}, **(extra or {})}
    cfg = write_experiment(tmp, manifest, run, extra)
    train(load_config(cfg), progress=False)
    return cfg, manifest, run


class Hang(BaseException):
    """Raised by a test's alarm when a call runs too long: not an Exception, so neither `verdict`
    nor errors.explain turns it into a message (the test fails as a hang)."""


def verdict(fn: Callable[[], Any]) -> tuple[int, str]:
    """What `speechwire` would print for `fn()`: (0, "") on success, else (exit status, the one line)."""
    try:
        fn()
    except (KeyboardInterrupt, Hang):
        raise
    except BaseException as e:  # noqa: BLE001 - judging every outcome is the point
        return explain(e)
    return 0, ""


def assert_clean(code: int, line: str) -> None:
    """Success, or a user error in one line that is not the 'bug' fallback."""
    if code == 0:
        return
    assert code == USER_ERROR and "\n" not in line and line.strip(), (code, line)
    assert BUG_HINT not in line, line


def template(line: str, roots: list[str] = ()) -> str:
    """A message with its particulars (paths, keys, numbers, quoted values) blanked: its kind."""
    for r in roots:
        line = line.replace(r, "<dir>")
    while True:  # lists and mappings (a value echoed back), innermost first
        blanked = re.sub(r"\[[^\[\]]*\]|\{[^{}]*\}", "<v>", line)
        if blanked == line:
            break
        line = blanked
    line = re.sub(r"unknown key\(s\) .*?; ", "unknown key(s) <keys>; ", line)
    line = re.sub(r"(unrecognized arguments|invalid choice): .*?(\(see|$)", r"\1: <args> \2", line)
    line = re.sub(r"(?:<dir>|/)\S*", "<path>", line)
    line = re.sub(r"'[^']*'|\"[^\"]*\"", "<q>", line)
    line = re.sub(r"\b[0-9a-f]{8,}\b", "<hex>", line)  # hashes, keys
    line = re.sub(r"(#x|0x)[0-9a-fA-F]+|\d+(\.\d+)?(e[-+]?\d+)?", "<n>", line)
    line = re.sub(r"=\S+ must", "=<value> must", line)
    return line[:160]


@contextmanager
def disk_full(pattern: str, after_bytes: int = 0) -> Iterator[dict]:
    """Every os.write to a file whose path matches the glob `pattern` fails with ENOSPC once
    `after_bytes` were written to such files (a disk that fills up). Yields {"bytes", "failures"}."""
    real_write = os.write
    state = {"bytes": 0, "failures": 0}

    def write(fd: int, data: Any) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if fnmatch.fnmatch(target, pattern):
            if state["bytes"] + len(data) > after_bytes:
                state["failures"] += 1
                raise OSError(errno.ENOSPC, "No space left on device")
            state["bytes"] += len(data)
        return real_write(fd, data)

    os.write = write
    try:
        yield state
    finally:
        os.write = real_write


FORK_SERVER = r"""
import json, os, signal, sys, time
import torch
torch.set_num_threads(1)
import speechwire.cli, speechwire.train, speechwire.grid.run, speechwire.model  # warm imports
import transformers, accelerate
out = sys.stdout
for line in sys.stdin:
    job = json.loads(line)
    t0 = time.time()
    pid = os.fork()
    if pid == 0:
        os.environ.update(job["env"])
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        if job.get("step_sleep"):  # every optimizer step takes at least this long: a timed kill lands inside the run
            step = torch.optim.AdamW.step
            def slow_step(self, *args, **kwargs):
                time.sleep(job["step_sleep"])
                return step(self, *args, **kwargs)
            torch.optim.AdamW.step = slow_step
        try:
            code = speechwire.cli.main(job["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            import traceback; traceback.print_exc(); code = 99
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    deadline = time.time() + job["timeout"]
    kill_at = None if job.get("kill_after") is None else t0 + job["kill_after"]
    sent = None  # the kill this server sent: "timer" (kill_after) or "timeout"
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if kill_at is not None and time.time() >= kill_at:
            os.kill(pid, signal.SIGKILL)
            kill_at, sent = None, "timer"
        if time.time() > deadline and sent != "timeout":
            os.kill(pid, signal.SIGKILL)
            sent = "timeout"
        time.sleep(0.01)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    out.write(json.dumps({"killed": killed, "by": (sent or "fault") if killed else None,
                          "code": None if killed else os.WEXITSTATUS(status),
                          "seconds": round(time.time() - t0, 2)}) + "\n")
    out.flush()
"""


class Forker:
    """One warm Python process (torch, transformers and speechwire imported once) that runs each
    `speechwire` command in a fresh fork: real processes, real SIGKILLs, no import cost per run."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=ENV,
                                     cwd=str(Path(__file__).parent))

    def run(self, argv: list[str], faults: str = "", kill_after: float | None = None, timeout: float = 300,
            step_sleep: float = 0.0) -> dict:
        """Run `speechwire ARGV` in a fork; with `faults` (SPEECHWIRE_FAULTS) it may kill itself, with
        `kill_after` seconds the server kills it; `step_sleep` seconds are added to every optimizer step.

        Returns:
            {"killed": bool, "by": who killed it, "code": exit status or None, "seconds"}; "by" is
            "fault" (the child's own SIGKILL: a fault point fired), "timer" (kill_after), "timeout",
            or None when it exited.
        """
        self.submit(argv, faults, kill_after, timeout, step_sleep)
        return self.result()

    def submit(self, argv: list[str], faults: str = "", kill_after: float | None = None, timeout: float = 300,
               step_sleep: float = 0.0) -> None:
        self._timeout, self._argv = timeout, argv
        job = {"argv": [str(a) for a in argv], "env": {"SPEECHWIRE_FAULTS": faults}, "log": str(self.log),
               "kill_after": kill_after, "timeout": timeout, "step_sleep": step_sleep}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()

    def result(self) -> dict:
        ready, _, _ = io_select.select([self.proc.stdout], [], [], self._timeout + 60)
        assert ready, f"fork server gave no answer for {self._argv}"
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def encode_with_ffmpeg(path, codec: str, container: str, x: np.ndarray, rate: int) -> None:
    """Write (channels, n) float samples with an FFmpeg encoder (PyAV), as a phone or browser would."""
    import av

    layout = "stereo" if x.shape[0] == 2 else "mono"
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x, np.float32), format="fltp", layout=layout)
        frame.sample_rate = rate
        wanted = stream.codec_context.codec.audio_formats[0].name
        for part in av.AudioResampler(format=wanted, layout=layout, rate=rate).resample(frame):
            for packet in stream.encode(part):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
