"""--dry-run's cost model: the decoding probe on a tiny LLM and the per-batch decoding estimate."""

from __future__ import annotations

import pytest

from speechwire.data import Utterance, load_manifest
from speechwire.grid import spec as grid_spec  # its test_manifests is no test
from speechwire.grid.estimate import DecodeCost, decoding_seconds, probe_decoding
from speechwire.grid.spec import load_grid, plan, run_config, write_task_manifests


def _utt(i: int, seconds: float, text: str, translation: str | None = None) -> Utterance:
    return Utterance(id=f"u{i}", audio=f"u{i}.wav", duration=seconds, transcript=text, translation=translation,
                     task="st" if translation else "asr", tgt_lang="de" if translation else None)


def test_decoding_seconds_charges_each_batch_its_longest_reference(grid_file, tmp_path):
    spec = load_grid(grid_file)
    cfg = run_config(spec, plan(spec)[0], tmp_path, None)
    cfg.eval.batch_size, cfg.eval.max_new_tokens = 2, 10
    words = DecodeCost(prefill_per_audio_second=0.5, seconds_per_step=0.25, batch_size=2,
                       count_tokens=lambda text: len(text.split()))
    utts = [_utt(0, 4.0, "a b c d e f g h i j k l"),  # 12 tokens: capped at 10 steps
            _utt(1, 1.0, "a b"), _utt(2, 2.0, "a", translation="x y z w"),  # ST: the translation is decoded
            _utt(3, 3.0, "a b c")]
    # by duration: [u1, u2] -> 1 + max(2, 4) = 5 steps; [u3, u0] -> min(10, 1 + 12) = 10 steps
    expected, upper = decoding_seconds(utts, cfg, words)
    assert expected == pytest.approx(0.5 * 3.0 + 0.25 * 5 + 0.5 * 7.0 + 0.25 * 10)
    assert upper == pytest.approx(0.5 * 10.0 + 0.25 * 10 * 2)


def _probe_inputs(grid_file, tmp_path):
    spec = load_grid(grid_file)
    run = plan(spec)[0]
    out = tmp_path / "g"
    write_task_manifests(spec, [run], out)
    cfg = run_config(spec, run, out, None)
    return cfg, next(iter(grid_spec.test_manifests(spec, run, out).values()))


def test_probe_decoding_times_full_length_steps_and_restores_the_model(grid_file, tmp_path, monkeypatch):
    from speechwire.model import SpeechLLM

    seen, generate = [], SpeechLLM.generate_output  # per decode: (model, its stop ids, its loop guard, lengths)

    def spy(self, *args, **kwargs):
        stops, repeats = set(self.prompter.stop_ids), self.cfg.eval.max_repeats
        out = generate(self, *args, **kwargs)
        seen.append((self, stops, repeats, sorted({len(ids) for ids in out.token_ids})))
        return out

    monkeypatch.setattr(SpeechLLM, "generate_output", spy)
    cfg, manifest = _probe_inputs(grid_file, tmp_path)
    cfg.eval.max_repeats = 3
    cost = probe_decoding(cfg, manifest, steps=4)
    model = seen[0][0]
    assert all(m is model for m, *_ in seen)
    assert [(stops, repeats) for _, stops, repeats, _ in seen] == [(set(), 0)] * 3  # stop tokens and loop guard off
    assert [lengths for *_, lengths in seen] == [[1], [1], [4]]  # so every item runs the full length
    assert cfg.eval.max_repeats == 3  # the caller's config is untouched
    assert model.prompter.stop_ids == SpeechLLM(cfg).prompter.stop_ids != set()  # restored afterwards
    assert cost.batch_size == min(cfg.eval.batch_size, len(load_manifest(manifest)))
    assert cost.seconds_per_step >= 0 and cost.prefill_per_audio_second >= 0  # timings: no bound on a busy CPU
    assert cost.count_tokens("hello world") > 0
    expected, upper = decoding_seconds(load_manifest(manifest), cfg, cost)
    assert 0 <= expected <= upper


def test_probe_decoding_restores_the_stop_tokens_when_a_decode_fails(grid_file, tmp_path, monkeypatch):
    from speechwire.model import SpeechLLM

    models, generate = [], SpeechLLM.generate_output

    def failing(self, *args, **kwargs):
        models.append(self)
        if len(models) == 2:
            raise RuntimeError("decoding failed")
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(SpeechLLM, "generate_output", failing)
    cfg, manifest = _probe_inputs(grid_file, tmp_path)
    with pytest.raises(RuntimeError, match="decoding failed"):
        probe_decoding(cfg, manifest, steps=4)
    assert models[0].prompter.stop_ids == SpeechLLM(cfg).prompter.stop_ids != set()
