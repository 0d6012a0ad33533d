"""CIF adapter: fire counts, exact weighted sums against a slow loop, training-time scaling."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from speechwire.adapters import AdapterTargets
from speechwire.adapters.cif import cif_fire_counts, cif_weights, rescale_tail

from helpers import D_LLM, make_frames, make_targets, tiny_adapter


def cif_reference(alphas: list[float], h: torch.Tensor, beta: float = 1.0, tail: float = 0.5) -> list[torch.Tensor]:
    """Slow left-to-right integrate-and-fire, one frame at a time (float64)."""
    fired, acc, vec = [], 0.0, torch.zeros(h.shape[1], dtype=torch.float64)
    for t, a in enumerate(alphas):
        while acc + a >= beta:  # the frame crosses a boundary: split it
            part = beta - acc
            fired.append(vec + part * h[t])
            vec, acc, a = torch.zeros_like(vec), 0.0, a - part
        acc, vec = acc + a, vec + a * h[t]
    if acc >= tail or not fired:  # tail rule, and at least one vector per item
        fired.append(vec)
    return fired


alpha_lists = st.lists(st.floats(0.01, 0.99), min_size=1, max_size=30)


def _away_from_edges(s: float) -> bool:
    frac = s - math.floor(s)
    return min(frac, 1 - frac) > 1e-3 and abs(frac - 0.5) > 1e-3


@settings(max_examples=100, deadline=None)
@given(alphas=alpha_lists)
def test_fire_count_is_floor_plus_tail(alphas):
    s = sum(alphas)
    assume(_away_from_edges(s))
    expected = max(1, math.floor(s) + (s - math.floor(s) >= 0.5))
    got = cif_fire_counts(torch.tensor([s], dtype=torch.float64), 1.0, 0.5)
    assert int(got) == expected == len(cif_reference(alphas, torch.zeros(len(alphas), 1, dtype=torch.float64)))


@settings(max_examples=100, deadline=None)
@given(alphas=alpha_lists, scale=st.sampled_from([1.0, 2.5]), seed=st.integers(0, 1000))
def test_fired_vectors_are_the_exact_weighted_sums(alphas, scale, seed):
    """Vectorised weights == the slow loop, also for alphas > 1 (a frame firing several times)."""
    a = [x * scale for x in alphas]
    assume(_away_from_edges(sum(a)))
    h = torch.randn(len(a), 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref = torch.stack(cif_reference(a, h))  # (K, 3)
    at = torch.tensor([a], dtype=torch.float64)  # (1, T)
    counts = cif_fire_counts(at.sum(1), 1.0, 0.5)
    got = torch.bmm(cif_weights(at, counts, 1.0), h[None])[0]  # (K, 3)
    torch.testing.assert_close(got, ref, atol=1e-9, rtol=1e-9)


def test_batched_weights_match_per_item():
    """Padding (alpha 0) and a batch of different sums give each item its own weights."""
    g = torch.Generator().manual_seed(0)
    alphas = torch.rand(3, 20, generator=g) * 0.9
    alphas[1, 12:] = 0
    alphas[2, 3:] = 0
    counts = cif_fire_counts(alphas.sum(1), 1.0, 0.5)
    w = cif_weights(alphas, counts, 1.0)  # (3, K, 20)
    for b in range(3):
        alone = cif_weights(alphas[b : b + 1], counts[b : b + 1], 1.0)[0]
        torch.testing.assert_close(w[b, : int(counts[b])], alone)
        assert w[b, int(counts[b]) :].abs().sum() == 0


@settings(max_examples=100, deadline=None)
@given(alphas=st.lists(st.floats(0.001, 0.999), min_size=1, max_size=60), n=st.integers(1, 80))
def test_scaled_alphas_fire_exactly_the_target_length(alphas, n):
    """float32 scaling to sum N may round to N +- ulp; the fire count is still exactly N."""
    a = torch.tensor([alphas], dtype=torch.float32)
    scaled = a * (n / a.sum(1))[:, None]
    assert int(cif_fire_counts(scaled.sum(1), 1.0, 0.5)) == n


def test_training_fires_target_length_and_quantity_loss_uses_unscaled_alphas():
    adapter = tiny_adapter("cif").train()
    x, lens = make_frames([30, 17, 9], seed=1)
    n = torch.tensor([7, 40, 1])  # 40 > 17 frames: alphas > 1, frames fire several times
    out = adapter(x, lens, AdapterTargets(target_lengths=n))
    assert out.lengths.tolist() == [7, 40, 1]
    assert out.embeds.shape == (3, 40, D_LLM)
    valid = torch.arange(30)[None, :] < lens[:, None]
    raw = adapter.alpha(x * valid[..., None], valid)  # (B, T) unscaled
    torch.testing.assert_close(out.aux_losses["quantity"], (raw.sum(1) - n).abs().mean())
    torch.testing.assert_close(out.aux_loss, adapter.cfg.quantity_loss_weight * out.aux_losses["quantity"])
    assert out.ratio == pytest.approx(56 / 48)


def test_eval_uses_unscaled_alphas_and_always_fires_once():
    adapter = tiny_adapter("cif").eval()
    with torch.no_grad():
        adapter.alpha.proj.bias.fill_(-20.0)  # alphas ~ 2e-9: nothing would ever fire
    x, lens = make_frames([30, 5], seed=2)
    out = adapter(x, lens)
    assert out.lengths.tolist() == [1, 1]
    with torch.no_grad():
        adapter.alpha.proj.weight.zero_()
        adapter.alpha.proj.bias.fill_(math.log(0.32 / 0.68))  # alpha = 0.32 on every frame
    out = adapter(x, lens)
    # 30 * 0.32 = 9.6 -> 9 + tail 0.6 -> 10; 5 * 0.32 = 1.6 -> 1 + tail 0.6 -> 2
    assert out.lengths.tolist() == [10, 2]


def test_training_without_target_lengths_is_a_clear_error():
    adapter = tiny_adapter("cif").train()
    x, lens = make_frames([10])
    with pytest.raises(ValueError, match="target_lengths"):
        adapter(x, lens, AdapterTargets())
    adapter(x, lens, make_targets(lens))  # fine with targets


def test_empty_target_still_fires_one_vector():
    adapter = tiny_adapter("cif").train()
    x, lens = make_frames([10, 6])
    out = adapter(x, lens, AdapterTargets(target_lengths=torch.tensor([0, 3])))
    assert out.lengths.tolist() == [1, 3]


def test_training_fires_target_length_for_any_threshold():
    import torch

    from speechwire.adapters import AdapterContext, AdapterTargets, build_adapter
    from speechwire.config import AdapterConfig

    torch.manual_seed(0)
    for beta in (0.5, 1.0, 2.0):
        cfg = AdapterConfig(name="cif", hidden_size=16, num_layers=1, num_heads=2, ffn_size=32, dropout=0.0,
                            cif_threshold=beta)
        adapter = build_adapter(cfg, AdapterContext(in_dim=8, out_dim=12, frame_rate=50.0)).train()
        seen = {}
        adapter.stack.register_forward_hook(lambda m, args, out: seen.update(fired=args[0]))
        out = adapter(torch.randn(2, 30, 8).abs() + 0.1, torch.tensor([30, 17]),
                      targets=AdapterTargets(target_lengths=torch.tensor([7, 3])))
        assert out.lengths.tolist() == [7, 3], beta
        fired = seen["fired"]  # (B, K, C): every one of the N vectors integrates a full beta of weight
        assert (fired[0, :7].abs().sum(-1) > 0).all() and (fired[1, :3].abs().sum(-1) > 0).all(), beta


def test_tail_rescale_like_the_authors_torch_cif_port():
    # alphas sum to 2.7: two full vectors and a tail of weight 0.7 (>= 0.5), which the authors'
    # port upscales by threshold / 0.7; ours keeps it as integrated unless cif_tail_rescale
    a = torch.tensor([[0.6, 0.6, 0.6, 0.6, 0.3]], dtype=torch.float64)
    h = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    counts = cif_fire_counts(a.sum(1), 1.0, 0.5)
    assert counts.tolist() == [3]
    w = cif_weights(a, counts, 1.0)
    scaled = rescale_tail(w, a.sum(1), counts, 1.0, 0.5)
    torch.testing.assert_close(scaled[0, :2], w[0, :2])  # full vectors untouched
    torch.testing.assert_close(scaled[0, 2], w[0, 2] / 0.7)
    assert float(scaled[0, 2].sum()) == pytest.approx(1.0)  # the tail now weighs one threshold
    tail = torch.bmm(scaled, h[None])[0, 2]
    torch.testing.assert_close(tail, (0.4 * h[3] + 0.3 * h[4]) / 0.7)  # cumsum 2.4 -> 2.7
    # no tail fired (leftover 0.3 < 0.5) and the forced single vector: nothing is rescaled
    for alphas in ([[0.5, 0.5, 0.3]], [[0.1, 0.2]]):
        a = torch.tensor(alphas, dtype=torch.float64)
        c = cif_fire_counts(a.sum(1), 1.0, 0.5)
        w = cif_weights(a, c, 1.0)
        torch.testing.assert_close(rescale_tail(w, a.sum(1), c, 1.0, 0.5), w)


def test_tail_rescale_switch_in_the_adapter():
    x, lens = make_frames([23, 9], seed=5)
    ours, paper = tiny_adapter("cif").eval(), tiny_adapter("cif", cif_tail_rescale=True).eval()
    paper.load_state_dict(ours.state_dict())
    a, b = ours(x, lens), paper(x, lens)
    assert a.lengths.tolist() == b.lengths.tolist()
    paper.train()  # training fires exactly N vectors, no tail: the switch changes nothing there
    ours.train()
    t = make_targets(lens)
    torch.testing.assert_close(ours(x, lens, t).embeds, paper(x, lens, t).embeds)
