"""The typed sections of an experiment config: dataclasses that validate themselves.

Every section checks itself in `__post_init__`, reports all its problems at once, and never
rewrites a value. Defaults are the paper's values (Verdini et al. 2025, DESIGN.md section 2),
except a few details where the authors' code differs from our choice: `preset: paper` sets those
to the authors' values (config.apply_presets; the list is in docs/adapters.md, "Paper fidelity").

This module imports nothing of speechwire, so every part (encoders, adapters, data, the model)
can depend on it; reading, merging and checking configs against the registries is config.py's job.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """One or more invalid configuration values; the message lists every problem."""


class AdapterFieldWarning(UserWarning):
    """A config sets adapter fields that its adapter does not read: they have no effect."""


Dtype = Literal["float32", "bfloat16", "float16"]  # the dtype names configs accept; torch_dtype() maps them


def _check(problems: list[str], section: str, cfg: Any) -> None:
    """Raise one ConfigError listing each field of `cfg` outside its Literal[...] choices, then `problems`."""
    hints = typing.get_type_hints(type(cfg))  # Literal fields -> their choices
    choices = {k: typing.get_args(tp) for k, tp in hints.items() if typing.get_origin(tp) is Literal}
    problems = [f"{name}={getattr(cfg, name)!r} must be one of {', '.join(values)}"
                for name, values in choices.items() if getattr(cfg, name) not in values] + problems
    if problems:
        raise ConfigError("; ".join(f"{section}.{p}" for p in problems))


@dataclass
class EncoderConfig:
    """The frozen speech foundation model (SFM)."""

    name: str = "whisper"  # registry key: whisper | seamless | hf (wav2vec2/HuBERT/WavLM family)
    model: str = "openai/whisper-large-v3"  # hub id, local HF folder, or CTranslate2 Whisper folder
    # whisper: trimmed (real length only, paper's "unrestricted") | padded (30 s input, real frames out)
    # | padded_full (30 s input, all 1500 frames out: the authors' standard Whisper, `paper` preset)
    mode: Literal["trimmed", "padded", "padded_full"] = "trimmed"
    dtype: Dtype = "float32"  # for the frozen weights
    max_seconds: float = 30.0  # longer inputs are an error (Whisper's positional table is 30 s)

    def __post_init__(self) -> None:
        _check([f"max_seconds={self.max_seconds} must be > 0"] if self.max_seconds <= 0 else [], "encoder", self)


@dataclass
class AdapterConfig:
    """The trainable adapter between SFM and LLM. Each adapter reads only some fields (its
    `config_fields`, docs/adapters.md); one it does not read has no effect, and a config file or
    override that sets it gets an AdapterFieldWarning (`warn_unread_adapter_fields`)."""

    name: str = "base"  # base | mlp | linear | conv | cif | ctc | wlqformer
    hidden_size: int = 768  # transformer width (BERT-style layers, no positional encoding)
    num_layers: int = 4
    num_heads: int = 12
    ffn_size: int = 3072
    dropout: float = 0.1
    stack: int = 1  # mlp/linear: stack k consecutive frames into one (k:1 length reduction)
    # conv
    conv_layers: int = 2
    conv_kernel: int = 3
    conv_stride: int = 2
    # cif (continuous integrate-and-fire)
    cif_threshold: float = 1.0
    cif_tail_threshold: float = 0.5  # a leftover weight >= this fires one last vector
    quantity_loss_weight: float = 1.0
    # ctc compression
    ctc_loss_weight: float = 0.1
    ctc_blank_id: int | None = None  # None: the LLM tokenizer's pad token
    ctc_keep_blanks: bool = True  # blank runs pooled like the others (authors, paper); False drops them
    # training segments: argmax (the head's best label per frame, the authors') | aligned (the head's best
    # path through the transcript: at least one segment per token, so an LLM-free objective can score them)
    ctc_train_segments: Literal["argmax", "aligned"] = "argmax"
    # window-level Q-Former
    window_seconds: float = 0.333
    queries_per_window: int = 1
    qformer_layers: int = 4
    # paper fidelity (docs/adapters.md, "Paper fidelity"); `preset: paper` sets the authors' values
    conv_final_relu: bool = True  # conv: ReLU after the last conv too; the authors' code has none there
    cif_tail_rescale: bool = False  # cif eval: scale a fired tail by threshold / its weight (authors)
    targets_add_special_tokens: bool = False  # CTC labels / CIF target count the tokenizer's BOS (authors)
    match_output_scale: bool = True  # output starts at the LLM embedding RMS (ours; not the authors')
    init_std: float | None = None  # transformer/Q-Former layers ~ normal(0, std), BERT (authors: 0.02)
    layer_norm_eps: float = 1e-5  # in the transformer/Q-Former layers (BERT, authors: 1e-12)
    bert_dropout: bool = False  # dropout where BERT has it (none inside the FFN; on the Q-Former queries)
    # transformer layers: default | zero (residual branches' output weights start at 0) | rezero (gated, no LayerNorm)
    residual_init: Literal["default", "zero", "rezero"] = "default"

    def __post_init__(self) -> None:
        p = []
        for name in ("hidden_size", "num_layers", "num_heads", "ffn_size", "stack", "conv_layers",
                     "conv_kernel", "conv_stride", "queries_per_window", "qformer_layers"):
            if getattr(self, name) < (0 if name in ("num_layers", "conv_layers") else 1):
                p.append(f"{name}={getattr(self, name)} must be positive")
        if self.name not in ("mlp", "linear") and self.hidden_size % max(self.num_heads, 1):
            p.append(f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            p.append(f"dropout={self.dropout} must be in [0, 1)")
        if self.window_seconds <= 0:
            p.append(f"window_seconds={self.window_seconds} must be > 0; the paper uses 0.333")
        if self.cif_threshold <= 0:
            p.append(f"cif_threshold={self.cif_threshold} must be > 0; the paper uses 1.0")
        if self.init_std is not None and self.init_std <= 0:
            p.append(f"init_std={self.init_std} must be > 0 (or null for PyTorch's init); the authors use 0.02")
        if self.layer_norm_eps <= 0:
            p.append(f"layer_norm_eps={self.layer_norm_eps} must be > 0; the authors use 1e-12")
        _check(p, "adapter", self)


@dataclass
class LLMConfig:
    """The frozen causal language model, its prompts and optional LoRA."""

    model: str = "meta-llama/Llama-3.1-8B-Instruct"  # hub id or local folder
    gguf_file: str | None = None  # load a GGUF file inside `model` (dequantised by transformers)
    dtype: Dtype = "float32"
    # inference only (evaluate, transcribe, serve, demo; training keeps full weights): auto = int8
    # on the CPU for a float32 LLM of >= 50M params without LoRA, else none | none | int8 (dynamic
    # int8 Linear layers but lm_head, CPU only; quantize.py)
    quantize: Literal["auto", "none", "int8"] = "auto"
    # auto: with int8 (above), decoding scores only the tokens a Latin-script answer can use when every
    # item's answer language is written in it (llm.LATIN_LANGUAGES: ~2/3 of Qwen's rows) | full
    output_vocab: Literal["auto", "full"] = "auto"
    # how those rows are kept (llm.RowSubsetHead): int8 (one scale per row, a quarter of float32's
    # bytes; chosen on the demo's dev sets: same WER and BLEU/chrF, 1.5x faster decoding, -0.25 GiB)
    # | bfloat16 | float32 (the layer's own values)
    output_precision: Literal["float32", "bfloat16", "int8"] = "int8"
    # instructions: one string, or a list of paraphrases (training: one drawn per item, seeded by
    # train.seed and the item id; evaluation and generation: always the first)
    asr_prompt: str | list[str] = "Can you transcribe this audio?"
    st_prompt: str | list[str] = "Can you translate this audio from {src} into {tgt}?"
    system_prompt: str | None = None
    audio_first: bool = True  # user turn = audio then instruction (False: instruction then audio)
    marker_init: str | None = None  # the audio markers start at this text's first token (None: mean embedding)
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self) -> None:
        p = []
        if self.lora and self.lora_rank < 1:
            p.append(f"lora_rank={self.lora_rank} must be >= 1")
        if self.quantize == "int8" and self.lora:
            p.append("quantize='int8' with lora=true: quantising would freeze the LoRA weights into int8; "
                     "use quantize=none (or auto, which skips LoRA runs)")
        for name in ("asr_prompt", "st_prompt"):
            if not instructions(getattr(self, name)):
                p.append(f"{name} must be a string or a non-empty list of strings")
        if any("{tgt}" not in s for s in instructions(self.st_prompt)):
            p.append("st_prompt must contain '{tgt}' (the target language name), in every paraphrase")
        _check(p, "llm", self)


@dataclass
class DataConfig:
    train_manifest: str | None = None  # JSONL, one utterance per line (see docs/data.md)
    dev_manifest: str | None = None
    test_manifest: str | None = None
    sample_rate: int = 16000  # what the encoders get; other rates are resampled on read
    min_seconds: float = 0.1
    max_seconds: float = 30.0
    max_batch_seconds: float = 160.0  # total audio seconds per batch (duration bucketing)
    max_batch_size: int = 64
    num_buckets: int = 10
    task_weights: dict[str, float] = field(default_factory=dict)  # e.g. {asr: 1.0, st: 2.0}
    skip_invalid: bool = False  # skip (and count) bad manifest lines instead of failing
    num_workers: int = 0
    feature_cache: str | None = None  # folder of frozen-SFM outputs (see features.py); None: encode audio
    feature_cache_dtype: Dtype = "float16"  # on disk; float32 is exact

    def __post_init__(self) -> None:
        p = []
        if self.sample_rate != 16000:
            p.append(f"sample_rate={self.sample_rate}: every supported encoder expects 16000")
        if not 0 <= self.min_seconds < self.max_seconds:
            p.append(f"min_seconds={self.min_seconds} must be >= 0 and < max_seconds={self.max_seconds}")
        if self.max_batch_seconds <= 0 or self.max_batch_size < 1 or self.num_buckets < 1:
            p.append("max_batch_seconds, max_batch_size and num_buckets must be positive")
        for task, w in self.task_weights.items():
            if task not in TASKS or w < 0:
                p.append(f"task_weights[{task!r}]={w}: tasks are {TASKS}, weights >= 0")
        _check(p, "data", self)


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    epochs: float = 2.0
    max_steps: int = -1  # >= 0 overrides epochs; 0 with init_from: no steps, the started weights are evaluated and saved
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    grad_clip: float = 1.0
    grad_accum: int = 1
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # GPU
    # where training and every command that loads this run (evaluate, transcribe, serve) computes:
    # auto (a CUDA GPU when torch sees one, else the CPU) | cpu | cuda | cuda:N (resolve_device)
    device: str = "auto"
    seed: int = 0
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 2
    eval_every: int = 0  # 0: only at the end
    eval_max_items: int = 200  # dev utterances scored at each validation
    report_to: Literal["none", "tensorboard", "wandb"] = "none"  # tensorboard, wandb: install the [tracking] extra
    stage: Literal["lm", "align"] = "lm"  # lm: LLM in the loop | align: LLM-free alignment of the adapter (align.py)
    init_from: str | None = None  # run folder whose trainable weights start this run (e.g. an align run)

    def __post_init__(self) -> None:
        p = []
        if self.lr <= 0:
            p.append(f"lr={self.lr} must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            p.append(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if self.grad_accum < 1:
            p.append(f"grad_accum={self.grad_accum} must be >= 1")
        if not isinstance(self.device, str) or not DEVICE_PATTERN.fullmatch(self.device):
            p.append(f"device={self.device!r} must be auto, cpu, cuda or cuda:N (e.g. cuda:1)")
        if self.keep_last < 1:
            p.append(f"keep_last={self.keep_last} must be >= 1")
        if self.epochs <= 0 and self.max_steps < 0:
            p.append("set epochs > 0 or max_steps >= 0")
        _check(p, "train", self)


@dataclass
class AlignConfig:
    """The LLM-free alignment stage (align.py): CTC of the adapter's outputs against the frozen LLM
    token-embedding table, from cached SFM features; then the LM stage starts from that adapter."""

    steps: int = 0  # > 0: `speechwire train` first runs this many alignment steps in <output_dir>/align
    lr: float = 2.0e-3
    max_batch_seconds: float = 120.0  # an alignment step costs only the adapter: big batches are cheap
    weight_decay: float = 0.01
    temperature: float = 0.1  # initial; logits = cosine(output, token embedding) / temperature (learned)
    time_mask: float = 0.0  # training: share of SFM frames zeroed in random spans (SpecAugment-style)
    negatives: int = 2048  # training scores the batch's tokens + this many random others (0: all)
    collapse: bool = False  # LM stage: drop outputs nearest the blank, mean-pool runs of one token
    ctc_weight: float = 0.0  # LM stage: keep the alignment CTC loss as an auxiliary loss
    readout: Literal["adapter", "posterior"] = "adapter"  # LLM reads: adapter outputs | posterior-weighted embeddings
    # head's tokens: training's | + word pieces | all | one-character tokens (the head spells, align.py)
    vocab: Literal["transcripts", "words", "full", "chars"] = "transcripts"
    decode: Literal["greedy", "beam"] = "greedy"  # how the head's outputs become the tokens the LLM reads (greedy: best path)
    beam_size: int = 8
    # worker processes for a batch's beam searches (beam_pool.py): 1 none; 0 one per CPU core (the
    # evaluate command's default). Above 1 a script keeps its work under the main guard
    beam_workers: int = 1
    lm_order: int = 0  # > 0: an n-gram LM over the head's tokens (ngram.py), fused into the beam search
    lm_weight: float = 0.5  # fusion weight of the LM's log-probabilities
    lm_bonus: float = 1.0  # added per token (the LM alone would prefer short answers)
    # > 0: the beam's best `rescore_nbest` texts within `rescore_margin` (log-score) of its best are
    # rescored by the frozen LLM (rescore.py): this weight times the LLM's log-probability of the
    # text is added to the beam score. Beyond the margin the LLM rarely changes the choice (dev).
    rescore: float = 0.0
    rescore_nbest: int = 8
    rescore_margin: float = 3.0
    # text files (a sentence per line) the LM learns from, besides the transcripts
    lm_text: list[str] = field(default_factory=list)
    # > 0, vocab=chars: words in the beam (lexicon.py): this weight times a word n-gram LM's
    # log-probability when a word ends, `word_oov` once per word that is not in the lexicon
    word_weight: float = 0.0
    word_oov: float = -4.0
    word_order: int = 1  # the word LM's n (counted on the transcripts and lm_text)
    lexicon: list[str] = field(default_factory=list)  # word lists (one per line) beside the texts' words

    def __post_init__(self) -> None:
        p = []
        if self.steps < 0:
            p.append(f"steps={self.steps} must be >= 0")
        if self.lr <= 0 or self.max_batch_seconds <= 0 or self.temperature <= 0:
            p.append("lr, max_batch_seconds and temperature must be > 0")
        if not 0 <= self.time_mask < 1:
            p.append(f"time_mask={self.time_mask} must be in [0, 1)")
        if self.ctc_weight < 0:
            p.append(f"ctc_weight={self.ctc_weight} must be >= 0")
        if self.decode == "beam" and not (self.collapse and self.readout == "posterior"):
            p.append("decode=beam needs collapse: true and readout: posterior (the LLM reads the beam's tokens)")
        if self.vocab == "chars" and self.decode != "beam":
            p.append("vocab=chars needs decode=beam (the LLM reads the spelt text's own tokens, not its letters)")
        if self.beam_workers < 0:
            p.append(f"beam_workers={self.beam_workers} must be >= 0 (0: one per CPU core, 1: no extra process)")
        if self.beam_size < 1 or self.lm_order < 0 or self.lm_weight < 0:
            p.append("beam_size must be >= 1, lm_order and lm_weight >= 0")
        if self.rescore < 0 or self.rescore_nbest < 1 or self.rescore_margin < 0:
            p.append(f"rescore={self.rescore} and rescore_margin={self.rescore_margin} must be >= 0, "
                     f"rescore_nbest={self.rescore_nbest} >= 1")
        if self.word_weight < 0 or self.word_oov > 0 or self.word_order < 1:
            p.append(f"word_weight={self.word_weight} must be >= 0, word_oov={self.word_oov} <= 0, "
                     f"word_order={self.word_order} >= 1")
        if self.word_weight > 0 and self.vocab != "chars":
            p.append("word_weight > 0 needs vocab=chars (the lexicon scores spelt words)")
        if self.rescore > 0 and self.decode != "beam":
            p.append("rescore > 0 needs decode=beam (the LLM rescores the beam's best texts)")
        _check(p, "align", self)


@dataclass
class EvalConfig:
    max_new_tokens: int = 200
    batch_size: int = 8
    comet_model: str | None = None  # path or id of a COMET model (needs the [comet] extra)
    max_repeats: int = 0  # > 0: stop an item when one token comes more than this many times in a row
    # > 0, ASR with align.vocab=chars: an answer that changes more than this share of the words the head
    # heard is replaced by them (the frozen LLM answered or chatted instead of copying; decoding.word_change)
    max_rewrite: float = 0.0
    # ASR with align.vocab=chars: the text the head heard is handed to the LLM's first pass as a draft of
    # its answer; the tokens it agrees with cost no further passes (the same answer as without, up to
    # float rounding: speculative decoding with the head as the drafter)
    draft: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.max_repeats < 0 or self.max_rewrite < 0:
            raise ConfigError("eval.max_new_tokens and eval.batch_size must be >= 1, eval.max_repeats and "
                              "eval.max_rewrite >= 0")


@dataclass
class ExperimentConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        t = self.train
        if t.stage == "lm" and t.max_steps == 0 and not t.init_from and self.align.steps <= 0:
            raise ConfigError("train.max_steps=0 trains nothing: set train.init_from (a run to start from) "
                              "or align.steps > 0 (the alignment stage alone)")


TASKS = ("asr", "st")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")  # train.device
DTYPES = typing.get_args(Dtype)
WHISPER_MODES = typing.get_args(typing.get_type_hints(EncoderConfig)["mode"])


def instructions(prompt: str | list[str]) -> list[str]:
    """An LLMConfig prompt field as its list of paraphrases (a single string is a list of one)."""
    return [prompt] if isinstance(prompt, str) else list(prompt)


def resolve_device(device: str, key: str = "train.device") -> Any:
    """The torch.device a config's device string names; "auto" is a CUDA GPU when torch sees one,
    else the CPU. Raises ConfigError (naming `key`) for a GPU this machine does not have."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not DEVICE_PATTERN.fullmatch(device):
        raise ConfigError(f"{key}={device!r} must be auto, cpu, cuda or cuda:N (e.g. cuda:1)")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}={device}: torch finds no CUDA GPU on this machine; set {key}=auto or cpu")
        count = torch.cuda.device_count()
        if int(device.partition(":")[2] or 0) >= count:
            raise ConfigError(f"{key}={device}: this machine has {count} CUDA GPU(s), cuda:0 .. cuda:{count - 1}")
    return torch.device(device)



def torch_dtype(name: str) -> Any:
    """A config's dtype name ("float32", "bfloat16", "float16") as the torch.dtype."""
    if name not in DTYPES:
        raise ConfigError(f"dtype={name!r} must be one of {', '.join(DTYPES)}")
    import torch

    return getattr(torch, name)
