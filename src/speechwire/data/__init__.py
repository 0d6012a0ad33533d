"""The data layer: manifests, importers, duration-bucketed batching, dataset, the batch and collate.

    utts = load_manifest("train.jsonl")                    # validated Utterances
    loader = make_dataloader(utts, cfg.data, seed=0)      # batches of padded 16 kHz audio
    for epoch in range(E):
        loader.set_epoch(epoch)
        for batch in loader: ...                          # a Batch: see data/batch.py
    ckpt["data"] = loader.state_dict()                    # exact mid-epoch resume

Modules: manifest (Utterance, JSONL I/O, language names), importers (MuST-C, CoVoST 2, HF
datasets), sampler (DurationBucketSampler), dataset (SpeechDataset, loaders), batch (Batch,
its token ids, collate).
"""

from speechwire.data.batch import Batch, BatchTokenizer, BatchTokens, Collator, collate
from speechwire.data.dataset import (
    CachedFeatureDataset,
    SpeechDataLoader,
    SpeechDataset,
    eval_loader,
    filter_by_duration,
    make_dataloader,
)
from speechwire.data.importers import import_covost2, import_hf, import_mustc
from speechwire.data.manifest import (
    ManifestError,
    Utterance,
    language_name,
    load_manifest,
    utterance_duration,
    write_manifest,
)
from speechwire.data.sampler import DurationBucketSampler

__all__ = [
    "Batch", "BatchTokenizer", "BatchTokens", "CachedFeatureDataset", "Collator", "DurationBucketSampler", "ManifestError",
    "SpeechDataLoader", "SpeechDataset", "Utterance",
    "collate", "eval_loader", "filter_by_duration", "import_covost2", "import_hf",
    "import_mustc", "language_name", "load_manifest", "make_dataloader",
    "utterance_duration", "write_manifest",
]
