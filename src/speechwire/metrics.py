"""Scores for automatic speech recognition (ASR) and speech translation (ST).

    normalize_text("Twenty-one [noise] cats, don't they?")   # -> "21 cats don't they"
    wer(["the cat sat on the mat"], ["the cat sat on mat"])  # -> {"wer": 0.1667, ...}
    score("st", refs, hyps, tgt_lang="de")                   # -> {"bleu": ..., "chrf": ...}

Word error rate (WER) comes from jiwer, BLEU and chrF from sacrebleu (corpus level), COMET
from the optional ``unbabel-comet`` package (``pip install 'speechwire[comet]'``).

English normaliser (``lang="en"``), applied to references and hypotheses alike; in the spirit
of Whisper's ``EnglishTextNormalizer`` but much smaller:
  1. NFKC, lower-case, accents stripped ("café" -> "cafe"); curly apostrophes -> "'".
  2. Text in square brackets or parentheses is dropped ("[noise]", "(laughs)").
  3. Punctuation and symbols become spaces, except: an apostrophe between two letters or
     digits stays ("don't"; contractions are *not* expanded), "." between two digits stays
     ("3.5"), "," between two digits goes ("1,000" -> "1000"), "%" becomes " percent".
  4. Hesitations are dropped: uh, um, hmm, mm, mmm, mhm.
  5. Number words become digits (the one direction we normalise): "twenty one" -> "21",
     "one hundred and five" -> "105", "three point five" -> "3.5", "two thousand" -> "2000",
     "twenty first" -> "21st". Digits are left alone, so "21" == "twenty one".
     Limits: "twenty twenty" -> "20 20" (no years), "a hundred" stays; "no one" -> "no 1"
     and "a second" -> "a 2nd" happen on both sides, so WER is unaffected.
  6. Whitespace collapsed.
Other languages (basic normaliser): NFKC, lower-case, brackets and punctuation/symbols removed
(intra-word apostrophes kept), whitespace collapsed; accents and numbers are kept as written.
For languages written without spaces (zh, ja, th) WER is not meaningful; use a character rate.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from typing import Any, Sequence

import jiwer
from sacrebleu.metrics import BLEU, CHRF

_BRACKETED = re.compile(r"\[[^\]]*\]|\([^)]*\)")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_FILLERS = frozenset({"uh", "um", "hmm", "mm", "mmm", "mhm"})

_UNITS = "zero one two three four five six seven eight nine".split()
_TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9}
# word -> (value, kind); kind orders what may follow what inside one number
_CARDINALS: dict[str, tuple[int, str]] = {
    "zero": (0, "zero"),
    **{w: (i + 1, "unit") for i, w in enumerate(_UNITS[1:])},
    **{w: (10 + i, "teen") for i, w in enumerate(_TEENS)},
    **{w: (20 + 10 * i, "tens") for i, w in enumerate(_TENS)},
    "hundred": (100, "hundred"),
    **{w: (v, "scale") for w, v in _SCALES.items()},
}
_IRREGULAR_ORDINALS = {"first": "one", "second": "two", "third": "three", "fifth": "five",
                       "eighth": "eight", "ninth": "nine", "twelfth": "twelve"}
_REGULAR = [w for w in _CARDINALS if w not in {"zero", *_IRREGULAR_ORDINALS.values(), *_TENS}]
_ORDINALS = {**{w + "th": w for w in _REGULAR}, **{w[:-1] + "ieth": w for w in _TENS},
             **_IRREGULAR_ORDINALS}
# word -> (value, kind, is_ordinal)
_NUMBER_WORDS = {**{w: (*v, False) for w, v in _CARDINALS.items()},
                 **{w: (*_CARDINALS[c], True) for w, c in _ORDINALS.items()}}
_CAN_FOLLOW = {  # kind -> kinds of the previous word that allow it to continue a number
    "unit": {"tens", "hundred", "scale", "and"},
    "teen": {"hundred", "scale", "and"},
    "tens": {"hundred", "scale", "and"},
    "zero": set(),  # only on its own ("zero point five")
}
_AFTER_AND = {"unit", "teen", "tens"}  # "hundred and five"


def _ordinal_suffix(n: int) -> str:
    if n % 100 in (11, 12, 13):
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _parse_number(tokens: list[str], i: int) -> tuple[str, int] | None:
    """Read the longest number starting at tokens[i]; returns (digits, next index) or None."""
    total, current, last, last_scale, j, ordinal = 0, 0, "start", math.inf, i, False
    while j < len(tokens) and not ordinal:
        word = _NUMBER_WORDS.get(tokens[j])
        if word is None:  # "and" may join "hundred and five", "thousand and twenty"
            nxt = _NUMBER_WORDS.get(tokens[j + 1], (0, "", 0))[1] if j + 1 < len(tokens) else ""
            if tokens[j] == "and" and last in ("hundred", "scale") and nxt in _AFTER_AND:
                last, j = "and", j + 1
                continue
            break
        value, kind, ordinal = word
        if kind in _CAN_FOLLOW and (last == "start" or last in _CAN_FOLLOW[kind]):
            current += value
        elif kind == "hundred" and 0 < current < 100:
            current *= 100
        elif kind == "scale" and 0 < current and value < last_scale:
            total, current, last_scale = total + current * value, 0, value
        else:
            ordinal = False  # this word starts the next number; it is not consumed
            break
        last, j = kind, j + 1
    if j == i:  # "hundred", "thousand" alone are left as words
        return None
    number = str(total + current)
    if ordinal:
        return number + _ordinal_suffix(total + current), j
    if j + 1 < len(tokens) and tokens[j] == "point" and tokens[j + 1] in _UNITS:
        digits, j = [], j + 1
        while j < len(tokens) and tokens[j] in _UNITS:
            digits.append(str(_UNITS.index(tokens[j])))
            j += 1
        number += "." + "".join(digits)
    return number, j


def _words_to_digits(tokens: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(tokens):
        word, i = _parse_number(tokens, i) or (tokens[i], i + 1)
        out.append(word)
    return out


def _strip_punctuation(text: str, english: bool) -> str:
    """Punctuation and symbols -> spaces, keeping intra-word apostrophes (and, for English,
    decimal points; thousands commas dropped; "%" -> " percent")."""
    chars = []
    for k, ch in enumerate(text):
        cat = unicodedata.category(ch)
        if cat[0] not in "PSZC":
            chars.append(ch)
            continue
        before = text[k - 1] if k > 0 else " "
        after = text[k + 1] if k + 1 < len(text) else " "
        if ch == "'" and before.isalnum() and after.isalnum():
            chars.append(ch)
        elif english and ch in ".," and before.isdecimal() and after.isdecimal():
            chars.append("." if ch == "." else "")
        elif english and ch == "%":
            chars.append(" percent ")
        else:
            chars.append(" ")
    return "".join(chars)


def normalize_text(text: str, lang: str = "en") -> str:
    """Normalise a transcript before WER (rules in the module docstring).

    Args:
        text: one reference or hypothesis.
        lang: ISO 639-1 code; "en" (or "en-US"...) picks the English normaliser, others the basic.

    Returns:
        Lower-case words separated by single spaces; ``normalize_text`` of it changes nothing.
    """
    english = lang.lower().split("-")[0] == "en"
    text = unicodedata.normalize("NFKC", text).lower().translate(_APOSTROPHES)
    if english:  # strip accents: decompose, drop combining marks, recompose
        text = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in text if not unicodedata.combining(ch))
        text = unicodedata.normalize("NFKC", text).lower()
    text = _strip_punctuation(_BRACKETED.sub(" ", text), english)
    tokens = text.split()
    if english:
        tokens = _words_to_digits([t for t in tokens if t not in _FILLERS])
    return " ".join(tokens)


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
    scores = [float(x) for x in pred.scores]
    return {"score": float(pred.system_score), "scores": scores, "model": model_path}


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
