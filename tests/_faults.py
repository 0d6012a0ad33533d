"""Helpers for the error-surface and fault tests: a tiny trained run on disk, the CLI's verdict on a
call, an injected full disk, and warm forked processes to SIGKILL at fault points."""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import re
import select
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from speechwire.errors import BUG_HINT, USER_ERROR, explain

from pipeline import mustc_manifest, write_experiment

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


def verdict(fn: Callable[[], Any]) -> tuple[int, str]:
    """What `speechwire` would print for `fn()`: (0, "") on success, else (exit status, the one line)."""
    try:
        fn()
    except KeyboardInterrupt:
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
    line = re.sub(r"unknown key\(s\) .*?; ", "unknown key(s) <keys>; ", line)
    line = re.sub(r"(unrecognized arguments|invalid choice): .*?(\(see|$)", r"\1: <args> \2", line)
    line = re.sub(r"(?:<dir>|/)\S*", "<path>", line)
    line = re.sub(r"'[^']*'|\"[^\"]*\"", "<q>", line)
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
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if kill_at is not None and time.time() >= kill_at:
            os.kill(pid, signal.SIGKILL)
            kill_at = None
        if time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    out.write(json.dumps({"killed": killed, "code": None if killed else os.WEXITSTATUS(status),
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

    def run(self, argv: list[str], faults: str = "", kill_after: float | None = None, timeout: float = 300) -> dict:
        """Run `speechwire ARGV` in a fork; with `faults` (SPEECHWIRE_FAULTS) it may kill itself, with
        `kill_after` seconds the server kills it. Returns {"killed": bool, "code": int | None, "seconds"}."""
        self.submit(argv, faults, kill_after, timeout)
        return self.result()

    def submit(self, argv: list[str], faults: str = "", kill_after: float | None = None, timeout: float = 300) -> None:
        self._timeout, self._argv = timeout, argv
        job = {"argv": [str(a) for a in argv], "env": {"SPEECHWIRE_FAULTS": faults}, "log": str(self.log),
               "kill_after": kill_after, "timeout": timeout}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()

    def result(self) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], self._timeout + 60)
        assert ready, f"fork server gave no answer for {self._argv}"
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


