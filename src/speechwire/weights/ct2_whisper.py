"""Convert a CTranslate2 Whisper folder into a standard Hugging Face Whisper checkpoint.

The only real Whisper weights we can get offline ship as CTranslate2 folders (model.bin,
config.json, tokenizer.json). This module reads `model.bin` itself (no ctranslate2 needed) and
writes what `WhisperForConditionalGeneration.from_pretrained` / `WhisperProcessor` expect.

model.bin (binary version 6, written by ctranslate2/specs/model_spec.py `_serialize`), little
endian:
    uint32 version | string spec name | uint32 revision | uint32 n_vars
    n_vars x (string name | uint8 rank | rank x uint32 dims | uint8 dtype | uint32 nbytes | bytes)
    uint32 n_aliases | n_aliases x (string alias | string target)
    string = uint16 length (incl. trailing NUL) | utf-8 bytes | NUL

    hf_dir = ensure_hf_whisper(fetch_artifact("whisper-tiny.en"))   # converted once, cached
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import torch

if TYPE_CHECKING:
    from transformers import GenerationConfig, WhisperConfig

BINARY_VERSION = 6
CONVERTER_VERSION = 1  # part of the cache key: bump when the written checkpoint changes
# Order of the DataType enum in ctranslate2 include/ctranslate2/types.h (model_spec._dtype_to_type_id).
CT2_DTYPES = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)
HF_FILES = ("config.json", "generation_config.json", "model.safetensors",
            "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json")


class Ct2FormatError(ValueError):
    """model.bin is not a readable CTranslate2 model (foreign, truncated, unsupported)."""


@dataclass
class Ct2Model:
    spec: str  # e.g. "WhisperSpec"
    revision: int
    variables: dict[str, torch.Tensor]  # aliases resolved: every name maps to a tensor


def _read(f: BinaryIO, n: int, path: Path, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise Ct2FormatError(f"{path}: truncated: expected {n} bytes for {what}, found {len(data)}")
    return data


def _read_string(f: BinaryIO, path: Path, what: str) -> str:
    (n,) = struct.unpack("<H", _read(f, 2, path, what))
    raw = _read(f, n, path, what)
    if n == 0 or raw[-1] != 0:
        raise Ct2FormatError(f"{path}: not a CTranslate2 model (bad string for {what})")
    try:
        return raw[:-1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Ct2FormatError(f"{path}: not a CTranslate2 model (bad string for {what})") from exc


def read_ct2_model(path: str | Path) -> Ct2Model:
    """Read every variable of a CTranslate2 `model.bin` into CPU tensors (stored dtype).

    Raises:
        Ct2FormatError: bad header, unsupported binary version, or truncated data.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
        version = struct.unpack("<I", head)[0] if len(head) == 4 else -1
        if version != BINARY_VERSION:
            hint = (f"binary version {version} is not supported (expected {BINARY_VERSION}); "
                    "re-convert it with ctranslate2>=3" if 0 < version < BINARY_VERSION
                    else "bad header")
            raise Ct2FormatError(f"{path}: not a CTranslate2 model ({hint})")
        try:
            spec = _read_string(f, path, "the spec name")
        except Ct2FormatError as exc:
            raise Ct2FormatError(f"{path}: not a CTranslate2 model (bad header)") from exc
        revision, count = struct.unpack("<II", _read(f, 8, path, "the header"))
        variables: dict[str, torch.Tensor] = {}
        for i in range(count):
            name = _read_string(f, path, f"the name of variable {i}")
            (rank,) = struct.unpack("<B", _read(f, 1, path, f"variable {name}"))
            dims = struct.unpack(f"<{rank}I", _read(f, 4 * rank, path, f"variable {name}"))
            dtype_id, nbytes = struct.unpack("<BI", _read(f, 5, path, f"variable {name}"))
            if dtype_id >= len(CT2_DTYPES):
                raise Ct2FormatError(f"{path}: variable {name} has unknown dtype id {dtype_id}")
            dtype = CT2_DTYPES[dtype_id]
            numel = 1
            for d in dims:
                numel *= d
            if numel * dtype.itemsize != nbytes:
                raise Ct2FormatError(f"{path}: variable {name}: shape {list(dims)} x {dtype} "
                                     f"needs {numel * dtype.itemsize} bytes, header says {nbytes}")
            data = bytearray(_read(f, nbytes, path, f"variable {name}"))
            variables[name] = torch.frombuffer(data, dtype=dtype).reshape(dims) if nbytes else \
                torch.empty(dims, dtype=dtype)
        (n_alias,) = struct.unpack("<I", _read(f, 4, path, "the alias count"))
        for _ in range(n_alias):
            alias = _read_string(f, path, "an alias")
            target = _read_string(f, path, f"the target of alias {alias}")
            if target not in variables:
                raise Ct2FormatError(f"{path}: alias {alias} points to missing variable {target}")
            variables[alias] = variables[target]
    return Ct2Model(spec, revision, variables)


def _float(variables: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """Variable `name` as float32, dequantised when an int8/int16 `<name>_scale` sits beside it."""
    if name not in variables:
        raise KeyError(f"CTranslate2 Whisper model lacks variable {name}")
    value = variables[name]
    scale = variables.get(name + "_scale")
    if scale is not None and not value.is_floating_point():
        scale = scale.float()
        if scale.numel() > 1:  # per output row (int8); conv weights are (out, in, k)
            scale = scale.reshape(-1, *([1] * (value.dim() - 1)))
        return value.float() / scale
    return value.to(torch.float32, copy=True).contiguous()  # own storage: aliases share theirs


def _count_layers(variables: dict[str, torch.Tensor], side: str) -> int:
    idx = {int(m.group(1)) for k in variables if (m := re.match(rf"{side}/layer_(\d+)/", k))}
    if idx != set(range(len(idx))):
        raise Ct2FormatError(f"{side} layers are not numbered 0..N-1: {sorted(idx)}")
    return len(idx)


def _heads(variables: dict[str, torch.Tensor], side: str, d_model: int) -> int:
    value = variables.get(f"{side}/num_heads")
    return int(value.item()) if value is not None else d_model // 64  # Whisper: head size 64


def ct2_to_hf_state_dict(variables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map CTranslate2 Whisper variables to `WhisperForConditionalGeneration` names (float32).

    Fused q,k,v (`self_attention/linear_0`) and cross-attention k,v (`attention/linear_1`)
    are split; the key projection has no bias in Hugging Face's layout, so its (zero) slice
    of the fused bias is dropped. `proj_out.weight` is left out when tied to the embeddings.
    """
    sd: dict[str, torch.Tensor] = {}

    def linear(src: str, dst: str, bias: bool = True) -> None:
        sd[f"{dst}.weight"] = _float(variables, f"{src}/weight")
        if bias:
            sd[f"{dst}.bias"] = _float(variables, f"{src}/bias")

    def norm(src: str, dst: str) -> None:
        sd[f"{dst}.weight"] = _float(variables, f"{src}/gamma")
        sd[f"{dst}.bias"] = _float(variables, f"{src}/beta")

    def split(src: str, dsts: list[str]) -> None:
        weights = _float(variables, f"{src}/weight").chunk(len(dsts), dim=0)
        biases = _float(variables, f"{src}/bias").chunk(len(dsts), dim=0)
        for dst, w, b in zip(dsts, weights, biases):
            sd[f"{dst}.weight"] = w.contiguous()
            if not dst.endswith("k_proj"):
                sd[f"{dst}.bias"] = b.contiguous()

    for i in range(_count_layers(variables, "encoder")):
        src, dst = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        split(f"{src}/self_attention/linear_0", [f"{dst}.self_attn.{p}_proj" for p in "qkv"])
        linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
        norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
        linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
        linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
    for i in range(_count_layers(variables, "decoder")):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        split(f"{src}/self_attention/linear_0", [f"{dst}.self_attn.{p}_proj" for p in "qkv"])
        linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
        norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
        linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
        split(f"{src}/attention/linear_1", [f"{dst}.encoder_attn.{p}_proj" for p in "kv"])
        linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
        norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
        linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
        linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
    for side in ("encoder", "decoder"):
        sd[f"model.{side}.embed_positions.weight"] = _float(
            variables, f"{side}/position_encodings/encodings")
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"model.encoder.{conv}")
    sd["model.decoder.embed_tokens.weight"] = _float(variables, "decoder/embeddings/weight")
    if not _tied(variables):
        sd["proj_out.weight"] = _float(variables, "decoder/projection/weight")
    return sd


def _special_ids(tokenizer_json: Path) -> dict[str, int]:
    """Content -> id for the added (special) tokens of a Hugging Face tokenizer.json."""
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    return {t["content"]: t["id"] for t in data.get("added_tokens", [])}


def whisper_configs(variables: dict[str, torch.Tensor], ct2_config: dict,
                    special: dict[str, int]) -> tuple[WhisperConfig, GenerationConfig]:
    """Model dims from the variable shapes; special ids from the tokenizer's added tokens."""
    from transformers import GenerationConfig, WhisperConfig

    missing = [t for t in ("<|endoftext|>", "<|startoftranscript|>") if t not in special]
    if missing:
        raise ValueError(f"tokenizer.json lacks the Whisper special tokens {missing}")
    vocab_size, d_model = variables["decoder/embeddings/weight"].shape
    eot, sot = special["<|endoftext|>"], special["<|startoftranscript|>"]
    tied = _tied(variables)
    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=variables["encoder/conv1/weight"].shape[1],  # (d, n_mels, 3)
        d_model=d_model,
        encoder_layers=_count_layers(variables, "encoder"),
        decoder_layers=_count_layers(variables, "decoder"),
        encoder_attention_heads=_heads(variables, "encoder", d_model),
        decoder_attention_heads=_heads(variables, "decoder", d_model),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        suppress_tokens=None, begin_suppress_tokens=None,  # in generation_config only
        tie_word_embeddings=tied,
    )
    multilingual = vocab_size >= 51865  # as in Hugging Face's converter
    last_lang = special.get("<|translate|>", vocab_size)  # language tokens sit between the two
    lang_to_id = {t: i for t, i in special.items()
                  if re.fullmatch(r"<\|[a-z]{2,3}\|>", t) and sot < i < last_lang}
    gen = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=config.max_target_positions,
        suppress_tokens=ct2_config.get("suppress_ids"),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin"),
        alignment_heads=ct2_config.get("alignment_heads"),
        is_multilingual=multilingual,
        no_timestamps_token_id=special.get("<|notimestamps|>"),
        prev_sot_token_id=special.get("<|startofprev|>"),
        max_initial_timestamp_index=50,
        return_timestamps=False,
    )
    if multilingual:
        gen.lang_to_id = lang_to_id
        gen.task_to_id = {t: special[f"<|{t}|>"] for t in ("transcribe", "translate")
                          if f"<|{t}|>" in special}
    return config, gen


def _tied(variables: dict[str, torch.Tensor]) -> bool:
    """True when the output projection is (an alias of) the decoder embeddings."""
    projection = variables.get("decoder/projection/weight")
    return projection is None or projection is variables.get("decoder/embeddings/weight")


def convert_ct2_whisper(ct2_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a Hugging Face Whisper checkpoint (fp32 safetensors) for CTranslate2 folder `ct2_dir`.

    Args:
        ct2_dir: folder with model.bin, tokenizer.json and (optional) config.json.
        out_dir: created or overwritten file by file; use `ensure_hf_whisper` for a cache.
    """
    from safetensors.torch import save_file
    from transformers import WhisperFeatureExtractor

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    for needed in ("model.bin", "tokenizer.json"):
        if not (ct2_dir / needed).is_file():
            raise FileNotFoundError(f"{ct2_dir}: no {needed}; expected a CTranslate2 Whisper "
                                    "folder (model.bin, config.json, tokenizer.json)")
    model = read_ct2_model(ct2_dir / "model.bin")
    if model.spec != "WhisperSpec":
        raise ValueError(f"{ct2_dir / 'model.bin'}: is a CTranslate2 {model.spec} model, "
                         "not Whisper (WhisperSpec)")
    ct2_config_path = ct2_dir / "config.json"
    ct2_config = json.loads(ct2_config_path.read_text()) if ct2_config_path.is_file() else {}
    special = _special_ids(ct2_dir / "tokenizer.json")
    config, gen = whisper_configs(model.variables, ct2_config, special)
    state = ct2_to_hf_state_dict(model.variables)

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config.architectures = ["WhisperForConditionalGeneration"]
    config.save_pretrained(out_dir)
    gen.save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out_dir)
    shutil.copyfile(ct2_dir / "tokenizer.json", out_dir / "tokenizer.json")
    tok_config = {
        "tokenizer_class": "WhisperTokenizer",
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "model_max_length": 1024, "add_prefix_space": False, "errors": "replace",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    return out_dir


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_hf_whisper(ct2_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Hugging Face checkpoint folder for `ct2_dir`, converted once (keyed by model.bin sha256).

    The conversion is written to a temp folder and renamed into place, so a crash never
    leaves a half-written checkpoint. Default cache: `<weights cache>/hf-whisper/<sha[:16]>-v<N>`.
    """
    from speechwire.weights.fetch import cache_root

    ct2_dir = Path(ct2_dir)
    if not (ct2_dir / "model.bin").is_file():
        raise FileNotFoundError(f"{ct2_dir}: no model.bin; expected a CTranslate2 Whisper "
                                "folder (fetch one with `speechwire weights fetch whisper-tiny.en`)")
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "hf-whisper"
    dest = root / f"{_sha256(ct2_dir / 'model.bin')[:16]}-v{CONVERTER_VERSION}"
    if all((dest / f).is_file() for f in HF_FILES):
        return dest
    tmp = root / f".{dest.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        convert_ct2_whisper(ct2_dir, tmp)
        return publish_folder(tmp, dest, HF_FILES)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_folder(tmp: Path, dest: Path, required: tuple[str, ...] | list[str]) -> Path:
    """Move a freshly built folder into place atomically, unless a complete one is already there
    (a concurrent winner); a stale partial folder is replaced."""
    if dest.exists():
        if all((dest / f).is_file() for f in required):
            return dest
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest

