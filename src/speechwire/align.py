"""The alignment stage: the adapter learns to write in the LLM's token-embedding space, LLM-free.

A frozen LLM learns to read projected speech only after ~100k utterances of end-to-end training
(docs/demo.md), because every step pays for the LLM. Here a step pays only for the adapter: each
adapter output is scored against the frozen LLM's own token-embedding table,

    logits[t, k] = cos(y_t, E[v_k]) / tau        k over the training transcripts' token ids v_k
    logits[t, 0] = cos(y_t, b) / tau             b: a learned blank vector, tau learned

and a CTC loss over those logits asks the outputs to spell the transcript in LLM tokens (blank
between them). SFM features come from the feature cache, so big batches and thousands of steps
fit a CPU. The LM stage then starts from this adapter (`train.init_from`, or `align.steps` runs
both in one command); with `align.collapse` the LLM sees only the non-blank outputs, one mean
vector per run of the same token: close to the embeddings of the spoken words.

Which adapters: every one whose outputs outnumber the tokens (CTC needs T' >= L): base, mlp,
linear, conv, ctc; wlqformer only with enough queries per second (the paper's 0.33 s windows give
3 outputs/s, fewer than the ~3.5 tokens/s of English speech; use queries_per_window=2). CIF emits
one output per token in training, so its outputs are scored position by position (cross-entropy).

Letters: B batch, T' adapter outputs, d LLM width, K alignment vocabulary (+1 for the blank).
"""

from __future__ import annotations

import math
import re
import unicodedata
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from speechwire.data import eval_loader
from speechwire.data.batch import pad_right
from speechwire.lexicon import WORD_KEYS, WordScorer, read_word_list
from speechwire.metrics import edit_distance, score
from speechwire.ngram import TokenNgramLM

BLANK = 0  # index of the blank in the head's logits; token v_k is index k + 1


class TiedCTCHead(nn.Module):
    """Scores adapter outputs against the frozen LLM token embeddings of a fixed vocabulary.

    Args:
        table: (V, d) the LLM's input-embedding weight (read, never trained).
        temperature: initial tau.
        init: start the blank from the table's mean (False: zeros, for a checkpoint to replace).

    The vocabulary (`vocab_ids`, (K,)) is set from the training transcripts with `set_vocab` and
    saved in checkpoints (it is a buffer), so a loaded head decodes the same tokens.
    """

    def __init__(self, table: torch.Tensor, temperature: float = 0.1, init: bool = True) -> None:
        super().__init__()
        self.table = table  # (V, d): a reference to the frozen LLM table, not a parameter
        d = table.shape[1]
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        # the blank starts at the mean token direction plus noise: distinct from every token
        # (init=False: zeros, for a checkpoint to fill without a pass over the table)
        mean = table.detach().float().mean(0) if init else torch.zeros(d)
        noise = torch.randn(d, generator=torch.Generator().manual_seed(0)) * mean.norm() / d ** 0.5
        self.blank = nn.Parameter(mean + noise)  # (d,)
        self.register_buffer("vocab_ids", torch.zeros(0, dtype=torch.long))  # (K,)
        self._keys: torch.Tensor | None = None  # caches of the frozen table's vocabulary rows
        self._rows: torch.Tensor | None = None
        self.lm: TokenNgramLM | None = None  # for align.decode=beam; saved as two data tensors
        self._lm_tensors: tuple[torch.Tensor, torch.Tensor] | None = None
        self.words: WordScorer | None = None  # a chars head's lexicon and word LM (align.word_weight)
        self._word_tensors: dict[str, torch.Tensor] = {}

    def set_vocab(self, ids: Sequence[int]) -> None:
        self.vocab_ids = torch.tensor(sorted(set(int(i) for i in ids)), dtype=torch.long,
                                      device=self.blank.device)
        self._keys = self._rows = None

    def set_lm(self, lm: TokenNgramLM | None, tensors: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Use `lm` for beam search; `tensors`: its `to_tensors()` when already at hand (a loaded checkpoint)."""
        self.lm = lm
        self._lm_tensors = tensors if tensors is not None or lm is None else lm.to_tensors()

    def set_words(self, words: WordScorer | None, tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Use `words` in beam search; `tensors`: its `to_tensors()` when already at hand."""
        self.words = words
        self._word_tensors = {} if words is None else tensors if tensors is not None else words.to_tensors()

    def data_tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold besides weights: the vocabulary, the n-gram LM and the
        lexicon, if any."""
        data = {"vocab_ids": self.vocab_ids, **self._word_tensors}
        if self._lm_tensors is not None:
            data["lm_grams"], data["lm_counts"] = self._lm_tensors
        return data

    def load_data(self, data: dict[str, torch.Tensor]) -> None:
        """Set the vocabulary, LM and lexicon from `data_tensors()`' keys (missing ones: none)."""
        self.set_vocab(data["vocab_ids"].tolist())
        self.set_lm(None)
        if data.get("lm_grams") is not None and data.get("lm_counts") is not None:
            grams, counts = data["lm_grams"].cpu(), data["lm_counts"].cpu()
            self.set_lm(TokenNgramLM.from_tensors(grams, counts, len(self.vocab_ids)), (grams, counts))
        tensors = {k: data[k].cpu() for k in WORD_KEYS if data.get(k) is not None}
        self.set_words(WordScorer.from_tensors(tensors) if len(tensors) == len(WORD_KEYS) else None, tensors)

    def keys(self) -> torch.Tensor:
        """(K, d) unit-norm token embeddings of the vocabulary (cached; the table is frozen)."""
        K = len(self.vocab_ids)
        if self._keys is None or self._keys.device != self.blank.device or self._keys.shape[0] != K + 1:
            self._keys = torch.empty(K + 1, self.table.shape[1], device=self.blank.device)  # row 0: forward's blank
            for i in range(0, K, 4096):  # in chunks: no second (K, d) copy at any time
                rows = self.table.detach()[self.vocab_ids[i: i + 4096].to(self.table.device)]
                self._keys[1 + i: 1 + i + 4096] = F.normalize(rows.float().to(self.blank.device), dim=-1)
        return self._keys[1:]

    def forward(self, y: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T', d) adapter outputs -> (B, T', K + 1) logits; index 0 is the blank.

        candidates: (C,) sorted head indices (1..K) to score instead of the whole vocabulary
        (training: see `sample_candidates`); the logits are then (B, T', C + 1).
        """
        if len(self.vocab_ids) == 0:
            raise RuntimeError("the alignment head has no vocabulary; train.stage=align sets it from the "
                               "training transcripts, a checkpoint loads it")
        blank = F.normalize(self.blank.float(), dim=-1)
        if candidates is None and not torch.is_grad_enabled():  # inference: the cached rows, no (K + 1, d) copy
            self.keys()
            keys = self._keys
            keys[0] = blank
        else:
            keys = torch.cat([blank[None], self.keys() if candidates is None else self.keys()[candidates - 1]])
        return self.log_scale.exp() * F.normalize(y.float(), dim=-1) @ keys.T

    def sample_candidates(self, labels: torch.Tensor, label_lengths: torch.Tensor, negatives: int) -> torch.Tensor | None:
        """The head indices a training step scores: every label of the batch plus `negatives` random
        others (torch RNG), sorted; None when that would be most of the vocabulary anyway. Scoring
        ~2k of SmolLM2's ~12k transcript tokens makes a CPU step several times cheaper."""
        K = len(self.vocab_ids)
        valid = torch.arange(labels.shape[1], device=labels.device)[None] < label_lengths[:, None]
        used = torch.unique(labels[valid])
        if negatives <= 0 or len(used) + negatives >= K // 2:
            return None
        drawn = torch.randint(1, K + 1, (negatives,)).to(labels.device)
        return torch.unique(torch.cat([used, drawn]))

    def posteriors(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, T', K + 1) logits -> (B, T', K) token posteriors, blank left out and the rest renormalised."""
        return logits[..., 1:].float().softmax(-1)

    def readout(self, probs: torch.Tensor) -> torch.Tensor:
        """(..., K) token posteriors -> (..., d): the tokens' own LLM embeddings weighted by them."""
        if self._rows is None or self._rows.device != probs.device or self._rows.shape[0] != len(self.vocab_ids):
            self._rows = self.table.detach()[self.vocab_ids.to(self.table.device)].float().to(probs.device)  # (K, d)
        return probs @ self._rows

    def posterior_embeddings(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, T', K + 1) logits -> (B, T', d): LegoSLM's readout, the posterior-weighted token
        embeddings (`readout(posteriors(logits))`). The LLM then reads its own vocabulary, as in the copy test."""
        return self.readout(self.posteriors(logits))

    def head_indices(self, token_ids: Iterable[Sequence[int]]) -> list[list[int]]:
        """LLM token ids -> head indices (1..K), per sequence; tokens outside the vocabulary dropped."""
        index = {int(v): k + 1 for k, v in enumerate(self.vocab_ids.tolist())}
        return [[index[t] for t in ids if t in index] for ids in token_ids]

    def token_rows(self, ids: Sequence[int]) -> torch.Tensor:
        """LLM token ids -> (L, d) their own embedding rows (`readout` of one-hot posteriors over them)."""
        ids = torch.as_tensor(list(ids), dtype=torch.long, device=self.table.device)
        return self.table.detach()[ids].float().to(self.blank.device)  # no (K, d) copy

    def labels(self, token_ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Map LLM token ids to head indices; tokens outside the vocabulary are dropped (counted).

        Returns:
            labels (B, L) padded with 0 (ignored past the lengths), lengths (B,), dropped tokens.
        """
        mapped = self.head_indices(token_ids)
        dropped = sum(len(ids) for ids in token_ids) - sum(len(m) for m in mapped)
        lengths = torch.tensor([len(m) for m in mapped], dtype=torch.long, device=self.blank.device)
        labels = torch.zeros(len(mapped), max([1, *map(len, mapped)]), dtype=torch.long, device=self.blank.device)
        for i, m in enumerate(mapped):
            labels[i, : len(m)] = torch.tensor(m, dtype=torch.long)
        return labels, lengths, dropped

    def token_ids(self, indices: torch.Tensor) -> list[int]:
        """Head indices (not blank) -> LLM token ids."""
        return self.vocab_ids[(indices - 1).clamp(min=0)].tolist()


def restrict_labels(labels: torch.Tensor, candidates: torch.Tensor | None) -> torch.Tensor:
    """Head indices -> positions in the candidates' logits (blank stays 0); unchanged without candidates."""
    if candidates is None:
        return labels
    return torch.searchsorted(candidates, labels.clamp(min=1)) + 1


def alignment_loss(logits: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
                   label_lengths: torch.Tensor, one_per_token: bool = False) -> torch.Tensor:
    """Mean per-token loss of the outputs spelling the labels.

    Args:
        logits: (B, T', K + 1) from TiedCTCHead.
        lengths: (B,) valid outputs.
        labels, label_lengths: (B, L), (B,) head indices (from TiedCTCHead.labels).
        one_per_token: the adapter emits one output per token (CIF in training): cross-entropy of
            output i against token i for items whose counts match, instead of CTC.
    """
    if one_per_token:
        T = logits.shape[1]
        match = lengths == label_lengths
        if not bool(match.any()):
            return logits.sum() * 0.0
        L = min(T, labels.shape[1])
        valid = (torch.arange(L, device=logits.device)[None] < label_lengths[:, None]) & match[:, None]  # (B, L)
        return F.cross_entropy(logits[:, :L][valid], labels[:, :L][valid])
    logp = logits.log_softmax(-1).transpose(0, 1)  # (T', B, K + 1)
    keep = label_lengths > 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    loss = F.ctc_loss(logp[:, keep], labels[keep], lengths[keep], label_lengths[keep], blank=BLANK,
                      reduction="sum", zero_infinity=True)
    return loss / label_lengths[keep].sum().clamp(min=1)


def greedy_runs(logits: torch.Tensor, length: int) -> list[tuple[int, int, int]]:
    """One item's best path: (label, start, end) runs of equal argmax, blanks included. (T', K+1) in."""
    best = logits[:length].argmax(-1).tolist()
    runs: list[tuple[int, int, int]] = []
    for t, k in enumerate(best):
        if runs and runs[-1][0] == k:
            runs[-1] = (k, runs[-1][1], t + 1)
        else:
            runs.append((k, t, t + 1))
    return runs


def greedy_decode(head: TiedCTCHead, logits: torch.Tensor, lengths: torch.Tensor,
                  one_per_token: bool = False) -> list[list[int]]:
    """CTC best path -> LLM token ids per item (repeats merged, blanks dropped). one_per_token (CIF):
    each output's best token other than the blank, nothing merged."""
    if one_per_token:
        best = logits[..., 1:].argmax(-1) + 1  # (B, T')
        return [head.token_ids(best[b, : int(lengths[b])]) for b in range(logits.shape[0])]
    runs = [greedy_runs(logits[b], int(lengths[b])) for b in range(logits.shape[0])]
    return [head.token_ids(torch.tensor([k for k, _, _ in r if k != BLANK], dtype=torch.long, device=logits.device))
            for r in runs]


def collapse(embeds: torch.Tensor, lengths: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep one mean vector per non-blank run of the best path (CTC compression on the tied head).

    An item whose outputs are all blank keeps its single least-blank output, so the LLM always sees
    some speech. Per-item decisions only: padding never changes an item's result.

    Args:
        embeds: (B, T', d) adapter outputs; lengths (B,); logits (B, T', K + 1).
    Returns:
        (B, T'', d) zero-padded, (B,) lengths.
    """
    items = []
    for b in range(embeds.shape[0]):
        n = int(lengths[b])
        runs = [(s, e) for k, s, e in greedy_runs(logits[b].detach(), n) if k != BLANK]
        if not runs:
            t = int(logits[b, :n, BLANK].argmin()) if n else 0
            runs = [(t, t + 1)]
        items.append(torch.stack([embeds[b, s:e].mean(0) for s, e in runs]))  # (runs, d)
    return pad_right(items)


def time_mask(hidden: torch.Tensor, lengths: torch.Tensor, share: float, span: int = 10) -> torch.Tensor:
    """Zero about `share` of each item's valid frames in spans of `span` frames (torch RNG: seeded,
    restored on resume). (B, T, d) -> (B, T, d)."""
    if share <= 0:
        return hidden
    B, T, _ = hidden.shape
    keep = torch.ones(B, T, dtype=hidden.dtype, device=hidden.device)
    for b in range(B):
        n = int(lengths[b])
        for _ in range(int(share * n / span + torch.rand(()).item())):
            start = int(torch.randint(0, max(1, n - span), ()))
            keep[b, start: start + span] = 0
    return hidden * keep[..., None]


def transcript_vocab(transcripts: Sequence[str], text_ids) -> list[int]:
    """Sorted set of the LLM token ids of the transcripts (`text_ids`: str -> list[int])."""
    return sorted({t for text in transcripts if text for t in text_ids(text)})


VOCABS = ("transcripts", "words", "full", "chars")
# align.vocab=chars: the head spells lower-case words letter by letter in the LLM's own one-character
# tokens, so every sound is heard in many words (a word-piece head learns each piece from its own few clips).
# `spell` writes numbers as words, so the digits are never a label now; they stay in the alphabet so
# that heads trained before (digits as digits) keep their vocabulary
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789' "
# A token that spells a piece of a Latin-script word (lower case, Capitalised or a short acronym), a
# contraction, a number up to 3 digits or common punctuation, with or without its leading space, or a space.
# Leaves out code (camelCase, snake_case, markup), other scripts and byte pieces.
WORD_PIECE = re.compile(r"^ ?(?:[A-Z]?[a-zà-ÿß]+|[A-ZÀ-Þ]{1,3}|'[a-z]{1,2}|[0-9]{1,3}|[.,!?;:'\"()&%$-]{1,2})$|^ $")


def word_vocab(tokenizer) -> list[int]:
    """LLM token ids whose text is a word piece (`WORD_PIECE`): 62,407 of Qwen2.5's 151,936 tokens."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return [i for i, text in enumerate(texts) if WORD_PIECE.match(text)]


_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth", "nine": "ninth",
            "twelve": "twelfth"}


def number_words(n: int) -> str:
    """A whole number as spoken English words: 7 -> "seven", 305 -> "three hundred five",
    21000 -> "twenty one thousand"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + (f" {_ONES[n % 10]}" if n % 10 else "")
    if n < 1000:
        return f"{_ONES[n // 100]} hundred" + (f" {number_words(n % 100)}" if n % 100 else "")
    for scale, name in ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand")):
        if n >= scale:
            return f"{number_words(n // scale)} {name}" + (f" {number_words(n % scale)}" if n % scale else "")
    raise AssertionError(n)


def _say_number(match: re.Match) -> str:
    """One number of a transcript as it is read aloud (`spell`): groups digits, decimals, suffix."""
    digits, decimals, suffix = match.group(1), match.group(2), (match.group(3) or "").lower()
    if len(digits) > 1 and digits.startswith("0") or len(digits) > 15:  # "007", long codes: digit by digit
        words = " ".join(_ONES[int(d)] for d in digits)
    elif 1100 <= int(digits) <= 1999 and not suffix and not decimals:  # a year: "nineteen ninety nine"
        n = int(digits)
        words = f"{number_words(n // 100)} " + (number_words(n % 100) if n % 100 >= 10 else
                                                 f"oh {_ONES[n % 100]}" if n % 100 else "hundred")
    else:
        words = number_words(int(digits))
    if decimals:
        words += " point " + " ".join(_ONES[int(d)] for d in decimals)
    elif suffix:  # 1st, 22nd, 3rd, 40th: the last word becomes an ordinal
        head, _, last = words.rpartition(" ")
        last = _ORDINAL.get(last) or (last[:-1] + "ieth" if last.endswith("y") else last + "th")
        words = f"{head} {last}".strip()
    return f" {words} "


def spell(text: str) -> str:
    """What a chars head writes for `text`: lower case, accents and marks dropped, numbers as words
    ("Café-bar, 2!" -> "cafe bar two", "Press 5" -> "press five": the head learns the words from
    every clip that says them, and the WER normaliser reads them back as digits), hyphens and other
    spaces as one space."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 21,000 -> 21000
    text = re.sub(r"(\d+)(?:\.(\d+))?(st|nd|rd|th)?\b", _say_number, text, flags=re.IGNORECASE)
    text = unicodedata.normalize("NFKD", text.lower().replace("\u2019", "'"))
    text = re.sub(r"[-\s]+", " ", text)
    return re.sub(r" +", " ", "".join(c for c in text if c in ALPHABET)).strip()


def sentence(spelt: str) -> str:
    """A chars head's text as the LLM reads it: "i still owe you ten" -> "I still owe you ten." (the
    frozen LLM copies a sentence more faithfully than lower-case words: -1.7 points of dev WER)."""
    return spelt[:1].upper() + spelt[1:] + "." if spelt else spelt


class CharSpeller:
    """Text -> the LLM token ids of `spell(text)`, one per character (align.vocab=chars labels).

    Args:
        tok: the LLM's tokenizer; each ALPHABET character must be one token of it.
    """

    def __init__(self, tok) -> None:
        ids = {c: tok.encode(c, add_special_tokens=False) for c in ALPHABET}
        multi = [repr(c) for c, i in ids.items() if len(i) != 1]
        if multi:
            raise ValueError(f"align.vocab=chars: the LLM's tokenizer has no single token for {', '.join(multi)}; "
                             "use align.vocab=words")
        self.ids = {c: i[0] for c, i in ids.items()}

    def __call__(self, text: str) -> list[int]:
        return [self.ids[c] for c in spell(text)]


def alignment_vocab(kind: str, transcripts: Sequence[str], prompter) -> list[int]:
    """The alignment head's vocabulary (align.vocab).

    Args:
        kind: "transcripts": the training transcripts' tokens (the head can emit nothing else: a
            word never trained on cannot be written); "words": those plus every word-piece token of
            the LLM (`word_vocab`), so new words can be spelt; "full": the LLM's whole vocabulary;
            "chars": the LLM's one-character tokens of ALPHABET (the head spells; `CharSpeller`).
        transcripts: the training transcripts.
        prompter: the model's ChatPrompter (text_ids, tok).

    Returns:
        Sorted LLM token ids.
    """
    if kind not in VOCABS:
        raise ValueError(f"align.vocab={kind!r} must be one of {', '.join(VOCABS)}")
    if kind == "chars":
        return sorted(CharSpeller(prompter.tok).ids.values())
    ids = set(transcript_vocab(transcripts, prompter.text_ids))
    if kind == "words":
        ids |= set(word_vocab(prompter.tok))
    elif kind == "full":
        ids |= set(range(len(prompter.tok)))
    special = set(prompter.tok.all_special_ids) | {prompter.audio_start_id, prompter.audio_end_id}
    return sorted(ids - special if kind != "transcripts" else ids)


def build_head_lm(head: TiedCTCHead, texts: Sequence[str], text_ids, order: int) -> TokenNgramLM:
    """An n-gram LM over the head's tokens from sentences (tokens outside the vocabulary dropped)."""
    sentences = head.head_indices(text_ids(text) for text in texts if text and text.strip())
    return TokenNgramLM.build(sentences, order, len(head.vocab_ids))


def build_head_words(head: TiedCTCHead, tok, texts: Sequence[str], cfg) -> WordScorer:
    """A chars head's lexicon and word LM from sentences and the word lists of `cfg.lexicon`
    (`cfg`: AlignConfig; `tok`: the LLM's tokenizer, whose one-character tokens the head spells)."""
    by_id = {i: c for c, i in CharSpeller(tok).ids.items()}
    chars = "".join(by_id[int(i)] for i in head.vocab_ids)  # head index k spells chars[k - 1]
    return WordScorer.build(chars, (spell(t) for t in texts if t), (spell(w) for w in read_word_list(cfg.lexicon)),
                            cfg.word_order)


def read_lm_text(paths: Sequence[str]) -> list[str]:
    """Sentences of the `align.lm_text` files, one per non-empty line; errors name the file."""
    lines: list[str] = []
    for path in paths:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"align.lm_text: {p} does not exist; give text files with one sentence per line")
        lines += [line.strip() for line in p.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines


def token_error_rate(refs: Sequence[Sequence[int]], hyps: Sequence[Sequence[int]]) -> float:
    """Edit distance over token ids, summed, divided by the reference tokens."""
    pairs = list(zip(refs, hyps))
    errors = sum(edit_distance([str(t) for t in r], [str(t) for t in h]) for r, h in pairs)
    return errors / max(sum(len(r) for r, _ in pairs), 1)


@torch.no_grad()
def evaluate_alignment(model, utts, cfg, progress: bool = False, feature_cache=None) -> dict:
    """Score the alignment stage on dev utterances: CTC best path -> text, against the transcript.

    Returns {"asr": {"wer": ...} (speechwire.metrics), "align": {"loss", "token_error_rate",
    "oov_tokens"}, "num_utterances": n}: the "asr" entry lets the trainer keep the best checkpoint
    by WER as in the LM stage.
    """
    from tqdm.auto import tqdm

    loader, batches = eval_loader(utts, cfg, feature_cache, model.batch_tokenizer(training=False))
    was_training = model.training
    model.eval()
    refs, hyps, ref_ids, hyp_ids = [], [], [], []
    loss_sum = tokens = oov = 0.0
    try:
        for batch in tqdm(loader, total=len(batches), desc="align dev", disable=not progress):
            if not batch.ids:
                continue  # every item invalid and skipped (data.skip_invalid), as in evaluate
            hidden, lengths = model.encode_audio(batch)
            out = model.adapter(hidden.float(), lengths)
            logits = model.align_head(out.embeds)  # (B, T', K + 1)
            ids = model.with_tokens(batch).tokens.transcripts  # the transcripts' LLM token ids
            labels, label_lengths, dropped = model.align_head.labels(ids)
            n = int(label_lengths.sum())
            one = model.adapter.one_output_per_token  # CIF: scored and decoded output by output
            loss_sum += float(alignment_loss(logits, out.lengths, labels, label_lengths, one_per_token=one)) * n
            tokens, oov = tokens + n, oov + dropped
            decoded = greedy_decode(model.align_head, logits, out.lengths, one_per_token=one)
            ref_ids += ids
            hyp_ids += decoded
            refs += [t or "" for t in batch.transcripts]
            hyps += [model.prompter.decode(d) for d in decoded]
    finally:
        model.train(was_training)
    return {"asr": score("asr", refs, hyps),
            "align": {"loss": round(loss_sum / max(tokens, 1), 4),
                      "token_error_rate": round(token_error_rate(ref_ids, hyp_ids), 4),
                      "oov_tokens": round(oov / max(sum(map(len, ref_ids)), 1), 4)},
            "num_utterances": len(refs)}
