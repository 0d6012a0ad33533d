"""Give a trained chars-head model a lexicon and word LM (align.word_weight) without retraining.

The alignment stage builds them when align.word_weight > 0; a model trained before (or without)
gets them here, from its own config's texts (the training transcripts, align.lm_text) and
align.lexicon, with the config changes given as --set. The run folder's weights file and config
are rewritten in place (atomically); the weights are unchanged.

    python scripts/add_lexicon.py RUN --set align.word_weight=0.5 --set 'align.lexicon=[/usr/share/dict/words]'
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from speechwire.align import TiedCTCHead, build_head_words, read_lm_text
from speechwire.config import load_config, to_dict
from speechwire.data import load_manifest
from speechwire.files import read_safetensors, safetensors_bytes, write_atomic
from speechwire.llm import load_tokenizer
from speechwire.model import CONFIG_NAME, WEIGHTS_NAME


def add_lexicon(run: Path, overrides: list[str], manifest: str | None = None) -> int:
    """Rewrite `run`'s weights with the lexicon tensors and its config with `overrides`; the lexicon's
    size. `manifest`: read the transcripts there instead of the config's data.train_manifest."""
    cfg = load_config(run / CONFIG_NAME, overrides)
    if cfg.align.word_weight <= 0:
        raise SystemExit("add_lexicon: align.word_weight must be > 0 (give it with --set align.word_weight=...)")
    tensors, metadata = read_safetensors(run / WEIGHTS_NAME, "trainable weights")
    if "align_head.vocab_ids" not in tensors:
        raise SystemExit(f"add_lexicon: {run} has no alignment head (align.vocab=chars) to give words to")
    head = TiedCTCHead(tensors["align_head.blank"].new_zeros(1, tensors["align_head.blank"].shape[0]), init=False)
    head.set_vocab(tensors["align_head.vocab_ids"].tolist())
    transcripts = [u.transcript for u in load_manifest(manifest or cfg.data.train_manifest) if u.transcript]
    words = build_head_words(head, load_tokenizer(cfg.llm), transcripts + read_lm_text(cfg.align.lm_text), cfg.align)
    tensors.update({f"align_head.{k}": v for k, v in words.to_tensors().items()})
    metadata.pop("sha256", None)
    write_atomic(run / WEIGHTS_NAME, safetensors_bytes(tensors, metadata), "trained weights with a lexicon")
    write_atomic(run / CONFIG_NAME, yaml.safe_dump(to_dict(cfg), sort_keys=False), "config")
    return len(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder (config.yaml + trainable.safetensors)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--manifest", help="the training transcripts, if not at the config's data.train_manifest")
    args = parser.parse_args()
    print(f"{args.run}: {add_lexicon(args.run, args.overrides, args.manifest):,} words")


if __name__ == "__main__":
    main()
