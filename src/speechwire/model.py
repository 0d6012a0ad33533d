"""SpeechLLM: frozen speech encoder -> trainable adapter -> frozen causal LLM.

Letters: B batch, S audio samples, T encoder frames, T' adapter outputs, L LLM sequence,
d_llm LLM width, V vocabulary.

Sequences are LEFT-padded: every item ends at the same column, so generation appends new tokens
to all items at once; position ids count real tokens only (cumsum of the attention mask), so
padding never changes a real item's numbers.

    item i:  [pad..] prompt-before-audio <audio_start> speech_i <audio_end> prompt-after target_i
    labels:  -100 everywhere except target_i (text + end-of-turn)

Batches are speechwire.data.Batch; their token ids (prompts, targets, transcripts) come from the
collator's BatchTokenizer (DataLoader workers), or from `with_tokens` for batches without them.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pad_sequence

from speechwire.adapters import AdapterContext, AdapterOutput, AdapterTargets, build_adapter
from speechwire.align import (
    ALPHABET,
    BLANK,
    CharSpeller,
    TiedCTCHead,
    alignment_loss,
    collapse,
    restrict_labels,
    sentence,
    time_mask,
)
from speechwire.beam_pool import BatchSearch
from speechwire.config import ExperimentConfig, load_config, resolve_device, to_dict
from speechwire.data.batch import Batch, BatchTokenizer, BatchTokens, pad_right
from speechwire.decoding import (
    StepCallback,
    accept_draft,
    clean_answer,
    ctc_nbest,
    greedy_search,
    label_nbest,
    rewrite_bound,
    word_change,
    words,
)
from speechwire.derived import DerivedReader, derived_key, save_derived
from speechwire.encoders import SAMPLE_RATE, build_encoder
from speechwire.files import read_safetensors, safetensors_bytes, write_atomic
from speechwire.lexicon import WORD_KEYS
from speechwire.llm import (
    LATIN_LANGUAGES,
    LATIN_ROWS_VERSION,
    ChatPrompter,
    RowSubsetHead,
    latin_token_ids,
    load_llm,
    load_tokenizer,
)
from speechwire.memory import trim_heap
from speechwire.prefix_cache import PrefixCache, cache_keyword, common_prefix, returned_cache
from speechwire.rescore import choose, start_token

WEIGHTS_NAME = "trainable.safetensors"
DAMAGED_HINT = ("copy the run folder again, or load a complete checkpoint instead (RUN/best or "
                "RUN/checkpoints/step-*)")
CONFIG_NAME = "config.yaml"
IGNORE = -100
HEAD_DATA = {f"align_head.{k}" for k in ("vocab_ids", "lm_grams", "lm_counts", *WORD_KEYS)}  # checkpoint data, not weights


@dataclass
class SpeechLLMOutput:
    loss: torch.Tensor  # lm_loss + adapter aux loss
    lm_loss: torch.Tensor
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    num_target_tokens: int = 0
    encoder_frames: int = 0  # sum over the batch, for compression ratios
    adapter_frames: int = 0


@dataclass
class GenerationOutput:
    """What `SpeechLLM.generate_output` decoded for a batch."""

    texts: list[str]  # one per item
    token_ids: list[list[int]]  # generated ids per item, without the stop token

    @property
    def num_tokens(self) -> int:
        """Tokens generated over the batch (tokens/s in evaluation)."""
        return sum(len(x) for x in self.token_ids)


def _output_layer(adapter: nn.Module, d_llm: int) -> tuple[nn.Module | None, float]:
    """The layer that sets the adapter's output scale (its last LayerNorm of width d_llm, else its
    last Linear into d_llm; None without either) and the per-element RMS of what it outputs."""
    norms = [m for m in adapter.modules() if isinstance(m, nn.LayerNorm) and m.normalized_shape == (d_llm,)]
    if norms:
        w, b = norms[-1].weight, norms[-1].bias
        return norms[-1], float((w.pow(2).mean() + (b.pow(2).mean() if b is not None else 0)).sqrt())
    linears = [m for m in adapter.modules() if isinstance(m, nn.Linear) and m.out_features == d_llm]
    if not linears:
        return None, 1.0
    # inputs ~unit RMS (normed): output RMS ~ weight std * sqrt(fan_in)
    return linears[-1], float(linears[-1].weight.std()) * linears[-1].in_features ** 0.5


def match_output_scale(adapter: nn.Module, d_llm: int, token_rms: float) -> None:
    """Start the adapter's outputs at the scale of the LLM's token embeddings.

    Adapters end in LayerNorm (per-element RMS 1) or a Linear; LLM embedding tables are much
    smaller (SmolLM2 0.14, Llama 3 ~0.01). Speech vectors 7-100x louder than text swamp the
    residual stream and stall training, so the last LayerNorm's gain (or the last Linear's weights)
    starts at the table's RMS instead; it stays trainable. Ultravox's projector does the same
    with its `norm_init`.
    """
    with torch.no_grad():
        layer, rms = _output_layer(adapter, d_llm)
        if isinstance(layer, nn.LayerNorm):
            layer.weight.fill_(token_rms)
        elif layer is not None:
            layer.weight.mul_(token_rms / (rms + 1e-12))
        if layer is not None and layer.bias is not None:
            layer.bias.zero_()


def rescale_output(adapter: nn.Module, d_llm: int, token_rms: float) -> float:
    """Scale a trained adapter's outputs to the LLM's token-embedding RMS, keeping their directions
    (what the alignment stage learned): the last LayerNorm's gain and bias are multiplied by one
    factor (or the last Linear's weight and bias). Returns the factor."""
    with torch.no_grad():
        last, rms = _output_layer(adapter, d_llm)
        if last is None:
            return 1.0
        factor = token_rms / max(rms, 1e-12)
        last.weight.mul_(factor)
        if last.bias is not None:
            last.bias.mul_(factor)
    return factor


PADDING_ALLOWANCE = 0.25  # length_groups: padded samples allowed per real sample in a group


def length_groups(lengths: list[int], allowance: float = PADDING_ALLOWANCE) -> list[list[int]]:
    """Item indices grouped by similar length (shortest first), so that padding each group to its
    longest item adds at most `allowance` of the group's real length (one group when the whole
    batch already does)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    total = 0  # real length of the last group
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[i] <= (1 + allowance) * (total + lengths[i]):
            groups[-1].append(i)
            total += lengths[i]
        else:
            groups.append([i])
            total = lengths[i]
    return groups if len(groups) > 1 else [list(range(len(lengths)))]


def left_pad(seqs: list[torch.Tensor], value: float) -> torch.Tensor:
    """(L_i, ...) tensors -> (B, max L_i, ...), padded with `value` before each item."""
    return pad_sequence(seqs, batch_first=True, padding_value=value, padding_side="left")


OBJECTIVES = ("lm", "align")  # SpeechLLM.forward's losses, one per training stage (train.stage)


class SpeechLLM(nn.Module):
    def __init__(self, cfg: ExperimentConfig, encoder: nn.Module | None = None, device: torch.device | None = None) -> None:
        """device: where inference will run (from_pretrained): the LLM loads with llm.quantize applied
        (llm.load_llm); None (training): as stored."""
        super().__init__()
        self.cfg = cfg
        # the recipe (train.*) is read here and in from_pretrained only: forward and generate never
        # look at it (the trainer passes the stage's objective to forward)
        self.paraphrase_seed = cfg.train.seed  # which instruction paraphrase a training item gets
        self.encoder = encoder if encoder is not None else build_encoder(cfg.encoder)
        self.tokenizer = load_tokenizer(cfg.llm)
        self.llm = load_llm(cfg.llm, device)
        self.llm_quantized = getattr(self.llm, "quantized", "none")  # "int8": Linear layers in int8 (quantize.py)
        self.prompter = ChatPrompter(self.tokenizer, cfg.llm)
        # text -> the alignment head's labels: the LLM's tokens, or one per character (align.vocab=chars)
        self.transcript_ids = CharSpeller(self.tokenizer) if cfg.align.vocab == "chars" else self.prompter.text_ids
        embedding = self.llm.get_input_embeddings()
        d_llm = embedding.embedding_dim
        vocab = self.llm.get_output_embeddings().weight.shape[0]
        a = cfg.align
        has_head = cfg.train.stage == "align" or a.collapse or a.ctc_weight > 0 or a.readout != "adapter"
        # an adapter with its own CTC head (ctc) predicts the units the transcripts are written in: the
        # LLM's tokens, or under a spelling head its alphabet (blank 0, letters 1..K as the head numbers them)
        self.head_units = has_head and a.vocab == "chars"
        ctx = AdapterContext(in_dim=self.encoder.dim, out_dim=d_llm, frame_rate=self.encoder.frame_rate,
                             vocab_size=len(ALPHABET) + 1 if self.head_units else vocab,
                             pad_id=BLANK if self.head_units else self.tokenizer.pad_token_id)
        self.adapter = build_adapter(cfg.adapter, ctx)
        fresh = device is None  # from_pretrained: every trainable weight comes from the checkpoint
        # ours, not the authors' (docs/adapters.md); `preset: paper` skips it. The alignment stage
        # scores directions only, and Adam steps would swamp a gain as small as the table's RMS.
        if fresh and cfg.adapter.match_output_scale and cfg.train.stage != "align":
            match_output_scale(self.adapter, d_llm, self.token_rms)
        # the two marker rows: start at the mean LLM embedding, the only trainable LLM-side weights
        start = torch.zeros(d_llm)  # (a checkpoint's rows replace it: no pass over the table)
        if fresh and cfg.llm.marker_init:  # e.g. '"': the LLM then reads the speech as a quotation (copy test)
            ids = self.prompter.text_ids(cfg.llm.marker_init)
            if not ids:
                raise ValueError(f"llm.marker_init={cfg.llm.marker_init!r} has no tokens")
            start = embedding.weight.detach()[ids[0]].float()
        elif fresh:
            start = embedding.weight.detach().float().mean(0)
        self.audio_markers = nn.Parameter(start.expand(2, d_llm).clone())  # (2, d_llm): start, end
        self.align_head = TiedCTCHead(embedding.weight, a.temperature, fresh) if has_head else None
        self._cache_kw = cache_keyword(self.llm)
        # KV cache of the prompt before the audio, shared by every batch (prefix_cache.py); None: no reuse
        self.prefix_cache: PrefixCache | None = PrefixCache()
        self._latin_head: RowSubsetHead | None = None  # llm.output_vocab=auto, built at the first Latin answer
        self.beam_search = BatchSearch()  # align.decode=beam: a batch's searches, in processes (align.beam_workers)

    @functools.cached_property
    def token_rms(self) -> float:
        """RMS of the LLM's token-embedding table: where the adapter's output scale starts (training)."""
        return float(self.llm.get_input_embeddings().weight.detach().float().pow(2).mean().sqrt())

    def train(self, mode: bool = True) -> "SpeechLLM":
        # frozen parts stay in eval mode (no dropout) unless LoRA trains inside the LLM
        self.training = mode
        if mode and self.prefix_cache is not None:
            self.prefix_cache.clear()  # LoRA may train: the cached keys and values would go stale
        self.adapter.train(mode)
        self.encoder.train(False)
        self.llm.train(mode and self.cfg.llm.lora)
        return self

    # --- parts ------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.audio_markers.device

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        state = {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
        if self.align_head is not None:  # the alignment vocabulary and LM: data, but the head needs them to decode
            state.update({f"align_head.{k}": v for k, v in self.align_head.data_tensors().items()})
        return state

    def embed_text(self, ids: list[int]) -> torch.Tensor:
        """(L,) ids -> (L, d_llm) with the frozen LLM table."""
        table = self.llm.get_input_embeddings()
        return table(torch.tensor(ids, dtype=torch.long, device=self.device))

    def batch_tokenizer(self, training: bool) -> BatchTokenizer:
        """Tokenises batches with this LLM's chat prompts: pass it to make_dataloader (or eval_loader)
        so DataLoader workers do it. training: draw each item's instruction paraphrase."""
        return BatchTokenizer(self.prompter, self.paraphrase_seed, self.cfg.adapter.targets_add_special_tokens, training,
                              self.transcript_ids)

    def with_tokens(self, batch: Batch | Mapping) -> Batch:
        """`batch` as a Batch with token ids for this model's mode: its own when they were made for
        it (training or not), else made here; a dict in the earlier format is converted. The
        batch passed in is never changed."""
        if not isinstance(batch, Batch):
            batch = Batch.from_dict(batch)
        if batch.tokens is not None and batch.tokens.training == self.training:
            return batch
        return self.batch_tokenizer(self.training).add_tokens(batch)

    def _tokens(self, batch: Batch) -> BatchTokens:
        tokens = self.with_tokens(batch).tokens
        assert tokens is not None
        return tokens

    def encode_audio(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen SFM; a batch that already carries cached features (hidden) skips it."""
        if batch.hidden is not None:
            return batch.hidden.to(self.device), batch.hidden_lengths.to(self.device)
        if batch.audio is None or batch.audio_lengths is None:
            raise ValueError("the batch has neither audio (audio, audio_lengths) nor cached features (hidden, "
                             "hidden_lengths)")
        audio, lengths = batch.audio.to(self.device), batch.audio_lengths.to(self.device)
        groups = length_groups(lengths.tolist()) if self.device.type == "cpu" else [list(range(len(lengths)))]
        with torch.no_grad():
            if len(groups) == 1:
                out = self.encoder(audio, lengths)
                return out.hidden, out.lengths
            # on a CPU the encoder is compute-bound: batching gains nothing, padding costs (one 19 s
            # recording among 16 short ones made the batch 5.7x the items' own time); each item's
            # frames do not depend on its batch (trimmed mode masks the padding)
            parts = []
            for idx in groups:
                width = int(lengths[idx].max())
                parts.append((idx, self.encoder(audio[idx, :width], lengths[idx])))
        T = max(o.hidden.shape[1] for _, o in parts)
        hidden = parts[0][1].hidden.new_zeros(len(lengths), T, parts[0][1].hidden.shape[2])
        out_lengths = parts[0][1].lengths.new_zeros(len(lengths))
        for idx, o in parts:
            hidden[idx, : o.hidden.shape[1]] = o.hidden
            out_lengths[idx] = o.lengths
        return hidden, out_lengths

    def _adapter_targets(self, batch: Batch) -> AdapterTargets:
        """The adapter's training targets, both from the source transcript (for ST too, as in the
        authors' code): CTC labels, and the CIF target length = the transcript's token count.
        With an alignment head the CIF count is the head's labels (letters under align.vocab=chars:
        CIF then fires one vector per letter, which the head scores one by one), and a ctc adapter's
        labels are the head's letters under align.vocab=chars (its head predicts the alphabet).

        An ST item without a transcript (None or blank) leaves the batch without CTC labels (the ctc
        adapter then raises, naming the field), and its CIF target falls back to the token count of
        its translation, with a warning (once per model). adapter.targets_add_special_tokens counts
        the tokenizer's own special tokens too (Llama, Mistral: BOS), as the authors do.
        """
        tokens = self._tokens(batch)
        if tokens.sources is None:
            raise ValueError("training needs the batch's targets (Batch.targets: the text the LLM must produce)")
        missing = tokens.missing_sources
        if missing and self.adapter.one_output_per_token and not getattr(self, "_warned_no_transcript", False):
            ids = [(batch.ids or list(range(len(batch))))[i] for i in missing]
            warnings.warn(f"{self.cfg.adapter.name} adapter: ST items {ids} have no transcript; their target length is the token "
                          "count of their translation instead (further items are not reported)", stacklevel=3)
            self._warned_no_transcript = True
        units = tokens.sources
        if self.align_head is not None and not missing and tokens.transcripts is not None:
            # the adapter's outputs are scored by the alignment head: CIF fires one vector per head
            # label (a letter under align.vocab=chars), and a ctc adapter's own head spells them too
            head = self.align_head.head_indices(tokens.transcripts)
            units = head if self.head_units else tokens.sources
            tgt_len = torch.tensor([len(c) for c in head], device=self.device)
        else:
            tgt_len = torch.tensor([len(c) for c in units], device=self.device)
        if missing:
            return AdapterTargets(target_lengths=tgt_len)
        lengths = torch.tensor([len(c) for c in units], device=self.device)
        labels = torch.full((len(units), max(1, int(lengths.max()))), IGNORE, dtype=torch.long, device=self.device)
        for i, c in enumerate(units):
            labels[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        return AdapterTargets(target_lengths=tgt_len, ctc_labels=labels, ctc_label_lengths=lengths)

    def _sequences(self, batch: Batch, embeds: torch.Tensor, lengths: torch.Tensor, with_targets: bool,
                   skip_prefix: int = 0):
        """Assemble left-padded inputs_embeds (B, L, d_llm), attention mask, positions, labels.

        The instruction: in training, each item's own paraphrase (drawn from train.seed and its id,
        ChatPrompter.draw_variant); in evaluation and generation always the first, so an item's
        prompt never depends on its batch (BatchTokenizer)."""
        B = embeds.shape[0]
        tokens = self._tokens(batch)
        if with_targets and tokens.targets is None:
            raise ValueError("the loss needs the batch's targets (Batch.targets: the text the LLM must produce)")
        llm_dtype = self.llm.get_input_embeddings().weight.dtype
        markers = self.audio_markers.to(llm_dtype)
        seqs, labels = [], []
        for i in range(B):
            parts = [self.embed_text(tokens.before_audio[i][skip_prefix:]), markers[:1], embeds[i, : lengths[i]].to(llm_dtype),
                     markers[1:], self.embed_text(tokens.after_audio[i])]
            n_prompt = sum(p.shape[0] for p in parts)
            lab = [IGNORE] * n_prompt
            if with_targets:
                target = tokens.targets[i]
                parts.append(self.embed_text(target))
                lab += target
            seqs.append(torch.cat(parts))
            labels.append(torch.tensor(lab, dtype=torch.long, device=self.device))
        inputs = left_pad(seqs, 0.0)  # (B, L, d_llm)
        mask = left_pad([torch.ones(len(s), dtype=torch.long, device=self.device) for s in seqs], 0)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, L)
        return inputs, mask, positions, left_pad(labels, IGNORE)

    # --- training ---------------------------------------------------------------------------

    def _adapt(self, batch: Batch, hidden: torch.Tensor, enc_lengths: torch.Tensor) -> AdapterOutput:
        """Adapter, then (with an alignment head) its CTC aux loss in training and the collapse."""
        targets = self._adapter_targets(batch) if self.training else None
        out = self.adapter(hidden.float(), enc_lengths, targets=targets)
        if self.align_head is None:
            return out
        logits = self.align_head(out.embeds)  # (B, T', K + 1)
        aux, aux_losses = out.aux_loss, dict(out.aux_losses)
        if self.training and self.cfg.align.ctc_weight > 0 and batch.transcripts is not None:
            loss, _ = self._alignment_loss(batch, out.lengths, logits=logits)
            aux = self.cfg.align.ctc_weight * loss + (aux if aux is not None else 0.0)
            aux_losses["align"] = loss.detach()
        posterior = self.cfg.align.readout == "posterior"
        if not self.cfg.align.collapse:
            embeds = self.align_head.posterior_embeddings(logits) if posterior else out.embeds
            return AdapterOutput(embeds, out.lengths, aux, aux_losses, out.ratio)
        if posterior and self.cfg.align.decode == "beam" and not self.training:
            embeds, lengths, heard = self._beam_tokens(logits, out.lengths)
            return AdapterOutput(embeds, lengths, aux, aux_losses, heard=heard)
        elif posterior and self.adapter.one_output_per_token:  # CIF: each output is one token already
            embeds, lengths = self.align_head.posterior_embeddings(logits), out.lengths
        elif posterior:  # the readout is linear in the posteriors: pool them first, then one (K, d) product per token
            probs, lengths = collapse(self.align_head.posteriors(logits), out.lengths, logits)
            embeds = self.align_head.readout(probs)
        else:
            embeds, lengths = collapse(out.embeds, out.lengths, logits)
        return AdapterOutput(embeds, lengths, aux, aux_losses)  # ratio: the adapter's, not the collapse's

    def _search_setup(self) -> tuple:
        """What the head's beam search runs with: the search, its n-gram LM, its lexicon (or None), align.beam_workers."""
        a, head = self.cfg.align, self.align_head
        search = label_nbest if self.adapter.one_output_per_token else ctc_nbest  # CIF: one token per output
        words = head.words if a.word_weight > 0 else None
        if words is not None:
            words.weight, words.oov = a.word_weight, a.word_oov  # the config's, which --set may have changed
        return search, head.lm, words, a.beam_workers

    def _beam_tokens(self, logits: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
        """align.decode=beam: the LLM token embeddings of each item's best beam (decoding.ctc_nbest
        with the head's n-gram LM; with align.rescore, the best of its first align.rescore_nbest
        within align.rescore_margin by beam score + weighted LLM log-probability, rescore.py), what
        the copy test feeds the LLM.
        A chars head's beam is read as a sentence (`align.sentence`) and tokenised as the LLM would.
        An item with no token keeps its least-blank output's posterior readout, as the collapse does.
        (B, T', K + 1) -> (B, L, d), (B,), and a chars head's sentences (else None)."""
        a, head = self.cfg.align, self.align_head
        log_probs = logits.detach().float().log_softmax(-1).cpu().numpy()
        chars = a.vocab == "chars"
        keep = a.rescore_nbest if a.rescore > 0 else 1
        candidates = []  # per item: (LLM token ids, beam score, heard sentence of a chars head)
        searched = self.beam_search([log_probs[b, : int(lengths[b])] for b in range(logits.shape[0])],
                                    *self._search_setup(), beam=a.beam_size, lm_weight=a.lm_weight, token_bonus=a.lm_bonus)
        for nbest in searched:
            nbest = nbest[:keep]
            cands = []
            for tokens, score in nbest if nbest[0][0] else []:  # the best beam empty: nothing heard
                if not tokens or score < nbest[0][1] - a.rescore_margin:
                    continue
                ids = head.token_ids(torch.tensor(tokens))
                text = sentence(self.prompter.decode(ids)) if chars else None
                cands.append((self.prompter.text_ids(text) if chars else ids, score, text))
            candidates.append(cands)
        picks = [0] * len(candidates)
        if a.rescore > 0:
            picks = choose(self.llm, self._latin_rows(), [[c[:2] for c in cands] for cands in candidates], a.rescore,
                           start_token(self.tokenizer))
        items, heard = [], []
        for b, (cands, pick) in enumerate(zip(candidates, picks)):
            if cands:
                ids, _, text = cands[pick]
                items.append(head.token_rows(ids))  # (L_b, d): the tokens' own embedding rows
            else:
                text, t = "", int(logits[b, : int(lengths[b]), 0].argmin()) if int(lengths[b]) else 0
                items.append(head.posterior_embeddings(logits[b, t: t + 1]))
            heard.append(text)
        return (*pad_right(items), heard if chars else None)

    def _alignment_loss(self, batch: Batch, lengths: torch.Tensor, logits: torch.Tensor | None = None,
                        embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """Alignment loss against the transcripts (the source text for ST too) and its token count.
        Given `embeds` instead of `logits`, a training step scores only the batch's tokens +
        align.negatives random ones (TiedCTCHead.sample_candidates); evaluation scores them all."""
        ids = self._tokens(batch).transcripts
        if ids is None:
            raise ValueError("the alignment loss needs the batch's transcripts (Batch.transcripts)")
        labels, label_lengths, _ = self.align_head.labels(ids)
        if logits is None:
            candidates = self.align_head.sample_candidates(labels, label_lengths, self.cfg.align.negatives) \
                if self.training else None
            logits, labels = self.align_head(embeds, candidates), restrict_labels(labels, candidates)
        loss = alignment_loss(logits, lengths, labels, label_lengths, one_per_token=self.adapter.one_output_per_token)
        return loss, int(label_lengths.sum())

    def _align_forward(self, batch: Batch) -> SpeechLLMOutput:
        """train.stage=align: the adapter's outputs spell the transcript against the LLM's token
        embeddings (align.py); the LLM itself never runs."""
        hidden, enc_lengths = self.encode_audio(batch)
        hidden = hidden.float()
        if self.training:
            hidden = time_mask(hidden, enc_lengths, self.cfg.align.time_mask)
        targets = self._adapter_targets(batch) if self.training else None
        out = self.adapter(hidden, enc_lengths, targets=targets)
        loss, n_tokens = self._alignment_loss(batch, out.lengths, embeds=out.embeds)
        total = loss + out.aux_loss if out.aux_loss is not None else loss
        return SpeechLLMOutput(total, loss.detach(), {k: v.detach() for k, v in out.aux_losses.items()},
                               n_tokens, int(enc_lengths.sum()), int(out.lengths.sum()))

    def forward(self, batch: Batch | Mapping, objective: str = "lm") -> SpeechLLMOutput:
        """The training loss of `objective` (the trainer passes train.stage; the model reads no recipe):

        - "lm": cross-entropy of the LLM on the target tokens only (prompt, speech and padding
          ignored) + the adapter's aux loss;
        - "align": the alignment stage's loss (align.py), the LLM never runs.
        """
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r} must be one of {', '.join(OBJECTIVES)}")
        batch = self.with_tokens(batch)  # tokenised once here when the collator did not
        if objective == "align":
            return self._align_forward(batch)
        hidden, enc_lengths = self.encode_audio(batch)
        out = self._adapt(batch, hidden, enc_lengths)
        inputs, mask, positions, labels = self._sequences(batch, out.embeds, out.lengths, with_targets=True)
        lm_loss, n_tokens = self._target_loss(inputs, mask, positions, labels)
        loss = lm_loss + out.aux_loss if out.aux_loss is not None else lm_loss
        return SpeechLLMOutput(loss, lm_loss.detach(), {k: v.detach() for k, v in out.aux_losses.items()},
                               n_tokens, int(enc_lengths.sum()), int(out.lengths.sum()))

    def _target_loss(self, inputs, mask, positions, labels) -> tuple[torch.Tensor, int]:
        """Mean cross-entropy over target tokens; logits only where a label exists (saves V x L)."""
        decoder = self.llm.get_decoder() if hasattr(self.llm, "get_decoder") else None
        shift_labels = labels[:, 1:]  # token t+1 is predicted at position t
        keep = shift_labels != IGNORE  # (B, L-1)
        if decoder is not None:
            hidden = decoder(inputs_embeds=inputs, attention_mask=mask, position_ids=positions).last_hidden_state
            logits = self.llm.get_output_embeddings()(hidden[:, :-1][keep])  # (N, V)
        else:
            logits = self.llm(inputs_embeds=inputs, attention_mask=mask, position_ids=positions).logits[:, :-1][keep]
        n = int(keep.sum())
        return F.cross_entropy(logits.float(), shift_labels[keep], reduction="sum") / max(n, 1), n

    # --- inference --------------------------------------------------------------------------

    def generate(self, *args, **kwargs) -> list[str]:
        """One string per item: `generate_output(...).texts`."""
        return self.generate_output(*args, **kwargs).texts

    @contextmanager
    def _evaluating(self):
        """Eval mode inside the block, the caller's mode after it."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    @torch.no_grad()
    def generate_output(
        self,
        audio: Batch | Mapping | list,
        task: str = "asr",
        src_lang: str = "en",
        tgt_lang: str | None = None,
        max_new_tokens: int | None = None,
        sample_rate: int = SAMPLE_RATE,
        on_step: StepCallback | None = None,
    ) -> GenerationOutput:
        """Greedy decoding with a KV cache, batched; same text as decoding items one by one.

        Args:
            audio: a Batch (data.collate; a dict in the earlier format is converted) or a list of
                1-D 16 kHz mono waveforms.
            task, src_lang, tgt_lang: used for a list input ("st" needs tgt_lang).
            on_step: called after every decoding step with each item's generated ids so far (live
                lists: copy what you keep); it returns the indices of items to stop decoding now
                (their answer is what they have), or None. Streaming servers use it (serve/stream.py).
        Returns:
            the texts, one per item, and the generated token ids (`generate` returns the texts).
        """
        if isinstance(audio, (Batch, Mapping)):
            batch = audio if isinstance(audio, Batch) else Batch.from_dict(audio)
        else:
            batch = Batch.from_waveforms(audio, [task] * len(audio), [src_lang] * len(audio), [tgt_lang] * len(audio),
                                         sample_rate)
        with self._evaluating():
            ids, heard = self._greedy(batch, max_new_tokens or self.cfg.eval.max_new_tokens, on_step)
        if self.device.type == "cpu":  # glibc keeps a decode's freed temporaries resident (~0.1-0.15 GiB per call,
            trim_heap()               # growing a server); handing them back costs ~20 ms
        texts = [self.answer_text(x) for x in ids]
        limit = self.cfg.eval.max_rewrite
        if heard is not None and limit > 0:  # the LLM answered or chatted instead of copying: keep what was heard
            texts = [h if task == "asr" and word_change(h, t) > limit else t
                     for h, t, task in zip(heard, texts, batch.tasks)]
        return GenerationOutput(texts, ids)

    @torch.no_grad()
    def generate_from_text(self, texts: list[str], task: str = "asr", src_lang: str = "en",
                           tgt_lang: str | None = None, max_new_tokens: int | None = None) -> list[str]:
        """The "copy test": the LLM's answers when the speech embeddings are replaced by the token
        embeddings of `texts` (what a perfectly aligned adapter would hand it). Batched like generate."""
        d, B = self.audio_markers.shape[1], len(texts)
        ids = [self.prompter.text_ids(t) for t in texts]  # an empty text: one zero vector
        embeds, lengths = pad_right([self.embed_text(x).float() if x else torch.zeros(1, d, device=self.device) for x in ids])
        batch = Batch(tasks=[task] * B, src_langs=[src_lang] * B, tgt_langs=[tgt_lang] * B)
        with self._evaluating():
            out = self._decode(batch, embeds, lengths, max_new_tokens or self.cfg.eval.max_new_tokens)
        return [self.answer_text(x) for x in out]

    def answer_text(self, ids: list[int]) -> str:
        """What the user sees of an answer: decoded, the quote markers and a chat preamble removed
        (decoding.clean_answer); every command's text comes from here."""
        return clean_answer(self.prompter.decode(ids), self.cfg.llm.marker_init)

    def _greedy(self, batch: Batch, max_new: int, on_step: StepCallback | None = None
                ) -> tuple[list[list[int]], list[str] | None]:
        """Each item's answer ids, and what a chars head heard (AdapterOutput.heard)."""
        batch = self.with_tokens(batch)
        hidden, enc_lengths = self.encode_audio(batch)
        out = self._adapt(batch, hidden, enc_lengths)
        drafts = None
        if self.cfg.eval.draft and out.heard is not None:  # the LLM mostly copies what the head heard (ASR)
            drafts = [self.prompter.text_ids(h)[:max_new] if task == "asr" and h.strip() else []
                      for h, task in zip(out.heard, batch.tasks)]
        on_step = self._stop_overlong(out.heard, batch.tasks, on_step)
        return self._decode(batch, out.embeds, out.lengths, max_new, on_step, drafts), out.heard

    def _stop_overlong(self, heard: list[str] | None, tasks: list[str], on_step: StepCallback | None
                       ) -> StepCallback | None:
        """`on_step` that also stops an ASR answer once eval.max_rewrite will replace it by what the
        head heard (decoding.rewrite_bound): a chatty answer no longer holds its batch for max_new steps."""
        limit = self.cfg.eval.max_rewrite
        if heard is None or limit <= 0:
            return on_step
        bounds = {b: rewrite_bound(h, limit) for b, (h, task) in enumerate(zip(heard, tasks)) if task == "asr"}

        def guarded(answers: list[list[int]]) -> set[int]:
            stop = set(on_step(answers) or ()) if on_step is not None else set()
            for b, bound in bounds.items():  # a word is at least one token: count words only past the bound
                if len(answers[b]) > bound and len(words(self.answer_text(answers[b]))) > bound:
                    stop.add(b)
            return stop
        return guarded

    def _decode_inputs(self, batch: Batch, embeds: torch.Tensor, lengths: torch.Tensor):
        """The first decoding step's inputs: (B, L, d_llm) embeddings, the (B, P + L) attention mask,
        (B, L) positions and the KV cache of the P prompt tokens every item starts with (from
        self.prefix_cache; P = 0 and no cache without one). Padding sits between the prefix and
        the rest, masked; positions count real tokens, as in a batch of one."""
        batch = self.with_tokens(batch)
        prefix = common_prefix(self._tokens(batch).before_audio) if self.prefix_cache is not None else []
        inputs, mask, positions, _ = self._sequences(batch, embeds, lengths, with_targets=False, skip_prefix=len(prefix))
        if not prefix:
            return inputs, mask, positions, None
        B, P = inputs.shape[0], len(prefix)
        cache = self.prefix_cache.batch_cache(self.llm, self.embed_text, prefix, B, self._cache_kw)
        mask = torch.cat([mask.new_ones(B, P), mask], 1)  # (B, P + L)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, P:]  # (B, L)
        return inputs, mask, positions, cache

    def _decode(self, batch: Batch, embeds: torch.Tensor, lengths: torch.Tensor, max_new: int,
                on_step: StepCallback | None = None, drafts: list[list[int]] | None = None) -> list[list[int]]:
        """Greedy decoding (KV cache) of the prompts around `embeds` (B, T', d_llm): the generated ids
        per item, cut before the stop token.

        drafts: per item, answer tokens to verify in the first pass (eval.draft: what the head heard;
            [] for none): the answer is the same as without them, in fewer LLM passes when they agree.
            Items that have finished leave the batch, so later passes run only the rest."""
        inputs, mask, positions, cache = self._decode_inputs(batch, embeds, lengths)
        head = self._output_head(batch)
        run = self.llm.get_decoder()  # hidden states; the output rows are applied to the positions that need them
        scores = head if head is not None else self.llm.get_output_embeddings()
        state = {"rows": list(range(inputs.shape[0])), "mask": mask, "cache": cache, "next": positions[:, -1:] + 1}

        def forward(inputs: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            res = run(inputs_embeds=inputs, attention_mask=mask, position_ids=positions, use_cache=True,
                      **{self._cache_kw: state["cache"]})
            state["cache"] = returned_cache(res)
            return res.last_hidden_state

        def keep(active: list[int]) -> None:
            """Drop finished items' rows from the mask, positions and KV cache (a cache class that
            cannot select rows keeps them: their outputs are ignored)."""
            if active == state["rows"] or not hasattr(state["cache"], "batch_select_indices"):
                return
            where = {b: i for i, b in enumerate(state["rows"])}
            idx = torch.tensor([where[b] for b in active], device=state["mask"].device)
            state["mask"], state["next"] = state["mask"][idx], state["next"][idx]
            state["cache"].batch_select_indices(idx)
            state["rows"] = active

        def step(tokens: list[int] | None, active: list[int]) -> list[list[int]]:
            if tokens is None:
                return first_pass()
            keep(active)
            fed = dict(zip(active, tokens))
            chosen = torch.tensor([fed.get(b, 0) for b in state["rows"]], device=state["mask"].device)
            state["mask"] = torch.cat([state["mask"], state["mask"].new_ones(len(chosen), 1)], 1)
            hidden = forward(self.llm.get_input_embeddings()(chosen)[:, None], state["mask"], state["next"])
            state["next"] = state["next"] + 1
            best = dict(zip(state["rows"], scores(hidden[:, -1]).float().argmax(-1).tolist()))
            return [[best[b]] for b in active]

        def first_pass() -> list[list[int]]:
            if not drafts or not any(drafts):
                hidden = forward(inputs, state["mask"], positions)
                return [[t] for t in scores(hidden[:, -1]).float().argmax(-1).tolist()]
            B, L, D = inputs.shape[0], inputs.shape[1], max(len(d) for d in drafts)
            ids = torch.zeros(B, D, dtype=torch.long, device=inputs.device)
            room = torch.zeros(B, D, dtype=state["mask"].dtype, device=inputs.device)
            for b, d in enumerate(drafts):
                ids[b, :len(d)] = torch.tensor(d, dtype=torch.long)
                room[b, :len(d)] = 1
            draft_embeds = self.llm.get_input_embeddings()(ids).to(inputs.dtype)
            steps = torch.arange(1, D + 1, device=inputs.device)
            state["mask"] = torch.cat([state["mask"], room], 1)  # draft padding hidden, like prompt padding
            hidden = forward(torch.cat([inputs, draft_embeds], 1), state["mask"],
                             torch.cat([positions, state["next"] + steps - 1], 1))[:, L - 1:]  # (B, D + 1, d)
            proposals = []
            for b, d in enumerate(drafts):
                choices = scores(hidden[b, : len(d) + 1]).float().argmax(-1).tolist()
                proposed = accept_draft(choices, d)
                agreed = len(proposed) - 1
                state["mask"][b, state["mask"].shape[1] - D + agreed:] = 0  # the draft tokens it did not take
                proposals.append(proposed)
            state["next"] = state["next"] + torch.tensor([len(p) - 1 for p in proposals], device=inputs.device)[:, None]
            return proposals

        # hand-written, not HF generate: per-item positions and stops make a batch decode what its items decode alone
        return greedy_search(step, inputs.shape[0], max_new, set(self.prompter.stop_ids), self.cfg.eval.max_repeats,
                             on_step)

    def _output_head(self, batch: Batch) -> RowSubsetHead | None:
        """llm.output_vocab=auto on the int8 path: the output layer's Latin-script rows when every item
        answers in a Latin-script language (ASR: its source language, ST: its target); None: all rows."""
        answers = [(tgt if task == "st" else src) or "" for task, src, tgt in zip(batch.tasks, batch.src_langs, batch.tgt_langs)]
        if not all(lang.split("-")[0].lower() in LATIN_LANGUAGES for lang in answers):
            return None
        return self._latin_rows()

    def _latin_rows(self) -> RowSubsetHead | None:
        """The output layer's Latin-script rows on the int8 path with llm.output_vocab=auto, else None."""
        head = self.llm.get_output_embeddings()
        if self.cfg.llm.output_vocab != "auto" or self.llm_quantized != "int8" or getattr(head, "bias", None) is not None:
            return None
        if self._latin_head is None:
            self._latin_head = self._derived_latin_rows(head.weight)
        return self._latin_head

    def _derived_latin_rows(self, weight: torch.Tensor) -> RowSubsetHead:
        """The Latin rows as an earlier start kept them (derived.py: picking and quantising them is
        ~2 s of a start), else computed and kept for the next one."""
        folder = Path(getattr(self.llm, "name_or_path", "") or ".")
        sources = [folder / name for name in ("model.safetensors", "tokenizer.json") if (folder / name).is_file()]
        stops, precision = set(self.prompter.stop_ids), self.cfg.llm.output_precision
        key = derived_key("latin-rows", sources, precision=precision, stops=sorted(stops), rows=LATIN_ROWS_VERSION,
                          shape=list(weight.shape), vocab=len(self.tokenizer)) if len(sources) == 2 else None
        head = RowSubsetHead.from_derived(DerivedReader(key), weight.shape[0], precision) if key else None
        if head is None:
            head = RowSubsetHead(weight, latin_token_ids(self.tokenizer, stops), precision=precision)
            if key:
                save_derived(key, *head.derived_tensors())
        return head

    # --- checkpoints ------------------------------------------------------------------------

    def checkpoint_files(self) -> dict[str, bytes]:
        """The trainable weights (safetensors with a sha256 of their bytes) and the config, in memory."""
        weights = safetensors_bytes(self.trainable_state_dict(), {"format": "pt", "speechwire": "trainable-only"})
        return {WEIGHTS_NAME: weights, CONFIG_NAME: yaml.safe_dump(to_dict(self.cfg), sort_keys=False).encode()}

    def save_pretrained(self, path: str | Path) -> Path:
        """Write only the trainable weights (adapter, marker rows, LoRA) + the config, each atomically."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        files = self.checkpoint_files()
        total = sum(len(b) for b in files.values())
        for name, data in files.items():
            write_atomic(path / name, data, "trained weights", needed=total)
        return path

    def load_trainable(self, path: str | Path, partial: bool = False) -> list[str]:
        """Load trainable weights from a checkpoint folder or file.

        Args:
            partial: start a new stage from another run (`train.init_from`): weights this model has
                no place for (an alignment head the LM stage does not use) are skipped, and weights
                the checkpoint lacks keep their fresh values - but the adapter must be complete.
        Returns:
            the names that were not loaded (partial only).
        """
        file = Path(path) / WEIGHTS_NAME if Path(path).is_dir() else Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no speechwire checkpoint here (expected {WEIGHTS_NAME})")
        state = {k: v.to(self.device) for k, v in read_safetensors(file, "trainable weights", DAMAGED_HINT)[0].items()}
        data = {k.removeprefix("align_head."): state.pop(k) for k in list(state) if k in HEAD_DATA}
        if self.align_head is not None and "vocab_ids" in data:
            self.align_head.load_data(data)
        if self.cfg.align.word_weight > 0 and self.align_head is not None and self.align_head.words is None:
            raise ValueError(f"{file}: align.word_weight={self.cfg.align.word_weight} but this checkpoint has no "
                             "lexicon (its alignment stage ran without one): set align.word_weight=0, or add one "
                             "with `python scripts/add_lexicon.py RUN`")
        expected = set(self.trainable_state_dict()) - HEAD_DATA
        missing, unexpected = expected - set(state), set(state) - expected
        if partial:
            lacking = sorted(k for k in missing if k.startswith("adapter."))
            if lacking:
                raise ValueError(f"{file}: its adapter does not fit this model (missing {lacking[:5]}); "
                                 "train.init_from must be a run of the same adapter config")
            state = {k: v for k, v in state.items() if k in expected}
            missing, unexpected, skipped = set(), set(), sorted(missing | unexpected)
        else:
            skipped = []
        if missing or unexpected:
            raise ValueError(f"{file}: checkpoint does not fit this model; missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]} - was it trained with another adapter config?")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for k, v in state.items():
                if params[k].shape != v.shape:
                    raise ValueError(f"{file}: {k} has shape {tuple(v.shape)}, model expects {tuple(params[k].shape)}")
                params[k].copy_(v)
        return skipped

    @classmethod
    def from_pretrained(cls, path: str | Path, overrides: list[str] | None = None) -> "SpeechLLM":
        """Rebuild from a checkpoint folder for inference: frozen parts load by name, trainable
        weights from file; on the CPU the LLM's Linear layers become int8 (llm.quantize=auto;
        `overrides=["llm.quantize=none"]` keeps them float)."""
        path = Path(path)
        if path.is_file():
            raise NotADirectoryError(f"{path}: is a file; pass the run folder that holds {CONFIG_NAME} and {WEIGHTS_NAME}")
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: run folder does not exist")
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{path}: not a speechwire run folder (no {CONFIG_NAME}); pass the folder "
                                    "`speechwire train` wrote (or one of its checkpoints/step-* folders)")
        cfg = load_config(path / CONFIG_NAME, overrides)
        read_safetensors(path / WEIGHTS_NAME, "trainable weights", DAMAGED_HINT)  # fail fast, before the LLM loads
        model = cls(cfg, device=resolve_device(cfg.train.device))  # llm.quantize: int8 on the CPU by default
        model.load_trainable(path)
        if cfg.align.decode == "beam" and model.align_head is not None:
            model.beam_search.start(*model._search_setup())  # align.beam_workers > 1: the workers load meanwhile
        return model

    def describe(self) -> dict:
        n_train = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"encoder": self.cfg.encoder.model, "adapter": self.cfg.adapter.name, "llm": self.cfg.llm.model,
                "trainable_params": n_train, "encoder_dim": self.encoder.dim, "frame_rate": self.encoder.frame_rate}

    def __repr__(self) -> str:
        return f"SpeechLLM({json.dumps(self.describe())})"
