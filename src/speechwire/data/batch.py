"""The batch SpeechLLM consumes: how the collator builds it, and the token ids of its text.

Letters: B batch, S samples at 16 kHz, T encoder frames, d_enc encoder width.

    batch = collate(items)                               # Batch: padded audio (or cached features) + text
    tokenizer = model.batch_tokenizer(training=True)     # BatchTokenizer: the LLM's chat prompts
    loader = make_dataloader(utts, cfg.data, seed=0, tokenizer=tokenizer)
    for batch in loader: ...                             # batch.tokens made in the DataLoader workers

The token ids (BatchTokens) are what SpeechLLM feeds the LLM and its losses: the chat prompt
before and after the speech (training draws each item's instruction paraphrase from train.seed and
its id; evaluation takes the first), the target text + end of turn, and the source transcript
(CTC labels, CIF target lengths, the alignment stage). SpeechLLM uses a batch's tokens when they
were made for its mode (training or not) and tokenises the batch itself otherwise (inference
batches, hand-built ones): the same ids either way (tests/data/test_batch.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from speechwire.audio import SAMPLE_RATE

if TYPE_CHECKING:
    from speechwire.llm import ChatPrompter

# the Utterance fields a dataset item carries (with "audio" or "hidden", and "duration"); Batch has their lists
ITEM_FIELDS = ("id", "task", "src_lang", "tgt_lang", "target", "transcript")


@dataclass
class BatchTokens:
    """Token ids of a batch's text, one list per item (BatchTokenizer)."""

    training: bool  # instructions drawn per item (train.seed, item id); False: always the first
    before_audio: list[list[int]]  # the chat up to <audio_start> (excluded)
    after_audio: list[list[int]]  # the chat after <audio_end> up to the assistant's first token
    targets: list[list[int]] | None  # target text + end of turn; None: the batch has no targets
    # the adapter's targets (CTC labels, CIF target lengths): the transcript; an ASR item without
    # one: its target; an ST item without one: its translation (listed in missing_sources)
    sources: list[list[int]] | None
    missing_sources: list[int]  # items (ST) without a transcript: no CTC labels for this batch
    transcripts: list[list[int]] | None  # the transcripts alone ("" when missing): the alignment stage


@dataclass(kw_only=True)
class Batch:
    """Padded speech and each item's text; one of audio / hidden is set (the other is None)."""

    audio: torch.Tensor | None = None  # (B, S) float32 at 16 kHz, zero beyond audio_lengths
    audio_lengths: torch.Tensor | None = None  # (B,) long, valid samples
    hidden: torch.Tensor | None = None  # (B, T, d_enc) cached SFM output (features.py), zero-padded
    hidden_lengths: torch.Tensor | None = None  # (B,) long, valid frames
    ids: list[str] | None = None  # None (hand-built batches): the targets key the instruction draw
    tasks: list[str]  # "asr" | "st"
    src_langs: list[str | None]
    tgt_langs: list[str | None]  # the ST target language; None for ASR
    targets: list[str] | None = None  # what the LLM must produce; None: inference
    transcripts: list[str | None] | None = None  # the source text (for ST too); None: unknown
    durations: list[float] | None = None  # seconds actually loaded
    tokens: BatchTokens | None = None  # from BatchTokenizer; None: SpeechLLM tokenises the batch

    def __len__(self) -> int:
        return len(self.tasks)

    @classmethod
    def from_waveforms(cls, waves: Sequence[Any], tasks: Sequence[str], src_langs: Sequence[str | None],
                       tgt_langs: Sequence[str | None], sample_rate: int = SAMPLE_RATE) -> "Batch":
        """An inference batch from 16 kHz mono waveforms (numpy arrays, lists or tensors): what
        `SpeechLLM.generate` and the server's batcher build. Errors name the item at fault.

        Raises:
            ValueError: no waveform, another sample rate, a waveform that is not 1-D, or an empty one.
        """
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"audio must be 16 kHz mono; got sample_rate={sample_rate}. "
                             "Load files with speechwire.audio.load_audio, which resamples.")
        tensors = []
        for i, w in enumerate(waves):
            w = torch.as_tensor(w if torch.is_tensor(w) else np.asarray(w, dtype=np.float32), dtype=torch.float32)
            if w.dim() != 1:
                raise ValueError(f"audio item {i}: expected a 1-D mono waveform, got shape {tuple(w.shape)}; "
                                 "downmix to mono first (speechwire.audio.load_audio does)")
            if w.numel() == 0:
                raise ValueError(f"audio item {i} is empty")
            tensors.append(w)
        if not tensors:
            raise ValueError("no audio: give at least one waveform")
        audio, lengths = pad_right(tensors)
        return cls(audio=audio, audio_lengths=lengths, tasks=list(tasks), src_langs=list(src_langs),
                   tgt_langs=list(tgt_langs))

    @classmethod
    def from_dict(cls, batch: Mapping[str, Any]) -> "Batch":
        """A batch in the earlier dict format (keys as the field names): what SpeechLLM still
        accepts. Missing tasks / languages are "asr" / "en" / None, as before; other keys are ignored."""
        B = next((len(batch[k]) for k in ("audio_lengths", "hidden_lengths", "tasks", "ids", "targets")
                  if batch.get(k) is not None), None)
        if B is None:
            raise ValueError("a batch needs audio (audio + audio_lengths) or cached features (hidden + "
                             "hidden_lengths), or at least its tasks")
        fields = {f.name for f in dataclasses.fields(cls)} - {"tasks", "src_langs", "tgt_langs"}
        return cls(tasks=list(batch.get("tasks") or ["asr"] * B), src_langs=list(batch.get("src_langs") or ["en"] * B),
                   tgt_langs=list(batch.get("tgt_langs") or [None] * B),
                   **{k: batch[k] for k in fields if batch.get(k) is not None})


class BatchTokenizer:
    """Makes a batch's BatchTokens with the LLM's chat template (llm.ChatPrompter).

    Args:
        prompter: the LLM's ChatPrompter.
        seed: train.seed: draws each training item's instruction paraphrase (with its id).
        special_tokens: adapter.targets_add_special_tokens: the adapter's targets (sources) count
            the tokenizer's own special tokens (Llama, Mistral: BOS), as the authors do.
        training: draw the instruction per item (training) or take the first (evaluation).
        transcript_ids: text -> the alignment stage's label ids (default: the prompter's text_ids;
            align.vocab=chars: align.CharSpeller).
    """

    def __init__(self, prompter: ChatPrompter, seed: int, special_tokens: bool, training: bool,
                 transcript_ids: Callable[[str], list[int]] | None = None) -> None:
        self.prompter, self.seed, self.special_tokens, self.training = prompter, seed, special_tokens, training
        self.transcript_ids = transcript_ids or prompter.text_ids

    def __call__(self, batch: Batch) -> BatchTokens:
        p, B = self.prompter, len(batch)
        keys = batch.ids or batch.targets or [""] * B
        prompts = [p.prompt(task, src, tgt, p.draw_variant(task, str(key), self.seed) if self.training else 0)
                   for task, src, tgt, key in zip(batch.tasks, batch.src_langs, batch.tgt_langs, keys)]
        targets = sources = None
        missing: list[int] = []
        if batch.targets is not None:
            targets = [p.target_ids(t) for t in batch.targets]
            transcripts = batch.transcripts or [None] * B
            chosen = [t if t and t.strip() else (target if task == "asr" else None)  # ASR: target = transcript
                      for t, target, task in zip(transcripts, batch.targets, batch.tasks)]
            missing = [i for i, t in enumerate(chosen) if t is None]
            sources = [p.text_ids(t if t is not None else target, self.special_tokens)
                       for t, target in zip(chosen, batch.targets)]
        transcript_ids = [self.transcript_ids(t or "") for t in batch.transcripts] if batch.transcripts is not None else None
        return BatchTokens(self.training, [x.before_audio for x in prompts], [x.after_audio for x in prompts],
                           targets, sources, missing, transcript_ids)

    def add_tokens(self, batch: Batch) -> Batch:
        """A copy of `batch` with its tokens (the batch itself is not changed)."""
        return dataclasses.replace(batch, tokens=self(batch))


def collate(items: Sequence[dict[str, Any] | None]) -> Batch:
    """Pad SpeechDataset (or CachedFeatureDataset) items into a Batch; None items are dropped.

    Args:
        items: dataset outputs: "audio" (S,) or "hidden" (T, d_enc), and the utterance's fields.

    Returns:
        a Batch with audio (B, S), S = the longest item, zero beyond each item's audio_lengths, or
        with hidden (B, T, d_enc) likewise; B = 0 when every item was None.
    """
    items = [it for it in items if it is not None]
    fields = {f"{k}s": [it[k] for it in items] for k in (*ITEM_FIELDS, "duration")}  # ids, tasks, ..., durations
    if not items:
        return Batch(audio=torch.zeros(0, 0), audio_lengths=torch.zeros(0, dtype=torch.long), **fields)
    key = "hidden" if "hidden" in items[0] else "audio"  # cached SFM output (speechwire.features) instead of audio
    speech, lengths = pad_right([it[key] for it in items])  # (B, T, d_enc) or (B, S); (B,)
    return Batch(**{key: speech, f"{key}_lengths": lengths}, **fields)


def pad_right(items: Sequence[torch.Tensor], value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_b, ...) tensors -> (B, max L_b, ...) padded with `value` at the end, and the (B,) long
    lengths: the one padding of speech (waveforms, cached features, adapter outputs) in speechwire."""
    lengths = torch.tensor([x.shape[0] for x in items], dtype=torch.long, device=items[0].device)
    out = items[0].new_full((len(items), int(lengths.max()), *items[0].shape[1:]), value)
    for b, x in enumerate(items):
        out[b, : x.shape[0]] = x
    return out, lengths


class Collator:
    """The DataLoader's collate_fn: `collate`, then (given a BatchTokenizer) the batch's token ids,
    so that DataLoader workers tokenise, not the training loop."""

    def __init__(self, tokenizer: BatchTokenizer | None = None) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: Sequence[dict[str, Any] | None]) -> Batch:
        batch = collate(items)
        return batch if self.tokenizer is None else self.tokenizer.add_tokens(batch)
