"""The promotion gate on synthetic per-example scores: paired bootstrap, decision rules, serialisation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from driftloop.retrain.gate import (
    METRICS,
    OPTIONAL,
    Comparison,
    ExampleScore,
    GateDecision,
    decide,
    paired_bootstrap,
    point_value,
)
from driftloop.settings.retrain import GateSettings


def _scores(nll: np.ndarray, tokens: np.ndarray, rouge: np.ndarray | None = None,
            bleu: np.ndarray | None = None) -> list[ExampleScore]:  # fmt: skip
    out = []
    for i in range(len(nll)):
        r = None if rouge is None else float(rouge[i])
        b = None if bleu is None else float(bleu[i])
        em = None if rouge is None else float(rouge[i] > 0.9)
        out.append(ExampleScore(float(nll[i]), int(tokens[i]), r, b, em, None if rouge is None else f"out {i}"))
    return out


def _pair(n: int = 300, *, nll_factor: float = 1.0, rouge_shift: float = 0.0, noise: float = 0.05,
          seed: int = 0) -> tuple[list[ExampleScore], list[ExampleScore]]:  # fmt: skip
    """Champion and candidate on the same examples: strongly correlated per-example difficulty."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, 40, n)
    difficulty = rng.gamma(2.0, 1.0, n)  # per-token NLL of the champion, varies a lot across examples
    nll_a = difficulty * tokens
    nll_b = nll_a * nll_factor * np.exp(rng.normal(0, noise, n))
    rouge_a = np.clip(rng.beta(2, 3, n), 0, 1)
    rouge_b = np.clip(rouge_a + rouge_shift + rng.normal(0, noise, n), 0, 1)
    bleu_a = rouge_a * 60
    bleu_b = rouge_b * 60
    return _scores(nll_a, tokens, rouge_a, bleu_a), _scores(nll_b, tokens, rouge_b, bleu_b)


def test_clearly_better_candidate_passes() -> None:
    champ, cand = _pair(nll_factor=0.8)
    d = decide({"heldout": (champ, cand)}, GateSettings())
    assert d.promote, d.reasons
    c = d.comparison("perplexity")
    assert c is not None and c.ci_low > 0 and c.ci_low <= c.improvement <= c.ci_high
    assert c.candidate < c.champion
    # perplexity improvement is the relative reduction 1 - ppl_cand / ppl_champ
    assert c.improvement == pytest.approx(1 - point_value(cand, "perplexity") / point_value(champ, "perplexity"))
    assert any("perplexity on heldout" in r and "lies above" in r for r in d.reasons)
    assert any("rouge_l on heldout" in r and "within tolerance" in r for r in d.reasons)
    # report-only metrics are compared too
    # estimate, similarity, judge_win: only when configured (gate.estimate, a distill policy's runner, gate.judge)
    assert {c.metric for c in d.comparisons} == set(METRICS) - set(OPTIONAL)
    assert "PROMOTE" in d.summary() and "perplexity" in d.summary()


def test_identical_models_do_not_promote() -> None:
    champ, _ = _pair()
    d = decide({"heldout": (champ, list(champ))}, GateSettings())
    assert not d.promote
    c = d.comparison("perplexity")
    assert c is not None and c.ci_low <= 0 <= c.ci_high
    assert any("does not lie above the required 0.000" in r for r in d.reasons)


def test_exchangeable_models_interval_contains_zero() -> None:
    """Two equally good models (independent noise around the same scores): no promotion."""
    champ, cand = _pair(nll_factor=1.0, noise=0.2, seed=3)
    _imp, lo, hi = paired_bootstrap(champ, cand, "perplexity", n_bootstrap=2000, confidence=0.95, seed=0)
    assert lo < 0 < hi
    assert not decide({"heldout": (champ, cand)}, GateSettings()).promote


def test_better_primary_but_guard_regression_rejected() -> None:
    champ, cand = _pair(nll_factor=0.8, rouge_shift=-0.08)
    d = decide({"heldout": (champ, cand)}, GateSettings(guards={"rouge_l": 0.02}))
    assert not d.promote
    assert d.comparison("perplexity").ci_low > 0  # type: ignore[union-attr]
    assert len(d.reasons) == 1
    assert d.reasons[0].startswith("rouge_l on heldout regressed by 0.0")
    assert "> tolerance 0.020" in d.reasons[0]
    # within a looser tolerance the same candidate passes
    assert decide({"heldout": (champ, cand)}, GateSettings(guards={"rouge_l": 0.2})).promote


def test_golden_suite_regression_rejects() -> None:
    champ, cand = _pair(nll_factor=0.8)
    g_champ, g_cand = _pair(n=30, nll_factor=1.1, rouge_shift=-0.1, seed=5)
    d = decide({"heldout": (champ, cand), "golden": (g_champ, g_cand)}, GateSettings())
    assert not d.promote
    assert any(r.startswith("perplexity on golden got worse") for r in d.reasons)
    assert any(r.startswith("rouge_l on golden regressed by") for r in d.reasons)
    assert not any("heldout" in r for r in d.reasons)
    # a golden suite that is not worse passes with a reason
    ok = decide({"heldout": (champ, cand), "golden": _pair(n=30, nll_factor=0.9, seed=5)}, GateSettings())
    assert ok.promote and any("perplexity on golden: not worse" in r for r in ok.reasons)


def test_too_few_examples_rejects() -> None:
    champ, cand = _pair(n=10, nll_factor=0.5)
    d = decide({"heldout": (champ, cand)}, GateSettings(min_examples=20))
    assert not d.promote
    assert "heldout: only 10 examples, the gate needs at least 20" in d.reasons
    assert decide({"heldout": (champ, cand)}, GateSettings(min_examples=10)).promote


def test_missing_suite_and_uncomputed_metrics() -> None:
    champ, cand = _pair(nll_factor=0.8)
    assert not decide({"golden": (champ, cand)}, GateSettings()).promote
    # generation off: rouge/bleu/exact match are None -> guard noted as unchecked, perplexity still decides
    strip = [[ExampleScore(s.nll, s.n_tokens) for s in x] for x in (champ, cand)]
    d = decide({"heldout": (strip[0], strip[1])}, GateSettings())
    assert d.promote
    assert any("rouge_l on heldout: not computed" in r for r in d.reasons)
    assert any("bleu on heldout: not computed, skipped" in n for n in d.notes)
    assert [c.metric for c in d.comparisons] == ["perplexity"]
    # a primary that was not computed cannot pass
    d2 = decide({"heldout": (strip[0], strip[1])}, GateSettings(primary="rouge_l", guards={}))
    assert not d2.promote and "cannot be tested" in d2.reasons[0]


def test_min_improvement_threshold() -> None:
    champ, cand = _pair(n=500, nll_factor=0.9)  # about 10 % lower perplexity
    assert decide({"heldout": (champ, cand)}, GateSettings(min_improvement=0.05)).promote
    d = decide({"heldout": (champ, cand)}, GateSettings(min_improvement=0.2))
    assert not d.promote and "the required 0.200" in d.reasons[0]


def _unpaired_interval(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    n = len(a)
    ia, ib = rng.integers(0, n, (n_boot, n)), rng.integers(0, n, (n_boot, n))
    boot = b[ib].mean(axis=1) - a[ia].mean(axis=1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return float(lo), float(hi)


def test_paired_interval_narrower_than_unpaired_on_correlated_data() -> None:
    champ, cand = _pair(n=400, rouge_shift=0.02, noise=0.03)
    a = np.array([s.rouge_l for s in champ])
    b = np.array([s.rouge_l for s in cand])
    assert np.corrcoef(a, b)[0, 1] > 0.9
    imp, lo, hi = paired_bootstrap(champ, cand, "rouge_l", n_bootstrap=2000, confidence=0.95, seed=1)
    ulo, uhi = _unpaired_interval(a, b, 2000, seed=1)
    assert imp == pytest.approx(b.mean() - a.mean())
    assert (hi - lo) < 0.5 * (uhi - ulo)
    assert lo > 0 > ulo  # pairing detects the small improvement the unpaired interval cannot


def test_bootstrap_deterministic_given_seed() -> None:
    champ, cand = _pair(nll_factor=0.95, noise=0.2)
    for metric in ("perplexity", "rouge_l", "bleu", "exact_match"):
        r1 = paired_bootstrap(champ, cand, metric, n_bootstrap=500, confidence=0.9, seed=7)
        r2 = paired_bootstrap(champ, cand, metric, n_bootstrap=500, confidence=0.9, seed=7)
        assert r1 == r2
        assert r1[1] <= r1[0] <= r1[2] or metric == "exact_match"
    r7 = paired_bootstrap(champ, cand, "perplexity", n_bootstrap=500, confidence=0.9, seed=7)
    r8 = paired_bootstrap(champ, cand, "perplexity", n_bootstrap=500, confidence=0.9, seed=8)
    assert r8[0] == r7[0] and r8[1:] != r7[1:]  # same point estimate, another resampling
    d1 = decide({"heldout": (champ, cand)}, GateSettings(seed=3))
    d2 = decide({"heldout": (champ, cand)}, GateSettings(seed=3))
    assert d1 == d2


def test_paired_bootstrap_input_errors() -> None:
    champ, cand = _pair(n=30)
    with pytest.raises(ValueError, match="do not align"):
        paired_bootstrap(champ, cand[:-1], "perplexity", n_bootstrap=100, confidence=0.95, seed=0)
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap(champ, cand, "accuracy", n_bootstrap=100, confidence=0.95, seed=0)
    with pytest.raises(ValueError, match="not computed"):
        paired_bootstrap([ExampleScore(1.0, 1)] * 3, [ExampleScore(1.0, 1)] * 3, "bleu", n_bootstrap=100,
                         confidence=0.95, seed=0)  # fmt: skip
    with pytest.raises(ValueError, match="do not align"):
        decide({"heldout": (champ, cand[:-1])}, GateSettings())


def test_decision_round_trip() -> None:
    champ, cand = _pair(nll_factor=0.8)
    d = decide({"heldout": (champ, cand), "golden": _pair(n=25, seed=9)}, GateSettings(guards={"rouge_l": 0.01,
                                                                                          "bleu": 1.0}))  # fmt: skip
    blob = json.loads(json.dumps(d.to_dict()))
    back = GateDecision.from_dict(blob)
    assert back == d
    assert back.summary() == d.summary()
    assert blob["spec"]["guards"] == {"rouge_l": 0.01, "bleu": 1.0}
    c = d.comparisons[0]
    assert Comparison.from_dict(c.to_dict()) == c
    s = cand[0]
    assert ExampleScore.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert ExampleScore.from_dict({"nll": 2, "n_tokens": 3}) == ExampleScore(2.0, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"primary": "accuracy"}, "primary"),
        ({"guards": {"meteor": 0.1}}, "unknown guard"),
        ({"guards": {"rouge_l": -0.1}}, "tolerance"),
        ({"primary": "rouge_l"}, "remove it from guards"),
        ({"confidence": 1.0}, "confidence"),
        ({"confidence": 0.0}, "confidence"),
        ({"n_bootstrap": 50}, "n_bootstrap"),
        ({"min_examples": 0}, "min_examples"),
        ({"min_improvement": float("nan")}, "min_improvement"),
        ({"guards": {"rouge_l": float("inf")}}, "tolerance must be a finite number"),
    ],
)
def test_spec_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GateSettings(**kwargs)


def test_spec_guards_copied() -> None:
    guards = {"rouge_l": 0.05}
    spec = GateSettings(primary="bleu", guards=guards)
    guards["exact_match"] = 0.1
    assert dict(spec.guards) == {"rouge_l": 0.05}
    assert GateSettings().model_dump()["guards"] == {"rouge_l": 0.02}


def test_the_settings_name_exactly_the_metrics_the_gate_computes() -> None:
    """check-config validates primary and guards against GATE_METRICS; the gate computes METRICS: one list."""
    from typing import get_args

    from driftloop.settings.retrain import GATE_METRICS

    assert set(GATE_METRICS) == set(METRICS)
    assert set(get_args(GateSettings.model_fields["primary"].annotation)) == set(METRICS)
