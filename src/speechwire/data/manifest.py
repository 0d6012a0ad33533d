"""Manifests: JSONL, one utterance per line, validated with file and line numbers.

    {"audio": "wav/ted_1.wav", "offset": 12.3, "duration": 4.5, "transcript": "Hello.",
     "translation": "Hallo.", "src_lang": "en", "tgt_lang": "de"}

Relative audio paths are resolved against the manifest's folder. `task` defaults to "st" when a
translation is present, else "asr"; `id` defaults to the file stem (+ offset in ms when the line
is a segment, + target language for ST). A missing duration is read from the audio header.
Keys the schema does not know are kept in `Utterance.meta` and written back.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from speechwire.audio import AudioInfo, audio_info
from speechwire.files import write_atomic
from speechwire.schema import TASKS


class ManifestError(ValueError):
    """A manifest line is invalid; the message names the file, the line and the fix."""


LANGUAGE_NAMES = {
    "ar": "Arabic", "ca": "Catalan", "cs": "Czech", "cy": "Welsh", "da": "Danish",
    "de": "German", "el": "Greek", "en": "English", "es": "Spanish", "et": "Estonian",
    "fa": "Persian", "fi": "Finnish", "fr": "French", "he": "Hebrew", "hi": "Hindi",
    "hu": "Hungarian", "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ko": "Korean",
    "lv": "Latvian", "mn": "Mongolian", "nl": "Dutch", "no": "Norwegian", "pl": "Polish",
    "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sk": "Slovak", "sl": "Slovenian",
    "sv": "Swedish", "ta": "Tamil", "th": "Thai", "tr": "Turkish", "uk": "Ukrainian",
    "ur": "Urdu", "vi": "Vietnamese", "zh": "Chinese",
}  # ISO 639-1 -> English name, as used in prompts ("from English into German")


def language_name(code: str) -> str:
    """English name of an ISO 639-1 code ("de" -> "German", "zh-CN" -> "Chinese"); unknown as-is."""
    base = code.replace("_", "-").split("-")[0].lower()
    return LANGUAGE_NAMES.get(base, code)


@dataclass
class Utterance:
    """One training/evaluation example: an audio file (or a segment of it) and its texts."""

    audio: str  # path; absolute after load_manifest
    transcript: str  # source-language text (ASR target, CTC labels)
    translation: str | None = None  # target-language text (ST target)
    offset: float = 0.0  # seconds
    duration: float | None = None  # seconds; None: to the end of the file
    src_lang: str = "en"
    tgt_lang: str | None = None
    task: str = ""  # "asr" | "st"; "" derives it from `translation`
    id: str = ""  # "" derives it from the file name, offset and target language
    meta: dict[str, Any] = field(default_factory=dict)  # extra manifest keys, kept verbatim

    def __post_init__(self) -> None:
        if not self.task:
            self.task = "st" if self.translation is not None else "asr"
        if not self.id:
            self.id = Path(self.audio).stem
            if self.offset or self.duration is not None:
                self.id += f"_{int(round(self.offset * 1000))}"
            if self.task == "st" and self.tgt_lang:
                self.id += f"_{self.tgt_lang}"

    @property
    def target(self) -> str:
        """The text the LLM must produce: the translation for ST, the transcript for ASR."""
        return (self.translation or "") if self.task == "st" else self.transcript

    def to_dict(self, base_dir: str | Path | None = None) -> dict[str, Any]:
        """JSON-ready dict; `audio` is made relative to `base_dir` when it lies inside it."""
        audio = self.audio
        if base_dir is not None:
            rel = os.path.relpath(os.path.abspath(audio), os.path.abspath(base_dir))
            if not rel.startswith(".."):
                audio = rel
        d = {"id": self.id, "audio": audio, "task": self.task, "offset": self.offset or None,
             "duration": None if self.duration is None else round(self.duration, 6), "src_lang": self.src_lang,
             "transcript": self.transcript, "tgt_lang": self.tgt_lang, "translation": self.translation}
        return {**{k: v for k, v in d.items() if v is not None}, **self.meta}  # no offset 0 nor unknowns


_STR_FIELDS = ("audio", "transcript", "translation", "src_lang", "tgt_lang", "task", "id")
_FIELDS = (*_STR_FIELDS, "offset", "duration")
MAX_SECONDS = 1e6  # an offset or duration beyond this (11 days) is a unit mistake (ms, samples)


@lru_cache(maxsize=None)
def cached_audio_info(path: str) -> AudioInfo:
    """`audio_info` memoised per path (headers are read once per file per process)."""
    return audio_info(path)


def _number(obj: dict, key: str) -> float | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"'{key}' must be a finite number of seconds, got {v!r:.80}")
    if abs(v) > MAX_SECONDS:
        raise ValueError(f"'{key}' is {v:.3g} s, more than {MAX_SECONDS:.0e} s; it must be in seconds")
    return float(v)


def parse_utterance(obj: Any, base_dir: Path, check_audio: bool = True) -> Utterance:
    """Validate one decoded manifest line and build its Utterance.

    Args:
        obj: the decoded JSON value of the line.
        base_dir: folder that relative audio paths are resolved against.
        check_audio: check the file exists; read the header when `duration` is missing.

    Returns:
        the Utterance, with an absolute audio path (and a duration when check_audio).

    Raises:
        ValueError: what is wrong with the line (load_manifest adds file and line number).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("audio", "transcript"):
        if key not in obj or obj[key] is None:
            raise ValueError(f"'{key}' is required")
    for key in _STR_FIELDS:
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise ValueError(f"'{key}' must be a string, got {type(obj[key]).__name__} {obj[key]!r}")
    offset, duration = _number(obj, "offset") or 0.0, _number(obj, "duration")
    if offset < 0:
        raise ValueError(f"'offset' must be >= 0, got {offset}")
    if duration is not None and duration <= 0:
        raise ValueError(f"'duration' must be > 0, got {duration}")
    task = obj.get("task") or ("st" if obj.get("translation") is not None else "asr")
    if task not in TASKS:
        raise ValueError(f"'task' must be one of {TASKS}, got {task!r}")
    if task == "st":
        for key in ("translation", "tgt_lang"):
            if not obj.get(key):
                raise ValueError(f"'{key}' is required for task 'st'")
    if not obj["transcript"].strip() and task == "asr":
        raise ValueError("'transcript' is empty; an ASR line needs the text to produce")
    try:
        audio = Path(obj["audio"]).expanduser()
    except RuntimeError as e:  # "~nobody/x.wav": no such user
        raise ValueError(f"'audio' path {obj['audio']!r:.200} cannot be expanded ({e})") from None
    audio = audio if audio.is_absolute() else base_dir / audio
    utt = Utterance(
        audio=str(audio), transcript=obj["transcript"], translation=obj.get("translation"),
        offset=offset, duration=duration, src_lang=obj.get("src_lang") or "en", tgt_lang=obj.get("tgt_lang"),
        task=task, id=obj.get("id") or "", meta={k: v for k, v in obj.items() if k not in _FIELDS},
    )  # the id derives from the line as written, before the duration is filled in
    if check_audio:
        try:
            is_dir, is_file = audio.is_dir(), audio.is_file()
        except OSError as e:  # a name too long for the file system
            raise ValueError(f"'audio' path {str(audio)[:200]!r} is not usable ({e.strerror})") from None
        if is_dir:
            raise ValueError(f"audio {audio} is a folder, not an audio file; give the path of one file per line")
        if not is_file:
            raise ValueError(f"audio file {audio} does not exist; fix the path (relative paths "
                             f"are resolved against {base_dir})")
        if duration is None:
            info = cached_audio_info(str(audio))  # AudioError is a ValueError: load_manifest adds file and line
            if offset >= info.duration:
                raise ValueError(f"'offset' {offset} is beyond the end of {audio} ({info.duration:.3f} s)")
            utt.duration = info.duration - offset
    return utt


def load_manifest(path: str | Path, skip_invalid: bool = False, check_audio: bool = True) -> list[Utterance]:
    """Read and validate a JSONL manifest.

    Args:
        path: the manifest; blank lines are ignored.
        skip_invalid: drop bad lines (one warning with the count and the first problems) instead
            of raising.
        check_audio: check each audio file exists and read missing durations from headers.

    Returns:
        the valid utterances in file order.

    Raises:
        ManifestError: "train.jsonl line 17: 'translation' is required for task 'st'" (first
            bad line), unless skip_invalid; also for a missing/empty manifest.
    """
    try:
        path = Path(path).expanduser()
    except RuntimeError as e:  # "~nobody/train.jsonl": no such user
        raise ManifestError(f"manifest {str(path)[:200]!r}: cannot expand '~' ({e})") from None
    if path.is_dir():
        raise ManifestError(f"manifest {path} is a folder; pass a JSONL file (one JSON object per line)")
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    base_dir = path.resolve().parent
    utts: list[Utterance] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise ValueError(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                     "a manifest is JSONL text") from None
                except json.JSONDecodeError as e:
                    raise ValueError(f"invalid JSON ({e.msg} at column {e.colno})") from None
                except RecursionError:
                    raise ValueError("invalid JSON (nested too deeply)") from None
                utt = parse_utterance(obj, base_dir, check_audio)
                if utt.id in seen:
                    raise ValueError(f"id {utt.id!r} is already used on line {seen[utt.id]}; "
                                     f"give each line a unique 'id'")
            except ValueError as e:
                msg = f"{path.name} line {lineno}: {e}"
                if not skip_invalid:
                    raise ManifestError(f"{msg} (set data.skip_invalid=true to skip bad lines)") from None
                problems.append(msg)
                continue
            seen[utt.id] = lineno
            utts.append(utt)
    if problems:
        warnings.warn(f"{path}: skipped {len(problems)} invalid line(s), kept {len(utts)}; first: "
                      + "; ".join(problems[:3]), stacklevel=2)
    if not utts:
        raise ManifestError(f"{path}: no valid utterances" + (f" ({len(problems)} invalid)" if problems else ""))
    return utts


def write_manifest(path: str | Path, utts: Iterable[Utterance]) -> Path:
    """Write utterances as JSONL (UTF-8); audio paths inside the manifest's folder become relative.

    Args:
        path: output file; parent folders are created.
        utts: the utterances.

    Returns:
        the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    text = "".join(json.dumps(u.to_dict(base), ensure_ascii=False) + "\n" for u in utts)
    return write_atomic(path, text, "manifest")


def utterance_duration(utt: Utterance) -> float:
    """Seconds of audio the utterance covers (from the manifest, else from the header)."""
    if utt.duration is not None:
        return utt.duration
    return cached_audio_info(str(utt.audio)).duration - utt.offset
