"""Text and audio sources of the demo corpus: Debian packages found on the user's machine.

- `trans-de-en`: the Ding dictionary (``Deutsch :: English`` lines) holds ~15k German/English
  sentence pairs; we speak the English side and keep the German side as the translation.
- `asterisk-core-sounds-en(-wav)`: 568 studio prompts by one female speaker (8 kHz) with
  transcripts in ``core-sounds-en.txt.gz`` (``name: text`` lines); real speech for ASR.
- `espeak-ng`: the synthesiser (run as a subprocess).
"""

from __future__ import annotations

import gzip
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

DING_PATH = Path("/usr/share/trans/de-en")
ASTERISK_SOUNDS_DIR = Path("/usr/share/asterisk/sounds/en")
ASTERISK_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
INSTALL_SCRIPT = "scripts/install_system_deps.sh"

MIN_WORDS = 4  # shorter dictionary "sentences" are mostly idioms/fragments
_MARKERS = re.compile(r"[{}\[\]()/~]")  # Ding annotations: {gender} [domain] (note) a/b ~ref
_BRACKETED = re.compile(r"\[[^\]]*\]|<[^>]*>|\([^)]*\)")  # asterisk sound descriptions
_NOT_SPEECH = re.compile(r"[*#@$=+/\\\[\]<>{}_|~^&%]")  # symbols a transcript cannot speak
_LETTER = re.compile(r"[A-Za-z]")


class MissingSystemDepsError(RuntimeError):
    """A Debian package the demo corpus needs is not installed."""


@dataclass(frozen=True)
class SentencePair:
    english: str
    german: str


@dataclass(frozen=True)
class Prompt:
    """One asterisk recording with its cleaned transcript."""

    name: str  # e.g. "vm-goodbye" or "digits/7"
    wav: Path
    text: str


# ---------------------------------------------------------------- system dependencies


def check_system_deps(real: bool = True) -> None:
    """Raise one clear error naming every missing package.

    Args:
        real: also require the asterisk recordings (real speech).

    Raises:
        MissingSystemDepsError: a one-line message with the apt-get command to run.
    """
    missing: list[str] = []
    if shutil.which("espeak-ng") is None:
        missing.append("espeak-ng")
    if not DING_PATH.is_file():
        missing.append("trans-de-en")
    if real and not ASTERISK_SOUNDS_DIR.is_dir():
        missing.append("asterisk-core-sounds-en-wav")
    if real and not ASTERISK_TRANSCRIPTS.is_file():
        missing.append("asterisk-core-sounds-en")
    if missing:
        raise MissingSystemDepsError(
            f"speechwire data synth needs {', '.join(missing)} (not found: espeak-ng on PATH, "
            f"{DING_PATH}, {ASTERISK_SOUNDS_DIR}, {ASTERISK_TRANSCRIPTS}); install with "
            f"`sudo apt-get install -y {' '.join(missing)}` or run {INSTALL_SCRIPT}"
        )


# ---------------------------------------------------------------- Ding sentence pairs


def is_sentence(text: str) -> bool:
    """True for a plain sentence: ends in . ? or !, has >= 4 words, carries no Ding markers."""
    return (
        text[-1:] in ".?!"
        and len(text.split()) >= MIN_WORDS
        and _MARKERS.search(text) is None
    )


def pairs_from_line(line: str) -> list[SentencePair]:
    """Sentence pairs of one Ding line ``de1; de2 | de3 :: en1; en2 | en3``.

    Alternatives (``|``) are aligned on both sides. Synonyms (``;``) are paired one to one when
    both sides list the same number, else only the first synonyms are paired.

    Args:
        line: one dictionary line; comments and malformed lines give [].

    Returns:
        The pairs whose both sides pass `is_sentence`, in line order.
    """
    line = line.strip()
    if not line or line.startswith("#") or line.count("::") != 1:
        return []
    de_side, en_side = line.split("::")
    de_alts, en_alts = de_side.split("|"), en_side.split("|")
    if len(de_alts) != len(en_alts):
        return []
    pairs: list[SentencePair] = []
    for de_alt, en_alt in zip(de_alts, en_alts):
        de_syn = [s.strip() for s in de_alt.split(";")]
        en_syn = [s.strip() for s in en_alt.split(";")]
        if len(de_syn) != len(en_syn):
            de_syn, en_syn = de_syn[:1], en_syn[:1]
        for de, en in zip(de_syn, en_syn):
            if is_sentence(de) and is_sentence(en):
                pairs.append(SentencePair(english=" ".join(en.split()), german=" ".join(de.split())))
    return pairs


def dedupe_pairs(pairs: list[SentencePair]) -> list[SentencePair]:
    """Keep the first pair of each English and each German text (case-insensitive).

    A pair whose English *or* German side was seen before is dropped, so no text can land in
    two splits.
    """
    seen_en: set[str] = set()
    seen_de: set[str] = set()
    out: list[SentencePair] = []
    for p in pairs:
        en, de = p.english.casefold(), p.german.casefold()
        if en in seen_en or de in seen_de:
            continue
        seen_en.add(en)
        seen_de.add(de)
        out.append(p)
    return out


def load_sentence_pairs(path: Path | None = None) -> list[SentencePair]:
    """All deduplicated sentence pairs of a Ding file, in file order.

    Args:
        path: the dictionary; None = `DING_PATH` (Debian `trans-de-en`).

    Returns:
        About 14.8k pairs for the Debian 12 dictionary.
    """
    pairs: list[SentencePair] = []
    with open(path or DING_PATH, encoding="utf-8", errors="replace") as f:
        for line in f:
            pairs.extend(pairs_from_line(line))
    return dedupe_pairs(pairs)


# ---------------------------------------------------------------- asterisk prompts


def parse_asterisk_transcripts(path: Path | None = None) -> dict[str, str]:
    """Raw ``name: text`` entries of ``core-sounds-en.txt.gz`` (or a plain text file).

    Args:
        path: the listing; None = `ASTERISK_TRANSCRIPTS`.

    Returns:
        name -> raw text, e.g. ``{"digits/7": "seven", "beep": "[this is a simple beep tone]"}``.
    """
    path = path or ASTERISK_TRANSCRIPTS
    opener = gzip.open if str(path).endswith(".gz") else open
    entries: dict[str, str] = {}
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(";") or ":" not in line:
                continue
            name, text = line.split(":", 1)
            if name.strip() and " " not in name.strip():
                entries[name.strip()] = text.strip()
    return entries


def clean_prompt_text(text: str) -> str | None:
    """Transcript of a prompt as spoken, or None when the prompt is not speech.

    Drops ``[descriptions]``, ``<sounds>`` and ``(notes)``, turns ``...`` into a pause, strips
    quotes and stray punctuation at the start; rejects texts with no letters left or with
    symbols whose spoken form is unknown (``*``, ``#``, ``@`` ...).

    Examples:
        ``"...has joined the conference."`` -> ``"has joined the conference."``;
        ``"[ascending tones]"`` -> None; ``"press * to pause"`` -> None.
    """
    text = _BRACKETED.sub(" ", text)
    text = text.replace("...", " ").replace("…", " ").replace('"', "")
    text = " ".join(text.split()).lstrip(" ,.;:!?-")
    if not _LETTER.search(text) or _NOT_SPEECH.search(text):
        return None
    return text


def load_asterisk_prompts(
    sounds_dir: Path | None = None, transcripts: Path | None = None
) -> list[Prompt]:
    """Recordings that have a speech-like transcript, sorted by name.

    Args:
        sounds_dir: folder of ``<name>.wav`` files (names may contain ``/``); None = default.
        transcripts: the ``name: text`` listing; None = `ASTERISK_TRANSCRIPTS`.

    Returns:
        One `Prompt` per recording found with a cleaned transcript (~540 on Debian 12).
    """
    prompts: list[Prompt] = []
    for name, raw in sorted(parse_asterisk_transcripts(transcripts).items()):
        wav = (sounds_dir or ASTERISK_SOUNDS_DIR) / f"{name}.wav"
        text = clean_prompt_text(raw)
        if text is not None and wav.is_file():
            prompts.append(Prompt(name=name, wav=wav, text=text))
    return prompts
