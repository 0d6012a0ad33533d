"""Where a transcribing process's memory goes: resident set size (VmRSS) per step of `speechwire
transcribe`, sampled every 2 ms in one process (Linux).

    python benchmarks/transcribe_memory.py                       # the shipped ASR checkpoint, a real test clip
    python benchmarks/transcribe_memory.py --run runs/demo-asr --audio my.wav --json mem.json

Steps: imports, the SFM, the tokenizer, the LLM (int8 on the CPU), the trainable weights (adapter,
n-gram LM, lexicon), then the first decode: encoder, the alignment head's beam search, the LLM's
output rows (built at the first Latin-script answer), rescoring and the LLM's answer. Prints each
step's lowest and highest VmRSS and the process's peak (VmHWM): the figure `/usr/bin/time -v`
reports as "Maximum resident set size" (docs/results/speed/README.md, "Peak memory").
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

GIB = 2**30
STATUS = Path("/proc/self/status")


class Sampler:
    """VmRSS every `interval` seconds, labelled with the step running at the time."""

    def __init__(self, interval: float = 0.002) -> None:
        self.step, self.interval = "start", interval
        self.samples: list[tuple[str, int]] = []
        threading.Thread(target=self._run, daemon=True).start()

    @staticmethod
    def resident() -> int:
        """VmRSS of /proc/self/status in bytes; 0 where there is none."""
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while True:
            self.samples.append((self.step, self.resident()))
            time.sleep(self.interval)

    def wrap(self, owner, name: str, label: str | None = None) -> None:
        """Label the time spent in owner.name (nested calls keep the innermost label)."""
        func = getattr(owner, name)

        def labelled(*args, **kwargs):
            outer, self.step = self.step, label or name
            try:
                return func(*args, **kwargs)
            finally:
                self.step = outer
        setattr(owner, name, labelled)

    def table(self) -> list[dict]:
        """Per step, in the order first seen: lowest and highest VmRSS (GiB)."""
        rows: dict[str, dict] = {}
        for step, rss in self.samples:
            row = rows.setdefault(step, {"step": step, "min_gib": rss / GIB, "max_gib": rss / GIB})
            row["min_gib"], row["max_gib"] = min(row["min_gib"], rss / GIB), max(row["max_gib"], rss / GIB)
        return [{**r, "min_gib": round(r["min_gib"], 3), "max_gib": round(r["max_gib"], 3)} for r in rows.values()]


def default_clip() -> Path:
    from speechwire.data.synth import DEFAULT_OUT

    manifest = DEFAULT_OUT.expanduser() / "real_test.asr.jsonl"
    if not manifest.is_file():
        sys.exit(f"{manifest} not found: run `speechwire demo` first, or pass --audio FILE")
    row = json.loads(manifest.read_text().splitlines()[0])
    return manifest.parent / row["audio"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="run folder (default: the shipped ASR checkpoint)")
    p.add_argument("--audio", default=None, help="audio file (default: the demo's first real test clip)")
    p.add_argument("--json", default=None, help="write the table here")
    p.add_argument("--tiny", action="store_true", help="an untrained tiny run and a tone clip: a smoke run (tests)")
    args = p.parse_args()
    if not STATUS.is_file():
        sys.exit("transcribe_memory.py reads /proc/self/status: Linux only")

    sampler = Sampler()
    sampler.step = "imports"
    import speechwire.model as model_module
    from speechwire.audio import load_audio
    from speechwire.longform import join_text, transcribe_long
    from speechwire.memory import peak_memory_gib
    from speechwire.model import SpeechLLM

    if args.tiny:
        import tempfile

        from tiny import tiny_run, tone_manifest

        work = Path(tempfile.mkdtemp())
        run = tiny_run(work)
        manifest = tone_manifest(work, n=1)
        audio = manifest.parent / json.loads(manifest.read_text().splitlines()[0])["audio"]
    else:
        from speechwire.demo.main import asset_dir

        run = Path(args.run) if args.run else asset_dir("asr")
        audio = Path(args.audio) if args.audio else default_clip()

    for name in ("build_encoder", "load_tokenizer", "load_llm", "build_adapter"):
        sampler.wrap(model_module, name)
    for name in ("load_trainable", "encode_audio", "_adapt", "_decode", "_latin_rows"):
        sampler.wrap(SpeechLLM, name)
    sampler.wrap(model_module, "choose", "rescoring")
    sampler.wrap(model_module, "ctc_nbest", "beam search")
    sampler.step = "other loading"
    model = SpeechLLM.from_pretrained(run).eval()
    sampler.step = "audio"
    wav = load_audio(str(audio))
    sampler.step = "decoding (rest)"
    text = join_text(transcribe_long(model, wav, task="asr", batch_size=model.cfg.eval.batch_size))
    sampler.step = "end"
    time.sleep(0.02)
    rows = sampler.table()
    peak = peak_memory_gib()  # VmHWM: what /usr/bin/time reports

    print(f"{run} on {audio} ({len(wav) / 16000:.1f} s): {text!r}\n")
    print("| step | lowest VmRSS GiB | highest VmRSS GiB |")
    print("|---|---:|---:|")
    for r in rows:
        print(f"| {r['step']} | {r['min_gib']:.3f} | {r['max_gib']:.3f} |")
    print(f"\npeak resident set (VmHWM): {peak:.3f} GiB = {peak * GIB / 1e9:.3f} GB")
    if args.json:
        Path(args.json).write_text(json.dumps({"run": str(run), "audio": str(audio), "text": text, "steps": rows,
                                               "peak_gib": peak}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
