"""Which factor matters: share of a metric's variance explained by each factor and pairwise interaction.

    shares = variance_shares(rows, ["encoder", "adapter", "llm"], "synth:asr.wer")
    shares["terms"]   # [{"term": "encoder", "share": 0.71, ...}, {"term": "adapter x encoder", ...}, ...]

Method: a linear model with main effects then all pairwise interactions, fitted by least squares
(numpy lstsq; treatment-coded dummies, rank deficiency allowed). Each term's sum of squares is the
drop in residual sum of squares when it is added (sequential, "Type I"), and its share is that
over the total sum of squares around the mean. For a balanced full-factorial grid this is the
classic ANOVA decomposition and does not depend on the order of terms; for unbalanced grids or
missing cells the order matters: main effects enter in grid-file order, then the interactions in
the same pair order, and each term only gets credit for what the earlier ones did not explain.
What no term explains (higher-order interactions, seed noise) is the residual. Factors with a
single level among the rows that have the metric are left out (and listed in "dropped").
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import numpy as np

from speechwire.grid.spec import label

LOWER_IS_BETTER = ("wer", "cer")


def lower_is_better(metric: str) -> bool:
    return metric.rsplit(".", 1)[-1] in LOWER_IS_BETTER


def _dummies(values: Sequence[str], levels: list[str]) -> np.ndarray:
    """(N, k-1) treatment coding: one column per level but the first."""
    return np.array([[1.0 if v == lvl else 0.0 for lvl in levels[1:]] for v in values]).reshape(len(values), -1)


def _rss(X: np.ndarray, y: np.ndarray) -> float:
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    r = y - X @ beta
    return float(r @ r)


def variance_shares(rows: Sequence[dict[str, Any]], factors: Sequence[str], metric: str,
                    interactions: bool = True) -> dict[str, Any]:
    """Sequential sums of squares of each factor and pairwise interaction for `metric`.

    Args:
        rows: one dict per run holding the factor levels and the metric (None/missing rows are skipped).
        factors: factor names in the order they enter the model.
        metric: the key of the metric in the rows.
        interactions: add every pairwise interaction after the main effects.

    Returns:
        {"metric", "n", "total_ss", "terms": [{"term", "factors", "ss", "share", "df"}], "residual_share",
         "dropped": single-level factors}; shares sum to 1 with the residual.
    """
    data = [r for r in rows if r.get(metric) is not None and np.isfinite(float(r[metric]))]
    y = np.array([float(r[metric]) for r in data])
    levels = {f: sorted({str(r[f]) for r in data}) for f in factors}
    kept = [f for f in factors if len(levels[f]) > 1]
    dropped = [f for f in factors if f not in kept]
    total = float(((y - y.mean()) ** 2).sum()) if len(y) else 0.0
    out: dict[str, Any] = {"metric": metric, "n": len(y), "total_ss": total, "terms": [], "residual_share": 1.0,
                           "dropped": dropped}
    if len(y) < 2 or total <= 1e-12 * max(1.0, float((y ** 2).sum())):
        out["residual_share"] = 0.0 if len(y) else 1.0
        return out
    dummy = {f: _dummies([str(r[f]) for r in data], levels[f]) for f in kept}
    terms: list[tuple[str, ...]] = [(f,) for f in kept]
    if interactions:
        terms += list(itertools.combinations(kept, 2))
    X = np.ones((len(y), 1))
    rss_prev = total
    for term in terms:
        if len(term) == 1:
            cols = dummy[term[0]]
        else:
            a, b = dummy[term[0]], dummy[term[1]]
            cols = (a[:, :, None] * b[:, None, :]).reshape(len(y), -1)  # (N, (ka-1)(kb-1))
        X = np.hstack([X, cols])
        rss = _rss(X, y)
        ss = max(rss_prev - rss, 0.0)
        out["terms"].append({"term": " x ".join(term), "factors": list(term), "ss": ss, "share": ss / total,
                             "df": int(np.prod([len(levels[f]) - 1 for f in term]))})
        rss_prev = min(rss_prev, rss)
    out["residual_share"] = max(rss_prev, 0.0) / total
    return out


def term_label(term: dict[str, Any]) -> str:
    return " x ".join(label(f) for f in term["factors"])


def explain(shares: dict[str, Any], metric_name: str) -> str:
    """One sentence: "SFM explains 71% of WER variance; adapter 12%, adapter x SFM 9%; residual 8%."."""
    terms = sorted(shares["terms"], key=lambda t: -t["share"])
    if not terms:
        return f"No factor varies among the runs with {metric_name}; nothing to attribute."
    first, rest = terms[0], [t for t in terms[1:] if t["share"] >= 0.005]
    text = f"{term_label(first)} explains {first['share']:.0%} of {metric_name} variance"
    if rest:
        text += "; " + ", ".join(f"{term_label(t)} {t['share']:.0%}" for t in rest)
    return text + f"; residual {shares['residual_share']:.0%} (n={shares['n']} runs)."


def ranking(shares: dict[str, Any], metric_name: str) -> str:
    """One sentence ranking the factors by their main-effect share."""
    mains = sorted((t for t in shares["terms"] if len(t["factors"]) == 1), key=lambda t: -t["share"])
    if not mains:
        return f"No factor to rank for {metric_name}."
    order = " > ".join(f"{label(t['factors'][0])} ({t['share']:.0%})" for t in mains)
    return f"Factors by main-effect share of {metric_name} variance: {order}."


def best_by_group(rows: Sequence[dict[str, Any]], group: Sequence[str], choose: str, metric: str
                  ) -> list[dict[str, Any]]:
    """For each combination of `group` levels, the `choose` level with the best mean `metric`.

    Returns:
        [{**group levels, choose: best level, "value": its mean, "runner_up": next level or None}]
    """
    cells: dict[tuple, dict[str, list[float]]] = {}
    for r in rows:
        if r.get(metric) is None or r.get(choose) is None:
            continue
        key = tuple(str(r.get(g)) for g in group)
        cells.setdefault(key, {}).setdefault(str(r[choose]), []).append(float(r[metric]))
    sign = 1.0 if lower_is_better(metric) else -1.0
    out = []
    for key in sorted(cells):
        (value, best), *others = sorted(((sign * float(np.mean(v)), lvl) for lvl, v in cells[key].items()))
        out.append({**dict(zip(group, key)), choose: best, "value": sign * value,
                    "runner_up": others[0][1] if others else None})
    return out
