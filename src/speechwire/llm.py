"""The LLM side: load any Hugging Face causal LM + tokenizer frozen, build chat prompts around audio.

The audio goes inside the user turn, wrapped in two new special tokens:

    <user turn> <audio_start> [speech embeddings] <audio_end> Can you transcribe this audio? <end>
    <assistant turn> target text <end-of-turn>

`<audio_start>`/`<audio_end>` are added to the tokenizer only so the chat template can place them;
their ids never reach the LLM's embedding table: SpeechLLM substitutes two trainable vectors, so
the LLM's own weights stay untouched (no resize) and a checkpoint holds just those 2 rows.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from speechwire.data.manifest import language_name as manifest_language_name
from speechwire.derived import DerivedReader
from speechwire.errors import OFFLINE_SIGNS, loading
from speechwire.memory import release_file_pages, trim_heap
from speechwire.quantize import int8_parts, load_int8, quantize_for_inference, quantized_api
from speechwire.schema import LLMConfig, instructions, torch_dtype
from speechwire.weights.resolve import resolve_model

log = logging.getLogger(__name__)

AUDIO_START = "<audio_start>"
AUDIO_END = "<audio_end>"
_SENTINEL = "\x01TARGET\x01"

# Used when a tokenizer ships without a chat template (base models, tiny test models).
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}### {{ m['role'] | capitalize }}:\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


def language_name(code: str | None) -> str:
    """ISO code -> English name for prompts ("de" -> "German"); unknown codes are returned as-is."""
    if code is None:
        return "the target language"
    return manifest_language_name(code)


def load_tokenizer(cfg: LLMConfig):
    from transformers import AutoTokenizer


    model_path, gguf = resolve_model(cfg.model)  # `weights:NAME` -> cached local folder
    gguf = gguf or cfg.gguf_file
    kwargs = {"gguf_file": gguf} if gguf else {}

    try:
        tok = AutoTokenizer.from_pretrained(model_path, **kwargs)
    except Exception as e:  # transformers raises many types here; the message is what matters
        if any(sign in f"{type(e).__name__}: {e}".lower() for sign in OFFLINE_SIGNS):
            with loading("llm.model", cfg.model):
                raise
        raise ValueError(
            f"llm.model={cfg.model!r}: could not load its tokenizer ({type(e).__name__}: {e}). "
            "The folder or hub repo must contain tokenizer files (tokenizer.json or tokenizer.model)."
        ) from e
    if not getattr(tok, "is_fast", True) and not hasattr(tok, "apply_chat_template"):
        raise ValueError(f"llm.model={cfg.model!r}: tokenizer {type(tok).__name__} cannot render chats")
    tok.add_special_tokens({"additional_special_tokens": [AUDIO_START, AUDIO_END]},
                           replace_extra_special_tokens=False)
    if tok.pad_token_id is None:
        # Llama/Mistral ship no pad token; the pad id is only a filler (masked) and the CTC blank
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        log.warning("llm %s has no chat template; using speechwire's fallback template", cfg.model)
        tok.chat_template = FALLBACK_CHAT_TEMPLATE
    tok.padding_side = "left"
    _drop_build_copies(tok)
    return tok


def _drop_build_copies(tok) -> None:
    """Free the vocabulary and merges a fast tokenizer was built from.

    transformers' BPE tokenizers (Qwen2, GPT-2, Llama 3) keep them as Python objects after building
    the Rust tokenizer from them and never read them again: Qwen2.5's 151,936-entry dict and
    151,387 merge tuples hold ~64 MB of a transcribing process's 1.2 GB. The Rust tokenizer keeps
    its own copy; a slow (Python) tokenizer needs them and keeps them."""
    if getattr(tok, "backend_tokenizer", None) is None:
        return
    for name in ("_vocab", "_merges"):
        tok.__dict__.pop(name, None)
    trim_heap()


def load_llm(cfg: LLMConfig, device: torch.device | None = None) -> nn.Module:
    """Load the causal LM frozen (eval mode, no grads); wrap it with LoRA when cfg.lora.

    device: where it will run inference (SpeechLLM.from_pretrained): llm.quantize is then applied,
    int8 layers quantised as the weights load (quantize.load_int8), and the LLM's `quantized`
    attribute says what ("int8" or "none"). None (training): the weights as stored."""
    from transformers import AutoModelForCausalLM


    model_path, gguf = resolve_model(cfg.model)  # `weights:NAME` -> cached local folder
    gguf = gguf or cfg.gguf_file
    kwargs = {"gguf_file": gguf} if gguf else {}

    with loading("llm.model", cfg.model):
        model = load_int8(model_path, cfg, device) if device is not None and not gguf else None
        quantized = model is not None
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype(cfg.dtype), **kwargs)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if device is not None:
        model.quantized = "int8" if quantized else quantize_for_inference(model, cfg, device)
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM")
        try:
            model = get_peft_model(model, lora)
        except ValueError as e:
            raise ValueError(f"llm.lora_target_modules={cfg.lora_target_modules}: {e}") from e
    return model


@dataclass(frozen=True)
class Prompt:
    """Token ids of one task's prompt, split where the speech embeddings go."""

    before_audio: list[int]  # chat up to and excluding <audio_start>
    after_audio: list[int]  # chat after <audio_end> up to the assistant's first token


class ChatPrompter:
    """Renders task prompts and targets with the LLM's own chat template."""

    def __init__(self, tokenizer, cfg: LLMConfig) -> None:
        self.tok = tokenizer
        self.cfg = cfg
        self.audio_start_id = tokenizer.convert_tokens_to_ids(AUDIO_START)
        self.audio_end_id = tokenizer.convert_tokens_to_ids(AUDIO_END)
        self._prompts: dict[tuple, Prompt] = {}
        self.end_of_turn = self._end_of_turn()
        self.stop_ids = self._stop_ids()

    def instructions(self, task: str) -> list[str]:
        """The task's instruction paraphrases (llm.asr_prompt / llm.st_prompt as a list)."""
        if task == "asr":
            return instructions(self.cfg.asr_prompt)
        if task == "st":
            return instructions(self.cfg.st_prompt)
        raise ValueError(f"unknown task {task!r}; tasks are 'asr' and 'st'")

    def instruction(self, task: str, src_lang: str | None = "en", tgt_lang: str | None = None, variant: int = 0) -> str:
        """Paraphrase number `variant` of the task's instruction, languages filled in."""
        options = self.instructions(task)
        if task == "st" and not tgt_lang:
            raise ValueError("task 'st' needs a target language (tgt_lang), e.g. 'de'")
        return options[variant].format(src=language_name(src_lang), tgt=language_name(tgt_lang))

    def draw_variant(self, task: str, key: str, seed: int) -> int:
        """The paraphrase a training item gets: drawn by a torch.Generator seeded from (seed, task,
        key = the item id), so an item keeps its instruction across epochs and resumes (as the
        authors', drawn once per example when their dataset is built). 0 with a single instruction."""
        n = len(self.instructions(task))
        if n == 1:
            return 0
        digest = hashlib.blake2b(f"{seed}\x00{task}\x00{key}".encode(), digest_size=8).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)  # 63-bit seed
        return int(torch.randint(n, (1,), generator=g))

    def _messages(self, user: str) -> list[dict]:
        msgs = [{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else []
        return msgs + [{"role": "user", "content": user}]

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def prompt(self, task: str, src_lang: str | None = "en", tgt_lang: str | None = None, variant: int = 0) -> Prompt:
        """The chat prompt around the audio, with instruction paraphrase `variant` (0 = the first)."""
        key = (task, src_lang, tgt_lang, variant)
        if key not in self._prompts:
            audio = AUDIO_START + AUDIO_END
            instr = self.instruction(task, src_lang, tgt_lang, variant)
            user = f"{audio}\n{instr}" if self.cfg.audio_first else f"{instr}\n{audio}"
            ids = self._encode(self._render(self._messages(user), generation_prompt=True))
            if ids.count(self.audio_start_id) != 1 or self.audio_end_id not in ids:
                raise ValueError(f"llm.model={self.cfg.model!r}: its chat template dropped the audio markers")
            i = ids.index(self.audio_start_id)
            assert ids[i + 1] == self.audio_end_id, "audio markers must be adjacent in the prompt"
            self._prompts[key] = Prompt(ids[:i], ids[i + 2:])
        return self._prompts[key]

    def _end_of_turn(self) -> str:
        """What the template writes after an assistant message (e.g. '<|im_end|>'), cut after its
        first special token so training never teaches text beyond the stop token."""
        msgs = self._messages("x")
        prompt = self._render(msgs, generation_prompt=True)
        full = self._render(msgs + [{"role": "assistant", "content": _SENTINEL}], generation_prompt=False)
        at = full.find(_SENTINEL)
        if at < 0 or not full.startswith(prompt) and not full[:at].endswith(prompt[-8:]):
            return self.tok.eos_token or ""
        tail = full[at + len(_SENTINEL):]
        specials = sorted(
            ((tail.find(s), s) for s in self.tok.all_special_tokens if s and s in tail), key=lambda x: x[0]
        )
        if specials:
            pos, tok = specials[0]
            return tail[: pos + len(tok)]
        return tail.rstrip() or (self.tok.eos_token or "")

    def _stop_ids(self) -> set[int]:
        stops = set()
        if self.tok.eos_token_id is not None:
            stops.add(self.tok.eos_token_id)
        end_ids = self._encode(self.end_of_turn) if self.end_of_turn else []
        if end_ids:
            stops.add(end_ids[-1])
        return stops

    def target_ids(self, text: str) -> list[int]:
        """Token ids the assistant must produce: the text then the end-of-turn marker."""
        return self._encode(text.strip() + self.end_of_turn)

    def text_ids(self, text: str, special_tokens: bool = False) -> list[int]:
        """Token ids of a text (CTC labels, CIF target lengths); special_tokens: with what the
        tokenizer adds around a text (Llama, Mistral: a leading BOS; Qwen: nothing)."""
        if special_tokens:
            return self.tok(text.strip(), add_special_tokens=True)["input_ids"]
        return self._encode(text.strip())

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True).strip()


# --- a Latin-script answer's part of the vocabulary (llm.output_vocab) ----------------------------

# answer languages written in the Latin script (ISO 639-1): their answers need ~2/3 of Qwen's tokens
LATIN_LANGUAGES = frozenset("af ca cs cy da de en eo es et eu fi fr ga gl hr hu id is it lt lv ms mt nb nl no pl pt ro "
                            "sk sl sq sv sw tl tr vi".split())


def _byte_level_bytes() -> dict[str, int]:
    """The byte each character of a byte-level BPE piece stands for (GPT-2's printable byte alphabet)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


LATIN_ROWS_VERSION = 2  # bump when the rows or their derived file change (derived files keyed on it; 2: piece names)


def latin_token_ids(tokenizer, keep: set[int]) -> list[int]:
    """Ids of the tokens a Latin-script answer can use: pieces whose text is Latin letters, digits,
    punctuation, symbols, marks or spaces; byte pieces that can belong to such text (byte-level BPE,
    SentencePiece's <0xNN>); special tokens and `keep` (the stop ids). A piece of another script,
    or a byte piece of a 3- or 4-byte character, is left out."""
    byte_of, ids = _byte_level_bytes(), []
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values()) | keep
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    sentencepiece = any("\u2581" in p for p in pieces if p)  # its word pieces start with ▁; byte-level ones never
    for i, piece in enumerate(pieces):
        if piece is None:
            continue
        if piece.isascii() and piece.isprintable() and not piece.startswith("<0x"):  # most pieces: ASCII text
            ids.append(i)
            continue
        byte = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece) if sentencepiece else None
        if byte:
            raw = bytes([int(byte[1], 16)])
        elif not sentencepiece and all(c in byte_of for c in piece):
            raw = bytes(byte_of[c] for c in piece)
        else:
            raw = piece.replace("\u2581", " ").encode()
        text = raw.decode("utf-8", errors="ignore")
        latin = all(c.isspace() or unicodedata.category(c)[0] in "NPSZM" or "LATIN" in unicodedata.name(c, "")
                    for c in text)
        # a piece that splits a character: only the lead bytes of Latin letters, diacritics, punctuation, symbols
        whole = len(text.encode()) == len(raw) or all(b < 0xC0 or 0xC2 <= b <= 0xCD or b in (0xE1, 0xE2) for b in raw)
        if i in special or (latin and whole):
            ids.append(i)
    return ids


OUTPUT_PRECISIONS = ("float32", "bfloat16", "int8")


def _pack_int8(values: torch.Tensor, scales: torch.Tensor):
    """(K, d) int8 values and (K,) per-row scales -> the packed weight of torch's int8 matrix kernels
    (what torch's dynamic int8 Linear holds)."""
    with quantized_api():
        zero = torch.zeros(len(scales), dtype=torch.long)
        weight = torch._make_per_channel_quantized_tensor(values, scales, zero, 0)
        return torch.ops.quantized.linear_prepack(weight, None)


def _float_blocks(weight: torch.Tensor, rows: torch.Tensor, size: int = 2048) -> Iterator[tuple[int, torch.Tensor]]:
    """(offset in `rows`, float32 copy of `size` of the rows) of `weight`, block by block. The layer's
    file pages under each block are dropped once it is copied: a 2048-row block holds 7 MB (the
    demo's 8192-row chunks in one go held ~70 MB more at the transcribing process's peak)."""
    for j in range(0, len(rows), size):
        part = rows[j: j + size]
        block = weight[part].float()
        release_file_pages(weight[int(part[0]): int(part[-1]) + 1])
        yield j, block


class RowSubsetHead:
    """The LLM's output layer on some of its rows: (B, d) hidden -> (B, V) scores, -inf outside the
    rows; each decoding step reads only those rows' weights (lm_head is most of a step on a CPU).

    `precision` (llm.output_precision) is how the rows are kept: float32 (the layer's own values),
    bfloat16 (half the bytes; a bf16 matrix product, fast where the CPU has bf16 instructions), or
    int8 (a quarter: one scale per row, run by the int8 kernels the quantised LLM layers use)."""

    def __init__(self, weight: torch.Tensor, rows: list[int], chunk: int = 8192, precision: str = "float32") -> None:
        if precision not in OUTPUT_PRECISIONS:
            raise ValueError(f"llm.output_precision={precision!r}: expected one of {', '.join(OUTPUT_PRECISIONS)}")
        weight = weight.detach()
        self.precision = precision
        self.rows = torch.tensor(sorted({r for r in rows if r < weight.shape[0]}), dtype=torch.long, device=weight.device)
        self.weight, self._packed = None, []  # float rows (K, d), or the int8 kernels' packed row chunks
        self._piece_rows: list[int] = []  # rows per packed chunk
        self.width = weight.shape[1]
        if precision != "int8":
            self.weight = weight.new_empty(len(self.rows), weight.shape[1], dtype=torch_dtype(precision))
        for i in range(0, len(self.rows), chunk):
            part = self.rows[i: i + chunk]
            if precision == "int8":  # symmetric, one scale per row: a row's largest value maps to 127
                values = torch.empty(len(part), weight.shape[1], dtype=torch.int8, device=weight.device)
                scale = torch.empty(len(part), device=weight.device)
                for j, block in _float_blocks(weight, part):
                    scale[j: j + len(block)] = block.abs().amax(1).clamp_(min=1e-12).div_(127)
                    values[j: j + len(block)] = block.div_(scale[j: j + len(block), None]).round_().clamp_(-127, 127)
                self._packed.append(_pack_int8(values, scale.double()))  # packed chunk by chunk: no whole int8 copy
                self._piece_rows.append(len(part))
                del values
            else:
                for j, block in _float_blocks(weight, part):
                    self.weight[i + j: i + j + len(block)] = block
            trim_heap()  # else the heap keeps every chunk's freed temporaries resident (~0.2 GiB at the peak)
        self.vocab_size = weight.shape[0]
        self._position: torch.Tensor | None = None  # token id -> its row here (logprobs), built at first use

    @classmethod
    def from_derived(cls, derived: DerivedReader, vocab_size: int, precision: str) -> "RowSubsetHead | None":
        """The head an earlier start kept (`derived_tensors`), read piece by piece; None if incomplete."""
        rows, pieces = derived.get("rows"), []
        if rows is None:
            return None
        head = cls.__new__(cls)
        head.precision, head.rows, head.vocab_size, head._position = precision, rows, vocab_size, None
        head.weight, head._packed, head._piece_rows, head.width = None, [], [], 0
        if precision != "int8":
            head.weight = derived.get("weight")
            head.width = head.weight.shape[1] if head.weight is not None else 0
            return head if head.weight is not None else None
        while f"{len(pieces)}.int8" in derived:
            values, scales = derived.get(f"{len(pieces)}.int8"), derived.get(f"{len(pieces)}.scales")
            if values is None or scales is None:
                return None
            pieces.append(len(values))
            head._packed.append(_pack_int8(values, scales))
            head.width = values.shape[1]
            del values, scales
            trim_heap()  # as when the rows are computed: freed pieces would stay resident (~0.08 GiB)
        head._piece_rows = pieces
        return head if sum(pieces) == len(rows) else None

    def derived_tensors(self) -> tuple[list[tuple[str, torch.dtype, tuple[int, ...]]], Callable[[str], torch.Tensor]]:
        """What `from_derived` reads, as derived.save_derived's (specs, produce): the row ids, and the
        rows (int8: each packed piece's values and scales, unpacked one piece at a time)."""
        specs: list[tuple[str, torch.dtype, tuple[int, ...]]] = [("rows", torch.long, (len(self.rows),))]
        if self.weight is not None:
            specs.append(("weight", self.weight.dtype, tuple(self.weight.shape)))
        for i, rows in enumerate(self._piece_rows):
            specs += [(f"{i}.int8", torch.int8, (rows, self.width)), (f"{i}.scales", torch.float64, (rows,))]
        pieces = int8_parts(lambda piece: torch.ops.quantized.linear_unpack(self._packed[int(piece)]))

        def produce(name: str) -> torch.Tensor:
            return getattr(self, name) if name in ("rows", "weight") else pieces(name)
        return specs, produce

    def _scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """(M, d) -> (M, K) float32 scores of the rows."""
        return torch.cat([piece for _, piece in self._score_pieces(hidden)], -1)

    def _score_pieces(self, hidden: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """(M, d) -> (first row, (M, k) float32 scores) of consecutive pieces of the rows."""
        if self._packed:
            # reduce_range: 7-bit activations, as torch's dynamic int8 Linear runs fbgemm (no int16 overflow);
            # every piece quantises the same activations the same way: one matrix product's scores
            x, start = hidden.float().contiguous(), 0
            for packed in self._packed:
                piece = torch.ops.quantized.linear_dynamic(x, packed, reduce_range=True)
                yield start, piece
                start += piece.shape[1]
            return
        yield 0, F.linear(hidden.to(self.weight.dtype), self.weight).float()

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        scores = hidden.new_full((hidden.shape[0], self.vocab_size), float("-inf"))
        scores[:, self.rows] = self._scores(hidden).to(scores.dtype)
        return scores

    def logprobs(self, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """(M, d) hidden states, (M,) token ids -> (M,) log-probabilities of the targets, normalised
        over the rows (what `__call__`'s log-softmax gives, without its (M, V) tensor); -inf outside.
        `chunk` positions at a time: rescoring a batch's N-best scores hundreds of positions, whose
        (M, K) scores would hold ~0.4 MB each (int8 rows: the chunk's activations share one scale); each
        piece of rows' scores is folded into the log-softmax's denominator as it comes (int8: 2 MB, not 75)."""
        if self._position is None:
            self._position = torch.full((self.vocab_size,), -1, dtype=torch.long, device=self.rows.device)
            self._position[self.rows] = torch.arange(len(self.rows), device=self.rows.device)
        at = self._position[targets]  # (M,) the target's row in the subset, -1 outside
        picked = hidden.new_zeros(len(targets), dtype=torch.float32)
        for i in range(0, len(targets), chunk):
            want = at[i: i + chunk]
            total = torch.full_like(picked[i: i + chunk], float("-inf"))  # log of the softmax's denominator
            for start, piece in self._score_pieces(hidden[i: i + chunk]):  # (chunk, k): never a whole (chunk, K)
                total = torch.logaddexp(total, piece.logsumexp(-1))
                inside = (want >= start) & (want < start + piece.shape[1])
                chosen = piece.gather(-1, (want - start).clamp(0, piece.shape[1] - 1)[:, None])[:, 0]
                picked[i: i + chunk] = torch.where(inside, chosen, picked[i: i + chunk])
            picked[i: i + chunk] -= total
        return picked.masked_fill(at < 0, float("-inf"))
