"""The statistics are scipy's: Benjamini-Hochberg (monitor) and the paired bootstrap (retrain gate).

The hand-written versions they replaced are kept here as references, to show the switch kept the numbers:
same adjusted p-values, and the same interval for a seed (scipy draws the paired resamples from the same
seeded generator in the same order).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from driftloop.monitor.drift import benjamini_hochberg
from driftloop.retrain.gate import ExampleScore, paired_bootstrap


def _bh_by_hand(pvalues: list[float]) -> list[float]:
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, pvalues[i] * m / rank)
        adjusted[i] = min(running, 1.0)
    return adjusted


def test_benjamini_hochberg_is_scipys_and_agrees_with_the_textbook_procedure() -> None:
    rng = np.random.default_rng(5)
    for m in (1, 2, 7, 40):
        p = [float(x) for x in np.concatenate([rng.uniform(0, 1, m - m // 3), rng.uniform(0, 0.01, m // 3)])]
        assert np.allclose(benjamini_hochberg(p), _bh_by_hand(p))
        assert np.allclose(benjamini_hochberg(p), stats.false_discovery_control(p, method="bh"))
    assert benjamini_hochberg([]) == []
    assert benjamini_hochberg([1.0, 1.0]) == [1.0, 1.0]


def test_benjamini_hochberg_leaves_a_nan_p_value_out() -> None:
    adj = benjamini_hochberg([0.01, float("nan"), 0.03])
    assert math.isnan(adj[1]) and adj[0] == pytest.approx(0.02) and adj[2] == pytest.approx(0.03)


def _scores(n: int, seed: int) -> tuple[list[ExampleScore], list[ExampleScore]]:
    rng = np.random.default_rng(seed)
    champ = [ExampleScore(nll=float(rng.gamma(2, 20)), n_tokens=int(rng.integers(5, 40)), rouge_l=float(rng.random()))
             for _ in range(n)]  # fmt: skip
    cand = [ExampleScore(nll=c.nll * float(rng.uniform(0.8, 1.05)), n_tokens=c.n_tokens,
                         rouge_l=min(1.0, (c.rouge_l or 0) + float(rng.normal(0.03, 0.05)))) for c in champ]  # fmt: skip
    return champ, cand


def _bootstrap_by_hand(champ: list[ExampleScore], cand: list[ExampleScore], metric: str, n_bootstrap: int,
                       confidence: float, seed: int) -> tuple[float, float]:  # fmt: skip
    """The gate's former loop: resample example indices (one draw for both models), percentile interval."""
    rng, n = np.random.default_rng(seed), len(champ)
    idx = rng.integers(0, n, size=(n_bootstrap, n))
    if metric == "perplexity":
        nll = np.array([[s.nll for s in champ], [s.nll for s in cand]])
        tok = np.array([[s.n_tokens for s in champ], [s.n_tokens for s in cand]], dtype=np.float64)
        s_nll, s_tok = nll[:, idx].sum(axis=2), tok[:, idx].sum(axis=2)
        boot = 1.0 - np.exp(s_nll[1] / s_tok[1] - s_nll[0] / s_tok[0])
    else:
        diff = np.array([b.rouge_l for b in cand]) - np.array([a.rouge_l for a in champ])
        boot = diff[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.nanquantile(boot, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


@pytest.mark.parametrize("metric", ["perplexity", "rouge_l"])
def test_paired_bootstrap_is_scipys_and_keeps_the_former_interval_for_a_seed(metric: str) -> None:
    champ, cand = _scores(150, seed=3)
    for seed in (0, 1, 42):
        _point, lo, hi = paired_bootstrap(champ, cand, metric, n_bootstrap=2000, confidence=0.95, seed=seed)
        assert (lo, hi) == pytest.approx(_bootstrap_by_hand(champ, cand, metric, 2000, 0.95, seed), rel=1e-9)


def test_paired_bootstrap_of_identical_scores_and_of_one_example() -> None:
    champ, _ = _scores(20, seed=1)
    assert paired_bootstrap(champ, champ, "rouge_l", n_bootstrap=200, seed=0) == (0.0, 0.0, 0.0)
    one = champ[:1]
    better = [ExampleScore(nll=one[0].nll / 2, n_tokens=one[0].n_tokens, rouge_l=1.0)]
    point, lo, hi = paired_bootstrap(one, better, "perplexity", n_bootstrap=200, seed=0)
    assert point == lo == hi and point > 0
