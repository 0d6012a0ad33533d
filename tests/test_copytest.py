"""The copy test (copytest.py, SpeechLLM.generate_from_text) on a tiny random LLM: the transcript's
token embeddings go between the audio markers, exactly where an adapter's outputs go; a batch
decodes what its items decode alone; `copy_test` and `speechwire copytest` score and write what
the model answered."""

from __future__ import annotations

import json

import pytest
import torch

from speechwire.cli import main
from speechwire.config import load_config
from speechwire.copytest import copy_test
from speechwire.data import Batch
from speechwire.features import CachedEncoder
from speechwire.metrics import score
from speechwire.model import SpeechLLM

from helpers import write_tone

TEXTS = ["hello world how are you", "a", "the cat sleeps on the warm mat", "see you soon"]


@pytest.fixture(scope="module")
def cfg_path(tmp_path_factory):
    from speechwire.testing import save_tiny_llm

    tmp = tmp_path_factory.mktemp("copytest")
    llm = save_tiny_llm(tmp / "llm", seed=3)
    for name in ("u0", "u1", "u2", "u3"):
        write_tone(tmp / f"{name}.wav", 1.0)  # never read: the copy test uses the transcripts only
    manifest = tmp / "dev.jsonl"
    lines = [{"id": f"u{i}", "audio": f"u{i}.wav", "duration": 1.0, "transcript": t, "task": "asr"}
             for i, t in enumerate(TEXTS)]
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    path = tmp / "copy.yaml"
    path.write_text(f"llm: {{model: {llm}, asr_prompt: Repeat the text above exactly.}}\n"
                    "eval: {max_new_tokens: 6, batch_size: 3}\n")
    return path, manifest


@pytest.fixture(scope="module")
def model(cfg_path):
    m = SpeechLLM(load_config(cfg_path[0]), encoder=CachedEncoder(16, 50.0, "none", "copy test: no speech encoder"))
    return m.eval()


def test_the_text_embeddings_go_between_the_audio_markers(model):
    prefills = []

    def first_call(module, args, kwargs):
        if not prefills:
            prefills.append((kwargs["inputs_embeds"].detach().clone(), kwargs["attention_mask"].detach().clone()))

    hook = model.llm.get_decoder().register_forward_pre_hook(first_call, with_kwargs=True)
    cache, model.prefix_cache = model.prefix_cache, None  # the whole prompt in one pass (no cached prefix)
    try:
        model.generate_from_text(TEXTS)
    finally:
        hook.remove()
        model.prefix_cache = cache
    inputs, mask = prefills[0]  # (B, L, d_llm), left-padded
    start, end = model.audio_markers.detach()
    for i, text in enumerate(TEXTS):
        words = model.embed_text(model.prompter.text_ids(text)).float()  # (n, d_llm): a perfect adapter's output
        seq = inputs[i][mask[i].bool()]  # the item's prompt, padding dropped
        first = [k for k in range(len(seq)) if torch.equal(seq[k], start)]
        last = [k for k in range(len(seq)) if torch.equal(seq[k], end)]
        assert first and last, text
        assert torch.equal(seq[first[0] + 1: last[-1]], words), text  # the words, whole and in order, and nothing else


def test_a_batch_copies_what_each_text_copies_alone(model):
    batched = model.generate_from_text(TEXTS)
    alone = [model.generate_from_text([t])[0] for t in TEXTS]
    assert batched == alone
    assert len(set(batched)) >= 3  # the answers differ, so a swapped or shared one would show


def test_generate_from_text_is_generate_with_the_tokens_as_adapter_output(model):
    """The same decoding as speech: _decode on the embeddings it builds gives the same ids."""
    ids = [model.prompter.text_ids(t) for t in TEXTS]
    n = torch.tensor([len(x) for x in ids])
    embeds = torch.zeros(len(ids), int(n.max()), model.audio_markers.shape[1])
    for i, x in enumerate(ids):
        embeds[i, : len(x)] = model.embed_text(x).float()
    batch = Batch(tasks=["asr"] * len(ids), src_langs=["en"] * len(ids), tgt_langs=[None] * len(ids))
    with torch.no_grad():
        out = model._decode(batch, embeds, n, model.cfg.eval.max_new_tokens)
    assert [model.prompter.decode(x) for x in out] == model.generate_from_text(TEXTS)


def test_copy_test_scores_and_writes_what_the_model_answered(cfg_path, model, tmp_path):
    path, manifest = cfg_path
    metrics = copy_test(load_config(path), manifest, limit=3, out_dir=tmp_path, progress=False)
    refs = TEXTS[:3]  # --limit 3
    hyps = model.generate_from_text(refs)
    assert metrics["num_utterances"] == 3 and metrics["asr"] == score("asr", refs, hyps)
    assert metrics["prompt"] == "Repeat the text above exactly." and metrics["llm"] == str(load_config(path).llm.model)
    lines = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [(x["id"], x["reference"], x["hypothesis"]) for x in lines] == [("u0", refs[0], hyps[0]),
                                                                             ("u1", refs[1], hyps[1]),
                                                                             ("u2", refs[2], hyps[2])]
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


def test_copytest_command_prints_the_wer(cfg_path, capsys):
    path, manifest = cfg_path
    assert main(["copytest", str(path), "--manifest", str(manifest), "--quiet"]) == 0
    out = capsys.readouterr().out
    wer = json.loads(out[: out.rindex("}") + 1])["asr"]["wer_percent"]
    assert out.rstrip().endswith(f"WER {wer:.1f} % over {len(TEXTS)} transcripts given as text")


def test_the_docs_table_is_the_committed_real_weights_run():
    """docs/demo.md's copy-test table (and README's SmolLM2 range) quote docs/results/copytest/, the
    answers benchmarks/copy_test_table.py wrote on the real weights."""
    from pathlib import Path

    root = Path(__file__).parents[1]
    runs = sorted((root / "docs" / "results" / "copytest").glob("*/metrics.json"),
                  key=lambda p: int(p.parent.name.split("-")[0]))  # 1-..., 2-...: the table's order
    measured = [json.loads(p.read_text()) for p in runs]
    doc = (root / "docs" / "demo.md").read_text()
    table = doc[doc.index("| LLM | prompt | audio markers | clips | copy-test WER % |"):].split("\n\n")[0].splitlines()[2:]
    rows = [[c.strip(" *") for c in line.strip("|").split("|")] for line in table]
    assert len(rows) == len(measured) == 7
    for (llm, prompt, _, clips, wer), m in zip(rows, measured):
        assert (llm.lower(), prompt, int(clips), float(wer)) == (
            m["llm"].removeprefix("weights:"), m["prompt"], m["num_utterances"], round(m["asr"]["wer_percent"], 1))
    smol = [round(m["asr"]["wer_percent"]) for m in measured if "smollm2" in m["llm"]]
    assert f"SmolLM2-135M does not, {min(smol)}-{max(smol)} %" in " ".join((root / "README.md").read_text().split())
