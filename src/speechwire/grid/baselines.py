"""`speechwire grid GRID --baselines`: the reference systems on the grid's own test clips.

Per SFM level, plain Whisper (that level's Whisper checkpoint with its own decoder, as the demo runs
it) transcribes every test set: its WER on the ASR items; on the ST items its transcript goes to
each LLM level, prompted to translate (the cascade), scored with BLEU and chrF. Scored as the runs
are (metrics.score on the same clips, test_max_items honoured) and written to
<grid>/baselines.json after each entry, so a kill loses at most one; a rerun skips what is there.
The report prints them beside the runs ("Baselines on the same clips").

    {"<sfm level>": {"<test set>": {"plain whisper": {...asr metrics, "rtf"},
                                    "cascade (<llm level>)": {...st metrics, "rtf"}}}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from speechwire.data import load_manifest, utterance_duration
from speechwire.files import write_atomic
from speechwire.grid.spec import GridSpec, plan, role, run_config, test_manifests

BASELINES = "baselines.json"


def read_baselines(grid_dir: Path) -> dict[str, Any]:
    """The grid folder's baselines.json, or {} when there is none."""
    path = Path(grid_dir) / BASELINES
    return json.loads(path.read_text()) if path.is_file() else {}


def grid_baselines(spec: GridSpec, out: Path, progress: bool = True) -> dict[str, Any]:
    """Compute what baselines.json lacks (see the module docstring); returns the whole file's content."""
    import torch

    from speechwire.demo.baselines import PlainWhisper, llm_translate
    from speechwire.llm import load_llm, load_tokenizer
    from speechwire.metrics import score
    from speechwire.weights.resolve import resolve_model

    runs = plan(spec)
    sfm = next((f for f in spec.factors if role(f) == "encoder"), None)
    llm = next((f for f in spec.factors if role(f) == "llm"), None)
    results = read_baselines(out)
    out.mkdir(parents=True, exist_ok=True)
    llms: dict[str, tuple[Any, Any]] = {}  # LLM level -> (model, tokenizer), loaded once for every SFM and test set
    for sfm_level in dict.fromkeys(r.levels.get(sfm, "sfm") for r in runs):
        first = next(r for r in runs if r.levels.get(sfm, "sfm") == sfm_level)
        cfg = run_config(spec, first, out, None)
        llm_cfgs = {r.levels.get(llm, "llm"): run_config(spec, r, out, None).llm for r in runs
                    if r.levels.get(sfm, "sfm") == sfm_level}
        whisper = None
        for test, manifest in test_manifests(spec, first, out).items():
            done = results.setdefault(sfm_level, {}).setdefault(test, {})
            utts = load_manifest(manifest)[: spec.test_max_items]
            st = [i for i, u in enumerate(utts) if u.task == "st"]
            todo = ["plain whisper"] if len(st) < len(utts) else []
            todo += [f"cascade ({level})" for level in llm_cfgs] if st else []
            if all(name in done for name in todo):
                continue
            if whisper is None:
                whisper = PlainWhisper(resolve_model(cfg.encoder.model)[0])
            texts, seconds = whisper.run(utts, batch_size=cfg.eval.batch_size, progress=progress,
                                         desc=f"plain whisper ({sfm_level}, {test})")
            audio = {i: utterance_duration(u) for i, u in enumerate(utts)}
            asr = sorted(set(range(len(utts))) - set(st))
            if asr and "plain whisper" not in done:
                share = sum(audio[i] for i in asr) / sum(audio.values())
                done["plain whisper"] = {**score("asr", [utts[i].target for i in asr], [texts[i] for i in asr]),
                                         "rtf": round(seconds * share / sum(audio[i] for i in asr), 4)}
                write_atomic(out / BASELINES, json.dumps(results, indent=2), "grid baselines")
            for level, llm_cfg in llm_cfgs.items() if st else ():
                name = f"cascade ({level})"
                if name in done:
                    continue
                if level not in llms:  # as the runs decode: llm.quantize applied
                    llms[level] = load_llm(llm_cfg, torch.device("cpu")), load_tokenizer(llm_cfg)
                model, tok = llms[level]
                hyps, t_sec = llm_translate(model, tok, [texts[i] for i in st], [utts[i].tgt_lang for i in st],
                                            system_prompt=llm_cfg.system_prompt, max_new_tokens=cfg.eval.max_new_tokens,
                                            batch_size=cfg.eval.batch_size)
                st_audio = sum(audio[i] for i in st)
                w_sec = seconds * st_audio / sum(audio.values())
                done[name] = {**score("st", [utts[i].target for i in st], hyps, tgt_lang=utts[st[0]].tgt_lang),
                              "rtf": round((w_sec + t_sec) / st_audio, 4)}
                write_atomic(out / BASELINES, json.dumps(results, indent=2), "grid baselines")
    return results


def baseline_lines(baselines: dict[str, Any]) -> list[str]:
    """report.md's section: one row per SFM level, system and test set."""
    if not baselines:
        return []
    lines = ["", "## Baselines on the same clips", "",
             "Plain Whisper (each SFM level's own checkpoint with its decoder, greedy) on the ASR test sets; the "
             "cascade (its transcript, then the LLM level translating it) on the ST ones (`speechwire grid GRID "
             "--baselines`, baselines.json):", "",
             "| SFM | system | test set | WER % | BLEU | chrF | RTF |", "|---|---|---|---:|---:|---:|---:|"]
    for sfm, tests in baselines.items():
        for test, systems in tests.items():
            for system, m in systems.items():
                wer = f"{100 * m['wer']:.1f}" if "wer" in m else ""
                bleu = f"{m['bleu']:.1f}" if "bleu" in m else ""
                chrf = f"{m['chrf']:.1f}" if "chrf" in m else ""
                lines.append(f"| {sfm} | {system} | {test} | {wer} | {bleu} | {chrf} | {m.get('rtf', '')} |")
    return lines
