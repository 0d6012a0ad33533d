"""Scores for automatic speech recognition (ASR) and speech translation (ST).

    normalize_text("Twenty-one [noise] cats, don't they?")   # -> "21 cats do not they"
    wer(["the cat sat on the mat"], ["the cat sat on mat"])  # -> {"wer": 0.1667, ...}
    score("st", refs, hyps, tgt_lang="de")                   # -> {"bleu": ..., "chrf": ...}

Word error rate (WER) comes from jiwer, BLEU and chrF from sacrebleu (corpus level), COMET
from the optional ``unbabel-comet`` package (``pip install 'speechwire[comet]'``).

English normaliser (``lang="en"``), applied to references and hypotheses alike: Whisper's
``EnglishTextNormalizer`` (transformers' copy of openai/whisper's, with Whisper's British ->
American spelling map ``english.json`` from the ``whisper-normalizer`` package), so English WER
is comparable with published Whisper numbers. It lower-cases; drops text in brackets or
parentheses ("[noise]", "(laughs)") and hesitations (uh, um, hmm, mm, mhm); expands contractions
("don't" -> "do not", "it's" -> "it is") and titles ("mr" -> "mister"); turns spoken numbers,
ordinals, percentages and currencies into digits ("twenty one" -> "21", "twenty first" ->
"21st", "five percent" -> "5%", "two dollars" -> "$2"); maps British spellings to American
("colour" -> "color"); removes other punctuation, symbols and accents; collapses whitespace.
Two steps of ours run first: NFKC (so "𝐓he" and "ＦＵＬＬ" come out lower-case too), and
typographic apostrophes (’ ‘ ʼ `) become "'", so "It’s" and "It's" both read "it is" (Whisper's
rules know only the ASCII apostrophe; without this step plain Whisper's synthetic-test WER of the
demo moves by +2.3 points instead of +0.5; docs/metrics.md has the measured change from the
normaliser speechwire used before).
Other languages (basic normaliser): NFKC, lower-case, brackets and punctuation/symbols removed
(intra-word apostrophes kept), whitespace collapsed; accents and numbers are kept as written.
For languages written without spaces (zh, ja, th) WER is not meaningful; use a character rate.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import unicodedata
from typing import Any, Callable, Sequence

import jiwer
from sacrebleu.metrics import BLEU, CHRF

_BRACKETED = re.compile(r"\[[^\]]*\]|\([^)]*\)")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


@functools.cache
def _english_normalizer() -> Callable[[str], str]:
    """Whisper's EnglishTextNormalizer, built once (its spelling map is 1,739 words of JSON)."""
    from importlib.resources import files

    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    try:
        mapping = (files("whisper_normalizer") / "normalizers" / "english.json").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise ImportError("the English WER normaliser needs Whisper's spelling map from the whisper-normalizer "
                          "package: pip install 'whisper-normalizer==0.1.15'") from err
    return EnglishTextNormalizer(json.loads(mapping))


def _strip_punctuation(text: str) -> str:
    """Punctuation and symbols -> spaces, keeping apostrophes between two letters or digits."""
    chars = []
    for k, ch in enumerate(text):
        if unicodedata.category(ch)[0] not in "PSZC":
            chars.append(ch)
            continue
        before = text[k - 1] if k > 0 else " "
        after = text[k + 1] if k + 1 < len(text) else " "
        chars.append(ch if ch == "'" and before.isalnum() and after.isalnum() else " ")
    return "".join(chars)


def normalize_text(text: str, lang: str = "en") -> str:
    """Normalise a transcript before WER (rules in the module docstring).

    Args:
        text: one reference or hypothesis.
        lang: ISO 639-1 code; "en" (or "en-US"...) picks Whisper's English normaliser, others the basic.

    Returns:
        Lower-case words separated by single spaces.
    """
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    if lang.lower().split("-")[0] == "en":
        return " ".join(_english_normalizer()(text).split())
    text = text.lower()
    return " ".join(_strip_punctuation(_BRACKETED.sub(" ", text)).split())


def _check_pairs(name: str, references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(
            f"{name}: got {len(references)} references but {len(hypotheses)} hypotheses; "
            "pass one hypothesis per reference, in the same order"
        )


def _prepare(
    refs: Sequence[str], hyps: Sequence[str], normalize: bool, lang: str
) -> tuple[list[str], list[str]]:
    _check_pairs("wer", refs, hyps)
    clean = (lambda t: normalize_text(t, lang)) if normalize else (lambda t: " ".join(t.split()))
    return [clean(r) for r in refs], [clean(h) for h in hyps]


def wer(
    references: Sequence[str], hypotheses: Sequence[str], normalize: bool = True, lang: str = "en"
) -> dict[str, Any]:
    """Corpus word error rate (WER): (substitutions + deletions + insertions) / reference words.

    A reference that is empty (after normalisation) contributes its hypothesis words as
    insertions. If the whole corpus has no reference words, WER is 0.0 when there are no
    insertions and ``inf`` otherwise (``json.dumps`` writes it as ``Infinity``).

    Args:
        references: reference transcripts, one per utterance.
        hypotheses: system outputs, same length and order (else ``ValueError``).
        normalize: apply ``normalize_text`` to both sides first.
        lang: language for the normaliser.

    Returns:
        {"wer": fraction, "wer_percent", "substitutions", "deletions", "insertions", "hits",
        "ref_words", "hyp_words", "num_utterances"}.
    """
    refs, hyps = _prepare(references, hypotheses, normalize, lang)
    counts = dict(substitutions=0, deletions=0, insertions=0, hits=0)
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    if pairs:
        out = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
        counts = {k: int(getattr(out, k)) for k in counts}
    counts["insertions"] += sum(len(h.split()) for r, h in zip(refs, hyps) if not r)
    ref_words = sum(len(r.split()) for r in refs)
    errors = counts["substitutions"] + counts["deletions"] + counts["insertions"]
    rate = errors / ref_words if ref_words else (0.0 if errors == 0 else math.inf)
    hyp_words = sum(len(h.split()) for h in hyps)
    return {"wer": rate, "wer_percent": 100.0 * rate, **counts, "ref_words": ref_words,
            "hyp_words": hyp_words, "num_utterances": len(refs)}


def wer_per_utterance(
    references: Sequence[str], hypotheses: Sequence[str], normalize: bool = True, lang: str = "en"
) -> list[float]:
    """WER of each utterance on its own (for histograms, or WER against duration plots).

    Args and empty references as for ``wer``. Returns one fraction per utterance.
    """
    refs, hyps = _prepare(references, hypotheses, normalize, lang)
    return [wer([r], [h], normalize=False)["wer"] for r, h in zip(refs, hyps)]


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Fewest substitutions, deletions and insertions that turn the words `ref` into `hyp` (jiwer, no
    normalisation); an empty `ref` costs one insertion per word of `hyp`."""
    if not ref:
        return len(hyp)
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return out.substitutions + out.deletions + out.insertions


def _bleu_tokenizer(tgt_lang: str | None) -> tuple[str, str | None]:
    """sacrebleu tokenizer for a target language, and a note when we had to fall back."""
    lang = (tgt_lang or "").lower().split("-")[0]
    if lang != "ja":
        return ("zh" if lang == "zh" else "13a"), None
    try:
        BLEU(tokenize="ja-mecab")
        return "ja-mecab", None
    except (ImportError, RuntimeError):
        return "char", "ja-mecab needs 'pip install sacrebleu[ja]'; scored with tok:char"


def _corpus_score(name: str, metric: Any, refs: Sequence[str], hyps: Sequence[str]) -> dict:
    _check_pairs(name, refs, hyps)
    if not refs:
        raise ValueError(f"{name}: no segments to score; pass at least one reference")
    result = metric.corpus_score(list(hyps), [list(refs)])
    return {"score": float(result.score), "signature": str(metric.get_signature())}


def bleu(refs: Sequence[str], hyps: Sequence[str], tgt_lang: str | None = "de") -> dict[str, Any]:
    """Corpus BLEU with sacrebleu, one reference per segment.

    Args:
        refs: reference translations.
        hyps: system translations, same length and order (else ``ValueError``; also if empty).
        tgt_lang: picks the tokenizer: "zh" -> zh, "ja" -> ja-mecab (char, with a "note", when
            MeCab is not installed), anything else -> 13a.

    Returns:
        {"score": 0-100, "signature": sacrebleu signature, "tokenize": name[, "note"]}.
    """
    tokenize, note = _bleu_tokenizer(tgt_lang)
    out = {**_corpus_score("bleu", BLEU(tokenize=tokenize), refs, hyps), "tokenize": tokenize}
    return {**out, "note": note} if note else out


def chrf(refs: Sequence[str], hyps: Sequence[str], word_order: int = 0) -> dict[str, Any]:
    """Corpus chrF (character n-grams up to 6, beta 2) with sacrebleu.

    Args:
        refs, hyps: as for ``bleu``.
        word_order: 0 for chrF, 2 for chrF++.

    Returns:
        {"score": 0-100, "signature": sacrebleu signature}.
    """
    return _corpus_score("chrf", CHRF(word_order=word_order), refs, hyps)


def comet(
    srcs: Sequence[str], refs: Sequence[str], hyps: Sequence[str], model_path: str,
    batch_size: int = 8, gpus: int = 0,
) -> dict[str, Any]:
    """COMET with the optional ``unbabel-comet`` package (imported here, ``ImportError`` if absent).

    Args:
        srcs, refs, hyps: source transcripts (what was said), references, system translations.
        model_path: a local checkpoint (``.../checkpoints/model.ckpt``) or a model id such as
            "Unbabel/wmt22-comet-da" (downloaded by COMET).
        batch_size, gpus: segments per forward pass; GPUs COMET may use (0 = CPU).

    Returns:
        {"score": system score (about 0-1), "scores": per-segment list, "model": model_path}.
    """
    try:
        from comet import download_model, load_from_checkpoint
    except ImportError as err:
        raise ImportError(
            "comet() needs the optional package unbabel-comet: pip install 'speechwire[comet]'"
        ) from err

    _check_pairs("comet", refs, hyps)
    if len(srcs) != len(hyps) or not hyps:
        raise ValueError(f"comet: got {len(srcs)} sources and {len(hyps)} hypotheses; need n > 0")
    path = model_path if os.path.exists(model_path) else download_model(model_path)
    data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(srcs, hyps, refs)]
    model = load_from_checkpoint(path)
    pred = model.predict(data, batch_size=batch_size, gpus=gpus, progress_bar=False)
    return {"score": float(pred.system_score), "scores": [float(x) for x in pred.scores], "model": model_path}


TASKS = ("asr", "st")


def score(
    task: str, refs: Sequence[str], hyps: Sequence[str], srcs: Sequence[str] | None = None,
    tgt_lang: str | None = None, comet_model: str | None = None,
) -> dict[str, Any]:
    """All the metrics for one task, as a JSON-serialisable dict.

    Args:
        task: "asr" (speech recognition) or "st" (speech translation); else ``ValueError``.
        refs, hyps: references and system outputs, same length and order.
        srcs: source transcripts; needed for COMET only.
        tgt_lang: language of refs/hyps: the WER normaliser for ASR (default "en"), the BLEU
            tokenizer for ST (default 13a).
        comet_model: checkpoint path or id; ST adds COMET when given.

    Returns:
        ASR: the ``wer`` dict plus "task". ST: {"task", "num_utterances", "bleu",
        "bleu_signature", "chrf", "chrf_signature"[, "bleu_note"][, "comet", "comet_model"]}.
    """
    if task == "asr":
        return {"task": task, **wer(refs, hyps, lang=tgt_lang or "en")}
    if task != "st":
        raise ValueError(f"unknown task {task!r}; available: {', '.join(TASKS)}")
    if comet_model is not None and srcs is None:
        raise ValueError("score: comet_model is set but srcs is None; pass the source transcripts")
    b, c = bleu(refs, hyps, tgt_lang=tgt_lang), chrf(refs, hyps)
    out: dict[str, Any] = {"task": task, "num_utterances": len(refs), "bleu": b["score"]}
    out.update(bleu_signature=b["signature"], chrf=c["score"], chrf_signature=c["signature"])
    if "note" in b:
        out["bleu_note"] = b["note"]
    if comet_model is not None and srcs is not None:
        out.update(comet=comet(srcs, refs, hyps, comet_model)["score"], comet_model=comet_model)
    return out


def real_time_factor(processing_seconds: float, audio_seconds: float) -> float:
    """Real-time factor (RTF): processing seconds / audio seconds; < 1 is faster than real time."""
    if audio_seconds <= 0:
        raise ValueError(f"real_time_factor: audio_seconds={audio_seconds} must be > 0")
    return processing_seconds / audio_seconds


def tokens_per_second(num_tokens: int, seconds: float) -> float:
    """Generation throughput: tokens produced / wall-clock seconds."""
    if seconds <= 0:
        raise ValueError(f"tokens_per_second: seconds={seconds} must be > 0")
    return num_tokens / seconds
