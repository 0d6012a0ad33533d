"""Variance decomposition on synthetic grids with known effects."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from speechwire.grid.analysis import best_by_group, explain, ranking, variance_shares

FACTORS = ["encoder", "adapter", "llm"]


def _grid(effect, seeds=2, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for e, a, m, s in itertools.product(range(2), range(5), range(2), range(seeds)):
        rows.append({"encoder": f"e{e}", "adapter": f"a{a}", "llm": f"l{m}", "seed": s,
                     "wer": effect(e, a, m) + noise * rng.standard_normal()})
    return rows


def _share(res, term):
    return next(t["share"] for t in res["terms"] if t["term"] == term)


def test_sfm_effect_dominates():
    res = variance_shares(_grid(lambda e, a, m: 10 * e), FACTORS, "wer")
    assert _share(res, "encoder") > 0.9
    assert _share(res, "adapter") < 0.01 and _share(res, "llm") < 0.01
    assert sum(t["share"] for t in res["terms"]) + res["residual_share"] == pytest.approx(1.0)
    assert explain(res, "WER").startswith("SFM explains 100% of WER variance")
    assert ranking(res, "WER").startswith("Factors by main-effect share of WER variance: SFM (100%) > ")


def test_balanced_shares_match_textbook_anova_and_ignore_order():
    rows = _grid(lambda e, a, m: 3 * e + a * 0.5 + 2 * (e * (a == 2)) + 0.3 * m, noise=0.2)
    y = np.array([r["wer"] for r in rows])
    total = ((y - y.mean()) ** 2).sum()
    for f in FACTORS:  # main-effect SS of a balanced design = sum over levels of n_level * (mean_level - mean)^2
        levels = {r[f] for r in rows}
        ss = sum(len(v) * (np.mean(v) - y.mean()) ** 2
                 for v in ([r["wer"] for r in rows if r[f] == lvl] for lvl in levels))
        assert _share(variance_shares(rows, FACTORS, "wer"), f) == pytest.approx(ss / total, rel=1e-9)
    a = variance_shares(rows, FACTORS, "wer")
    b = variance_shares(rows, FACTORS[::-1], "wer")
    assert _share(a, "encoder x adapter") == pytest.approx(_share(b, "adapter x encoder"), rel=1e-9)
    assert _share(a, "encoder x adapter") > 0.02 > _share(a, "adapter x llm")  # the planted interaction is found


def test_single_level_factor_dropped_and_missing_cells_tolerated():
    rows = [r for r in _grid(lambda e, a, m: 5 * a) if r["llm"] == "l0"]
    rows = rows[:-3]  # unbalanced: missing cells
    res = variance_shares(rows, FACTORS, "wer")
    assert res["dropped"] == ["llm"] and _share(res, "adapter") > 0.9
    rows.append({"encoder": "e0", "adapter": "a0", "llm": "l0", "wer": None})
    assert variance_shares(rows, FACTORS, "wer")["n"] == len(rows) - 1


def test_best_adapter_per_pair_respects_metric_direction():
    rows = _grid(lambda e, a, m: a if e == 0 else -a, seeds=1, noise=0.0)
    best = best_by_group(rows, ["encoder", "llm"], "adapter", "wer")
    assert {(b["encoder"], b["adapter"]) for b in best} == {("e0", "a0"), ("e1", "a4")}
    for r in rows:
        r["bleu"] = r.pop("wer")
    best = best_by_group(rows, ["encoder", "llm"], "adapter", "bleu")
    assert {(b["encoder"], b["adapter"]) for b in best} == {("e0", "a4"), ("e1", "a0")}


def test_seed_noise_sets_replicates_beside_factor_effects():
    from speechwire.grid.report import seed_noise

    rows = [{"encoder": e, "adapter": a, "seed": s, "wer": w} for e, a, s, w in [
        ("tiny", "mlp", 0, 0.50), ("tiny", "mlp", 1, 0.54), ("tiny", "conv", 0, 1.0), ("tiny", "conv", 1, 0.98),
        ("base", "mlp", 0, 0.40), ("base", "conv", 0, 1.0)]]
    noise = seed_noise(rows, ["encoder", "adapter"], "wer")
    assert noise["cells"] == 2
    assert noise["mean_abs_diff"] == pytest.approx(0.03)
    assert noise["max_abs_diff"] == pytest.approx(0.04)
    # pooled within-cell SD: sqrt((2 * 0.02^2 + 2 * 0.01^2) / 2)
    assert noise["pooled_sd"] == pytest.approx((0.02 ** 2 + 0.01 ** 2) ** 0.5)
    assert noise["effect_range"]["adapter"] == pytest.approx(2.98 / 3 - 1.44 / 3)  # level means over all rows
    assert seed_noise([r for r in rows if r["seed"] == 0], ["encoder", "adapter"], "wer") is None
