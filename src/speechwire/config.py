"""Reading experiment configs: YAML files, presets, dotted command-line overrides, and the checks
that need the registries (encoder and adapter names, adapter fields an adapter does not read).

    cfg = load_config("configs/demo_asr.yaml", ["adapter.name=conv", "train.lr=2e-4"])

The sections themselves (dataclasses that validate their own values) live in schema.py, which the
encoders and adapters import; this module sits above them. Its names are re-exported here, so
`from speechwire.config import ExperimentConfig` keeps working.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from speechwire.schema import (
    DEVICE_PATTERN,
    DTYPES,
    TASKS,
    WHISPER_MODES,
    AdapterConfig,
    AdapterFieldWarning,
    AlignConfig,
    ConfigError,
    DataConfig,
    EncoderConfig,
    EvalConfig,
    ExperimentConfig,
    LLMConfig,
    TrainConfig,
    instructions,
    resolve_device,
    torch_dtype,
)

__all__ = [  # the schema's names (re-exported) and this module's own
    "ConfigError", "AdapterFieldWarning", "EncoderConfig", "AdapterConfig", "LLMConfig", "DataConfig",
    "TrainConfig", "AlignConfig", "EvalConfig", "ExperimentConfig", "TASKS", "DEVICE_PATTERN", "DTYPES",
    "WHISPER_MODES", "instructions", "resolve_device", "torch_dtype", "from_dict", "to_dict",
    "flatten", "apply_overrides", "load_config", "save_config", "parse_yaml", "read_yaml", "check_names",
    "unread_adapter_fields", "warn_unread_adapter_fields", "available_presets", "apply_presets", "PRESETS_DIR",
]


# --- dict <-> dataclass -----------------------------------------------------------------------


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats. Raises ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any or origin is typing.Literal:  # a Literal's choices are checked by the section (schema._check)
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r} must be a list")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}={value!r} must be a mapping")
        k_tp, v_tp = typing.get_args(tp)
        return {_coerce(k, k_tp, where): _coerce(v, v_tp, f"{where}[{k!r}]") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # ints are fine for floats; YAML 1.1 reads "2e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}={value!r} must be true or false")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}={value!r} must be an integer")
    if not isinstance(value, tp):
        raise ConfigError(f"{where}={value!r} must be of type {tp.__name__}, got {type(value).__name__}")
    return value


def from_dict(cls: type, data: dict | None, where: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys and wrong types raise ConfigError."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(data) - known)
    if unknown:
        from speechwire.errors import did_you_mean

        raise ConfigError(
            f"unknown key(s) {', '.join(f'{where}.{k}'.lstrip('.') for k in unknown)};"
            f"{did_you_mean(unknown[0], known)} known in {where or 'the top level'}: {', '.join(sorted(known))}"
        )
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}".lstrip(".")) for k, v in data.items()})


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def flatten(data: dict) -> dict[str, Any]:
    """A nested config dict as dotted `section.key` names, one section deep, values as they are.

        flatten({"adapter": {"name": "cif"}, "preset": "paper"})  # {"adapter.name": "cif", "preset": "paper"}

    Only the sections of ExperimentConfig are opened: a mapping inside one (data.task_weights) stays
    one value, so every key is a `section.key=value` override that apply_overrides reads back.
    """
    sections = {f.name for f in dataclasses.fields(ExperimentConfig)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in sections and isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        node = data
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[leaf] = parse_yaml(raw, f"override {item!r}") if raw.strip() else None
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML experiment config (or the defaults when `path` is None), apply the overrides, and
    resolve its `preset:` (see `apply_presets`). Precedence: preset < file < overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        fix = "a run folder's config is FOLDER/config.yaml" if path.is_dir() else ""
        data = read_yaml(path, "config", fix) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections (encoder:, adapter:, llm:, ...), "
                              f"got {type(data).__name__}")
    apply_overrides(data, overrides or [])
    written = set(data["adapter"]) if isinstance(data.get("adapter"), dict) else set()  # not the preset's
    try:
        data = apply_presets(data, path.parent if path else None)
        check_names(data)
        cfg = from_dict(ExperimentConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
    warn_unread_adapter_fields(cfg.adapter, written, where=str(path) if path else "overrides")
    return cfg


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    from speechwire.files import write_atomic

    write_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False), "config")


def parse_yaml(text: str, where: str) -> Any:
    """yaml.safe_load with one clear line (file, line, column, problem) instead of a parser traceback."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = where if mark is None else f"{where} line {mark.line + 1}, column {mark.column + 1}" \
            if "\n" in text.strip() else f"{where} (column {mark.column + 1})"
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{at}: not valid YAML ({problem}); fix the syntax there") from None
    except (ValueError, OverflowError, RecursionError) as e:  # e.g. a date like 2024-13-45, deep nesting
        raise ConfigError(f"{where}: a value cannot be read ({type(e).__name__}: {e}); quote it as a string") from None


def read_yaml(path: str | Path, what: str = "config", fix: str = "") -> Any:
    """A YAML file's contents; missing file, folder, binary bytes or bad syntax give one ConfigError line."""
    from speechwire.files import read_text

    try:
        text = read_text(path, what, fix)
    except (OSError, ValueError) as e:
        raise ConfigError(str(e)) from None
    return parse_yaml(text, str(path))


def check_names(data: dict) -> None:
    """Unknown encoder/adapter names are reported first, with the known names: the other checks mean
    nothing for a misspelt part (`adapter.name=mlpp` is not a hidden_size problem)."""
    from speechwire import adapters, encoders  # noqa: F401  (importing them fills the registries)
    from speechwire.errors import unknown_name
    from speechwire.registry import ADAPTERS, ENCODERS

    for section, registry in (("encoder", ENCODERS), ("adapter", ADAPTERS)):
        node = data.get(section)
        name = node.get("name") if isinstance(node, dict) else None
        if isinstance(name, str) and name not in registry:
            raise ConfigError(unknown_name(registry.kind, name, registry.available(), f"{section}.name"))


def unread_adapter_fields(adapter: AdapterConfig, keys: Iterable[str] | None = None) -> list[str]:
    """The fields among `keys` (default: all) that differ from their default but that the adapter
    `adapter.name` does not read (each adapter class lists its `config_fields`)."""
    from speechwire.adapters import config_fields

    reads, keys = set(config_fields(adapter.name)), None if keys is None else set(keys)
    return [f.name for f in dataclasses.fields(AdapterConfig)
            if (keys is None or f.name in keys) and f.name not in reads and getattr(adapter, f.name) != f.default]


_WARNED: set[tuple] = set()  # (adapter, fields and values) already reported in this process


def warn_unread_adapter_fields(adapter: AdapterConfig, keys: Iterable[str] | None = None, where: str = "") -> list[str]:
    """Warn (AdapterFieldWarning) about `unread_adapter_fields(adapter, keys)`, once per process for
    each adapter and set of values; a warning, not an error, because one file may set fields for
    several adapters (a grid's common overrides). Returns those fields.

    Args:
        adapter: the config section.
        keys: the fields the user wrote (config file, overrides); None: every field.
        where: the file (or "overrides") the message names.
    """
    from speechwire.adapters import config_fields
    from speechwire.registry import ADAPTERS

    unread = unread_adapter_fields(adapter, keys)
    seen = (adapter.name, tuple((k, repr(getattr(adapter, k))) for k in unread))
    if unread and seen not in _WARNED:
        _WARNED.add(seen)
        items = [f"adapter.{k}={json.dumps(getattr(adapter, k))} (read by "
                 f"{', '.join(n for n in ADAPTERS.available() if k in config_fields(n))})" for k in unread]
        it, it_has = ("it", "it has") if len(unread) == 1 else ("them", "they have")
        warnings.warn(f"{where + ': ' if where else ''}the {adapter.name} adapter does not read {', '.join(items)}; "
                      f"{it_has} no effect: remove {it} or pick an adapter that reads {it}", AdapterFieldWarning,
                      stacklevel=3)
    return unread


# --- presets ----------------------------------------------------------------------------------

PRESETS_DIR = Path(__file__).parent / "assets" / "presets"  # `preset: NAME` reads NAME.yaml here


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _merge(base: dict, top: dict) -> dict:
    """Nested merge of config dicts: `top` wins; sections merge key by key."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_presets(data: dict, base_dir: Path | None = None) -> dict:
    """Resolve a top-level `preset:` key: its values go *under* the config's own, so the config
    file and the command-line overrides win over the preset.

    Args:
        data: a config as a nested dict, maybe with `preset:` = a name (`paper`: a file in
            speechwire/assets/presets/), a path to a YAML file (relative to `base_dir`, else the
            cwd), or a list of them (applied in order, later ones win).
        base_dir: the folder of the config file `data` came from.
    Returns:
        `data` without `preset:`, merged over the presets.
    Raises:
        ConfigError: unknown preset name, missing file, or a preset that is not a mapping of sections.
    """
    names, own = data.get("preset"), {k: v for k, v in data.items() if k != "preset"}
    if names is None:
        return own
    merged: dict = {}
    for name in [names] if isinstance(names, str) else names if isinstance(names, list) else [names]:
        if not isinstance(name, str):
            raise ConfigError(f"preset={names!r} must be a preset name, a YAML path, or a list of them")
        if name.endswith((".yaml", ".yml")):
            file = Path(name).expanduser()
            file = file if file.is_absolute() or base_dir is None else base_dir / file
        else:
            file = PRESETS_DIR / f"{name}.yaml"
            if not file.is_file():
                raise ConfigError(f"preset={name!r} is unknown; available: {', '.join(available_presets())} "
                                  "(or the path of a YAML file)")
        if not file.is_file():
            raise ConfigError(f"preset file {file} does not exist")
        preset = read_yaml(file, "preset") or {}
        if not isinstance(preset, dict) or "preset" in preset:
            raise ConfigError(f"{file}: a preset must be a mapping of sections and cannot name another preset")
        merged = _merge(merged, preset)
    return _merge(merged, own)
