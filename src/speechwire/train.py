"""Training loop: Accelerate (CPU, one GPU, DDP, FSDP, DeepSpeed) with exact resume.

    speechwire train configs/demo_asr.yaml train.max_steps=200
    accelerate launch --num_processes 8 -m speechwire.cli train configs/paper_mustc.yaml

Run folder:
    config.yaml, log.jsonl                  the resolved config; one JSON line per logged step
    checkpoints/step-000500/                trainable weights, optimizer, scheduler, sampler, RNG: all as
                                            JSON + safetensors (resume.py), nothing unpickled on resume
    trainable.safetensors (+ config.yaml)   final weights: `SpeechLLM.from_pretrained(run_dir)`
    best/                                   best dev checkpoint (when a dev manifest is given)
    train_summary.json                      steps, time, throughput, final and best dev metrics

Checkpoints are written to a temporary folder and renamed, so a kill never leaves a broken one;
a rerun of the same command continues from the newest (use --no-resume to start over).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import shutil
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from speechwire.align import alignment_vocab, build_head_lm, build_head_words, evaluate_alignment, read_lm_text
from speechwire.config import AdapterFieldWarning, ExperimentConfig, flatten, load_config, resolve_device, save_config, to_dict
from speechwire.data import load_manifest, make_dataloader
from speechwire.errors import DamagedFileError
from speechwire.evaluate import evaluate_utterances, primary_metric
from speechwire.features import prepare_feature_cache
from speechwire.files import append_line, fault_point, write_atomic
from speechwire.memory import peak_memory_gib
from speechwire.model import SpeechLLM, rescale_output
from speechwire.resume import STATE_NAME, read_checkpoint, resume_files, rng_state, set_rng_state, write_checkpoint

CKPT_DIR = "checkpoints"


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at `total_steps` (pure, for LambdaLR)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders that were finished (their state file written), oldest first: a
    folder a kill interrupted (`step-N.tmp`, or no state file) is never resumed from."""
    return [s for s in sorted((run_dir / CKPT_DIR).glob("step-*[0-9]")) if (s / STATE_NAME).is_file()]


class Trainer:
    """setup() -> train() -> summary dict. One instance per process under `accelerate launch`."""

    def __init__(self, cfg: ExperimentConfig, resume: bool = True, progress: bool = True,
                 on_step: Callable[[int], None] | None = None) -> None:
        """on_step: called with the step number right after each optimizer step (before logging,
        validation and checkpoints): the grid's cost estimator times steps with it."""
        self.cfg, self.resume, self.progress, self.on_step = cfg, resume, progress, on_step
        self.run_dir = Path(cfg.train.output_dir)

    # --- setup -------------------------------------------------------------------------------

    def setup(self) -> None:
        """Accelerator, data (and the feature cache), model, optimiser, in that order; then resume."""
        from accelerate.utils import set_seed

        cfg = self.cfg
        log_with = self._build_accelerator()
        set_seed(cfg.train.seed)
        utts, encoder = self._build_data()
        set_seed(cfg.train.seed)  # same RNG state whether or not the cache was built
        self._build_model(utts, encoder)
        self.loader = make_dataloader(utts, cfg.data, seed=cfg.train.seed, num_replicas=self.acc.num_processes,
                                      rank=self.acc.process_index, feature_cache=self.feature_cache,
                                      tokenizer=self.model.batch_tokenizer(training=True))  # workers tokenise
        self._build_optimizer()
        self.step, self.best, self._ids_seen, self._elapsed_before = 0, None, [], 0.0
        if self.acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        if log_with:
            hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                       for k, v in flatten(to_dict(cfg)).items()}
            self.acc.init_trackers(self.run_dir.name, config=hparams)
        if self.resume:
            self._resume()
        self.acc.wait_for_everyone()

    def _build_accelerator(self) -> str | None:
        """The Accelerator on train.device (and DeepSpeed when launched with it); returns the tracker
        (train.report_to) or None."""
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        cfg = self.cfg
        if not cfg.data.train_manifest:
            raise ValueError("data.train_manifest is not set; pass data.train_manifest=path/to/train.jsonl")
        log_with = None if cfg.train.report_to == "none" else cfg.train.report_to
        if log_with and importlib.util.find_spec(log_with) is None:  # the tracker's package has its name
            raise ValueError(f"train.report_to={log_with} needs the {log_with} package: "
                             "pip install 'speechwire[tracking]' (or set train.report_to=none)")
        AcceleratorState._reset_state()  # one process may train several runs (tests, grids) with different precisions
        # cpu=True on the CPU (train.device): Accelerate then runs torchrun/`accelerate launch` ranks on gloo
        device = resolve_device(cfg.train.device)
        self.acc = Accelerator(mixed_precision=cfg.train.mixed_precision, log_with=log_with,
                               cpu=device.type == "cpu", project_dir=str(self.run_dir))
        if device.index is not None:  # cuda:N: one process on that GPU (launched ranks take one GPU each)
            if self.acc.num_processes > 1:
                raise ValueError(f"train.device={cfg.train.device} names one GPU, but {self.acc.num_processes} "
                                 "processes were launched (one GPU each); set train.device=cuda or auto")
            torch.cuda.set_device(device)
        self._configure_deepspeed()
        return log_with

    def _build_data(self) -> tuple[list, Any]:
        """Train and dev utterances, the feature cache filled for both (main process), and the
        stand-in encoder a cached run uses (None: the model loads its SFM)."""
        cfg = self.cfg
        utts = load_manifest(cfg.data.train_manifest, skip_invalid=cfg.data.skip_invalid)
        self.dev = load_manifest(cfg.data.dev_manifest, cfg.data.skip_invalid)[: cfg.train.eval_max_items] \
            if cfg.data.dev_manifest else None
        self.feature_cache, encoder = None, None
        if cfg.data.feature_cache:  # frozen SFM outputs from disk: the SFM runs only for cache misses
            self.feature_cache, encoder = prepare_feature_cache(
                cfg, utts + (self.dev or []), device=self.acc.device, is_main=self.acc.is_main_process,
                barrier=self.acc.wait_for_everyone, progress=self.progress)
        return utts, encoder

    def _build_model(self, utts: list, encoder: Any) -> None:
        """The model: the alignment head's vocabulary and n-gram LM from the transcripts (align stage),
        weights from train.init_from; on the accelerator's device."""
        cfg = self.cfg
        self.model = SpeechLLM(cfg, encoder=encoder)
        if cfg.train.stage == "align":
            transcripts = [u.transcript for u in utts]
            self.model.align_head.set_vocab(alignment_vocab(cfg.align.vocab, transcripts, self.model.prompter))
            texts = transcripts + read_lm_text(cfg.align.lm_text) if cfg.align.lm_order or cfg.align.word_weight else []
            if cfg.align.lm_order > 0:
                self.model.align_head.set_lm(build_head_lm(self.model.align_head, texts, self.model.transcript_ids,
                                                           cfg.align.lm_order))
            if cfg.align.word_weight > 0:
                self.model.align_head.set_words(
                    build_head_words(self.model.align_head, self.model.prompter.tok, texts, cfg.align))
        if cfg.train.init_from:
            skipped = self.model.load_trainable(cfg.train.init_from, partial=True)
            with warnings.catch_warnings():  # a config we wrote: its fields were warned about (or not) when it was made
                warnings.simplefilter("ignore", AdapterFieldWarning)
                started_in_align = load_config(Path(cfg.train.init_from) / "config.yaml").train.stage == "align"
            if cfg.train.stage == "lm" and started_in_align and cfg.adapter.match_output_scale:
                rescale_output(self.model.adapter, self.model.audio_markers.shape[1], self.model.token_rms)
            if self.acc.is_main_process:
                print(f"started from {cfg.train.init_from}" + (f" (not used: {', '.join(skipped)})" if skipped else ""))
        self.model.to(self.acc.device)

    def _build_optimizer(self) -> None:
        """AdamW over the trainable weights, warm-up + cosine schedule over the run's steps; prepared
        with the model by Accelerate (the scheduler is stepped by hand once per optimizer step)."""
        cfg = self.cfg
        self.total_steps = cfg.train.max_steps if cfg.train.max_steps >= 0 else \
            max(1, math.ceil(cfg.train.epochs * len(self.loader) / cfg.train.grad_accum))
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        warmup = int(cfg.train.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, self.total_steps, warmup))
        self.model, self.optimizer = self.acc.prepare(self.model, optimizer)

    def _configure_deepspeed(self) -> None:
        """Under `accelerate launch --use_deepspeed` the engine owns accumulation and clipping: hand it
        ours. Batches vary in size (duration bucketing), so the micro-batch size is nominal (1)."""
        plugin = getattr(self.acc.state, "deepspeed_plugin", None)
        self._deepspeed = plugin is not None
        if plugin is None:
            return
        ds = plugin.deepspeed_config
        for key, value in (("train_micro_batch_size_per_gpu", 1),
                           ("gradient_accumulation_steps", self.cfg.train.grad_accum),
                           ("gradient_clipping", self.cfg.train.grad_clip)):
            if ds.get(key) in (None, "auto"):
                ds[key] = value
        self.acc.gradient_accumulation_steps = int(ds["gradient_accumulation_steps"])

    # --- loop --------------------------------------------------------------------------------

    def train(self) -> dict:
        cfg, acc, model = self.cfg.train, self.acc, self.model
        model.train()
        self._bar = bar = tqdm(total=self.total_steps, initial=self.step, desc=cfg.stage,
                               dynamic_ncols=True, disable=not (self.progress and acc.is_local_main_process))
        start, audio_seconds, window, micro = time.time(), 0.0, _Window(), 0
        self._started = start - self._elapsed_before
        while self.step < self.total_steps:
            for batch in self.loader:
                if not batch.ids:
                    continue  # every item of this batch was invalid and skipped (data.skip_invalid)
                sync = (micro + 1) % cfg.grad_accum == 0
                with acc.no_sync(model) if not sync and acc.num_processes > 1 else nullcontext():
                    out = model(batch, objective=cfg.stage)
                    # a DeepSpeed engine divides by its own gradient_accumulation_steps
                    acc.backward(out.loss if self._deepspeed else out.loss / cfg.grad_accum)
                window.add(out)
                if acc.num_processes > 1 and len(self._ids_seen) < 10000:
                    self._ids_seen.extend(batch.ids)
                audio_seconds += sum(batch.durations)
                micro += 1
                if not sync:
                    continue
                if cfg.grad_clip > 0:
                    acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                if self.on_step is not None:
                    self.on_step(self.step)
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    record = window.flush(self.step, self.scheduler.get_last_lr()[0], audio_seconds / (time.time() - start))
                    bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.1e}",
                                    audio_s_per_s=f"{record['audio_s_per_s']:.1f}")
                    self._log(record)
                if self.step >= self.total_steps:
                    break  # the last step's validation and checkpoint come after the loop
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self._validate()
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self._save_checkpoint()
            else:
                self.loader.set_epoch(self.loader.sampler_.epoch + 1)
        bar.close()
        dev = self._validate()
        self._save_checkpoint()
        elapsed = time.time() - start
        summary = {"steps": self.step, "train_seconds": round(elapsed, 2),
                   "audio_seconds_per_second": round(audio_seconds / max(elapsed, 1e-9), 3),
                   "trainable_params": sum(p.numel() for p in self.unwrapped.parameters() if p.requires_grad),
                   "final_dev": dev, "best_dev": self.best, "processes": acc.num_processes,
                   "peak_memory_gib": peak_memory_gib()}
        if self.feature_cache is not None:
            summary["feature_cache"] = self.feature_cache.stats_dict()
        with self._gathered():
            if acc.is_main_process:
                self.unwrapped.save_pretrained(self.run_dir)
        if acc.is_main_process:
            write_atomic(self.run_dir / "train_summary.json", json.dumps(summary, indent=2), "the training summary")
        if acc.num_processes > 1:
            self._write_rank_fingerprint()
        acc.end_training()
        return summary

    @property
    def unwrapped(self) -> SpeechLLM:
        return self.acc.unwrap_model(self.model)

    def _log(self, record: dict) -> None:
        if self.acc.is_main_process:
            append_line(self.run_dir / "log.jsonl", json.dumps(record), "the training log")
        if self.cfg.train.report_to != "none":
            self.acc.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=self.step)

    def _validate(self) -> dict | None:
        """Dev metric on the main process; keeps the best checkpoint in run_dir/best. None without a
        dev manifest (every process returns here alike: no barrier is left waiting)."""
        if not self.dev:
            return None
        result = None
        if self.acc.is_main_process:
            model = self.unwrapped
            evaluate = evaluate_alignment if self.cfg.train.stage == "align" else evaluate_utterances
            metrics = evaluate(model, self.dev, self.cfg, progress=False, feature_cache=self.feature_cache)
            name, value, higher = primary_metric(metrics)
            result = {"step": self.step, "metric": name, "value": value, "metrics": metrics}
            elapsed = round(time.time() - self._started, 1) if hasattr(self, "_started") else None
            self._log({"step": self.step, "elapsed_s": elapsed, "dev": metrics})
            if self.best is None or (value > self.best["value"] if higher else value < self.best["value"]):
                self.best = {"step": self.step, "metric": name, "value": value}
                model.save_pretrained(self.run_dir / "best")
            if self.progress and hasattr(self, "_bar"):
                shown = f"{100 * value:.1f} %" if name.endswith("wer") else f"{value:.2f}"
                self._bar.write(f"{self.cfg.train.stage} step {self.step}: dev {name} {shown} "
                                f"(best {self.best['value'] * (100 if name.endswith('wer') else 1):.2f} "
                                f"at step {self.best['step']})")
            model.train()
        self.acc.wait_for_everyone()
        return result

    # --- checkpoints -------------------------------------------------------------------------

    def _gathered(self):
        """Under DeepSpeed ZeRO-3 the trainable weights are sharded: gather them to save."""
        from accelerate.utils import DistributedType

        if self.acc.distributed_type == DistributedType.DEEPSPEED:
            import deepspeed

            params = [p for p in self.model.parameters() if p.requires_grad]
            return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        return nullcontext()

    def _save_checkpoint(self) -> None:
        """Weights, optimizer, scheduler, every rank's RNG and the sampler, as data (resume.py); the
        folder appears complete or not at all, and older ones are pruned only after it does."""
        acc = self.acc
        final = self.run_dir / CKPT_DIR / f"step-{self.step:06d}"
        files: dict[str, bytes] = {}
        with self._gathered():
            if acc.is_main_process:
                files.update(self.unwrapped.checkpoint_files())
        # every rank's RNG goes through the main process (gather_object), which writes the folder
        rngs = [resume_files(rng_state(), f"rng-rank{acc.process_index}")]
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            rngs = gather_object(rngs)
        if acc.is_main_process:
            for rank_files in rngs:
                files.update(rank_files)
            files.update(resume_files(self.optimizer.state_dict(), "optimizer"))
            files.update(resume_files(self.scheduler.state_dict(), "scheduler"))
            state = {"step": self.step, "data": self.loader.state_dict(), "best": self.best,
                     "processes": acc.num_processes, "elapsed_s": round(time.time() - self._started, 1)}
            files[STATE_NAME] = json.dumps(state, indent=2).encode()
            write_checkpoint(files, final, f"checkpoint {final.name}")
            fault_point("checkpoint.before-prune")
            for old in sorted((self.run_dir / CKPT_DIR).glob("step-*[0-9]"))[: -self.cfg.train.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def _resume(self) -> None:
        """Continue from the newest complete checkpoint; a damaged one is reported and the one before
        it is used (a run is never blocked by a bad newest checkpoint while an older one is good)."""
        complete = complete_checkpoints(self.run_dir)
        for i, ckpt in enumerate(reversed(complete)):
            try:
                self._load_checkpoint(ckpt)
                return
            except (DamagedFileError, FileNotFoundError) as e:
                if i == len(complete) - 1:
                    raise
                warnings.warn(f"{' '.join(str(e).split())}; resuming from the checkpoint before it", stacklevel=2)

    def _load_checkpoint(self, ckpt: Path) -> None:
        # data only: JSON + safetensors (old checkpoints: torch files read with weights_only=True)
        parts = read_checkpoint(ckpt, self.acc.process_index, self.acc.num_processes)
        state = parts["state"]
        self.unwrapped.load_trainable(ckpt)
        try:
            self.optimizer.load_state_dict(parts["optimizer"])
            self.scheduler.load_state_dict(parts["scheduler"])
            self.loader.load_state_dict(state["data"])
        except (KeyError, TypeError, IndexError, RuntimeError) as e:
            raise DamagedFileError(f"{ckpt}: resume state does not fit this run ({type(e).__name__}: {e}); "
                                   "was it written with another config? pass --no-resume to start over") from None
        self.step, self.best = state["step"], state.get("best")
        self._elapsed_before = float(state.get("elapsed_s", 0.0))
        set_rng_state(parts["rng"])
        if self.acc.is_main_process:
            print(f"resumed from {ckpt} (step {self.step}/{self.total_steps})")

    def _write_rank_fingerprint(self) -> None:
        import hashlib

        h = hashlib.sha256()
        for k, v in sorted(self.unwrapped.trainable_state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
        out = self.run_dir / "ranks"
        out.mkdir(exist_ok=True)
        (out / f"rank{self.acc.process_index}.json").write_text(json.dumps(
            {"rank": self.acc.process_index, "weights_sha256": h.hexdigest(), "ids_seen": self._ids_seen}))


class _Window:
    """Averages of the micro-batch losses since the last log line."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}
        self.enc = self.ada = 0

    def add(self, out) -> None:
        losses = {"loss": out.loss.detach(), "lm_loss": out.lm_loss, **{f"aux_{k}": v for k, v in out.aux_losses.items()}}
        for k, v in losses.items():
            self.values.setdefault(k, []).append(float(v))
        self.enc += out.encoder_frames
        self.ada += out.adapter_frames

    def flush(self, step: int, lr: float, throughput: float) -> dict:
        record = {"step": step, **{k: sum(v) / len(v) for k, v in self.values.items()}, "lr": lr,
                  "audio_s_per_s": throughput, "compression": self.enc / max(self.ada, 1)}
        self.values, self.enc, self.ada = {}, 0, 0
        return record


def stage_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config a stage trains with: in the alignment stage align.{lr, weight_decay,
    max_batch_seconds, steps} replace the LM stage's train.{lr, weight_decay, max_steps} and
    data.max_batch_seconds (an alignment step is cheap, so it wants other values)."""
    if cfg.train.stage != "align":
        return cfg
    out = copy.deepcopy(cfg)
    out.train.lr, out.train.weight_decay = cfg.align.lr, cfg.align.weight_decay
    out.data.max_batch_seconds = cfg.align.max_batch_seconds
    if cfg.align.steps > 0:
        out.train.max_steps = cfg.align.steps
    return out


def _run_stage(cfg: ExperimentConfig, resume: bool, progress: bool) -> dict:
    trainer = Trainer(stage_config(cfg), resume=resume, progress=progress)
    trainer.setup()
    return trainer.train()


def train(cfg: ExperimentConfig, resume: bool = True, progress: bool = True) -> dict:
    """Train one run. With align.steps > 0 (and no train.init_from) the alignment stage runs first
    in <output_dir>/align, then the LM stage starts from its best (else final) weights; a rerun
    skips a finished alignment stage. Returns the LM stage's summary (+ "align": its summary)."""
    if cfg.train.stage == "align" or cfg.align.steps <= 0 or cfg.train.init_from:
        return _run_stage(cfg, resume, progress)
    align_dir = Path(cfg.train.output_dir) / "align"
    done = align_dir / "train_summary.json"
    if resume and done.is_file():
        align_summary = json.loads(done.read_text())
    else:
        first = copy.deepcopy(cfg)
        first.train.stage, first.train.output_dir = "align", str(align_dir)
        align_summary = _run_stage(first, resume, progress)
    second = copy.deepcopy(cfg)
    second.train.init_from = str(align_dir / "best" if (align_dir / "best").is_dir() else align_dir)
    return {**_run_stage(second, resume, progress), "align": align_summary}
