"""PPI++ estimates: the classical case, coverage, width against the labels alone, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from driftloop.monitor.ppi import Estimate, classical_mean_ci, drop_test, ppi_mean_ci


def _window(
    rng: np.random.Generator, rate: float, agreement: float, size: int = 300, frac: float = 0.1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A window's labels, a judge of the given agreement, and a uniform labeled slice."""
    y = (rng.random(size) < rate).astype(float)
    f = np.where(rng.random(size) < agreement, y, 1.0 - y)
    labeled = rng.random(size) < frac
    return y, f, labeled


def test_lambda_zero_is_the_classical_interval() -> None:
    rng = np.random.default_rng(1)
    for rate in (0.0, 0.03, 0.4, 1.0):
        y, f, lab = _window(rng, rate, 0.8)
        y_cont = np.clip(y * 0.7 + rng.random(y.size) * 0.3, 0, 1)  # a non-binary score too
        for ys in (y, y_cont):
            c = classical_mean_ci(ys[lab])
            p = ppi_mean_ci(ys[lab], f[lab], f[~lab], lam=0.0)
            assert (p.mean, p.low, p.high) == (c.mean, c.low, c.high)
            assert p.method == c.method == "classical" and p.lam == 0.0


def test_no_positive_seen_still_gives_an_interval_above_zero() -> None:
    e = classical_mean_ci(np.zeros(30))
    assert e.low == 0.0 and e.mean == 0.0
    assert 0.03 < e.high < 0.2  # Agresti-Coull: a rate of a few percent is not excluded by 30 negatives
    p = ppi_mean_ci(np.zeros(30), np.zeros(30), np.zeros(270))
    assert p.high > 0.0


@pytest.mark.parametrize("agreement", [0.7, 0.95])
def test_coverage_by_simulation(agreement: float) -> None:
    rng = np.random.default_rng(7)
    rates = (0.03, 0.1, 0.3, 0.5)
    hits = hits_c = total = 0
    for i in range(2000):
        y, f, lab = _window(rng, rates[i % len(rates)], agreement)
        if not lab.any():
            continue
        truth = y.mean()
        e = ppi_mean_ci(y[lab], f[lab], f[~lab], alpha=0.1)
        c = classical_mean_ci(y[lab], alpha=0.1)
        hits += e.low <= truth <= e.high
        hits_c += c.low <= truth <= c.high
        total += 1
    assert hits / total >= 0.88, hits / total
    assert hits_c / total >= 0.88, hits_c / total


def test_ppi_is_never_wider_than_classical_and_a_good_judge_narrows_it() -> None:
    rng = np.random.default_rng(3)
    ratios = []
    for _ in range(400):
        y, f, lab = _window(rng, 0.5, 0.95)
        e = ppi_mean_ci(y[lab], f[lab], f[~lab])
        c = classical_mean_ci(y[lab])
        assert e.width <= c.width + 1e-12
        ratios.append(e.width / c.width)
        if e.lam > 0:
            assert e.method == "ppi++"
    assert float(np.mean(ratios)) < 0.8


def test_perfect_predictor_gives_a_much_narrower_interval() -> None:
    rng = np.random.default_rng(4)
    y = (rng.random(3000) < 0.4).astype(float)
    lab = np.zeros(y.size, dtype=bool)
    lab[:100] = True
    e = ppi_mean_ci(y[lab], y[lab], y[~lab])
    c = classical_mean_ci(y[lab])
    assert e.lam > 0.9
    assert e.width < 0.5 * c.width
    assert e.low <= y.mean() <= e.high


def test_drop_test_sees_a_drop_and_not_a_rise() -> None:
    ref = classical_mean_ci(np.r_[np.ones(300), np.zeros(300)])
    low = classical_mean_ci(np.r_[np.ones(3), np.zeros(27)])
    high = classical_mean_ci(np.r_[np.ones(20), np.zeros(10)])
    assert drop_test(low, ref) < 0.01
    assert drop_test(high, ref) > 0.5
    # an Estimate built without its standard error (e.g. read back from storage) still compares
    bare = Estimate(low.mean, low.low, low.high, low.n_labeled, 0, 0.0, "classical")
    assert drop_test(bare, ref) < 0.01


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (([1, 0, 1], [0.5, 0.5], [0.2]), "f_labeled"),
        (([], [], [0.2]), "y_labeled"),
        (([1, 2], [0.5, 0.5], [0.2]), "y_labeled"),
        (([1, 0], [0.5, 1.5], [0.2]), "f_labeled"),
        (([1, 0], [0.5, 0.5], [-0.1]), "f_unlabeled"),
        (([1, np.nan], [0.5, 0.5], [0.2]), "y_labeled"),
    ],
)
def test_bad_input_names_the_argument(args: tuple, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ppi_mean_ci(*args)


def test_bad_alpha_and_lambda() -> None:
    with pytest.raises(ValueError, match="alpha"):
        classical_mean_ci([1, 0], alpha=1.5)
    with pytest.raises(ValueError, match="lam"):
        ppi_mean_ci([1, 0], [1, 0], [0.5], lam=2.0)
    with pytest.raises(ValueError, match="y"):
        classical_mean_ci([])


@pytest.mark.parametrize("agreement", [0.7, 0.95])
def test_window_population_interval_covers_the_windows_rate_and_is_narrower(agreement: float) -> None:
    """With ``population`` (every record of the window scored) the interval is for the window's own rate:
    narrower (no error for the scores' mean, the finite-population factor), still covering it."""
    rng = np.random.default_rng(11)
    rates = (0.02, 0.1, 0.3, 0.5)
    hits = total = 0
    ratio = []
    for i in range(2000):
        y, f, lab = _window(rng, rates[i % len(rates)], agreement)
        if not lab.any():
            continue
        e = ppi_mean_ci(y[lab], f[lab], f[~lab], alpha=0.1, population=y.size)
        wide = ppi_mean_ci(y[lab], f[lab], f[~lab], alpha=0.1)
        c = classical_mean_ci(y[lab], alpha=0.1, population=y.size)
        hits += e.low <= y.mean() <= e.high
        total += 1
        assert e.width <= c.width + 1e-12  # power tuning: never wider than the labels alone, same target
        ratio.append(e.width / wide.width if wide.width else 1.0)
        assert e.se_model >= e.se  # comparing windows adds the window's own variation
    assert hits / total >= 0.88, hits / total
    assert float(np.mean(ratio)) < 0.99


def test_population_must_be_the_whole_window() -> None:
    with pytest.raises(ValueError, match="machine score for every one"):
        ppi_mean_ci([1, 0], [1, 0], [0.5, 0.2], population=10)
    with pytest.raises(ValueError, match="smaller than the number of labels"):
        classical_mean_ci([1, 0, 1], population=2)


def test_drop_test_compares_process_rates_not_window_rates() -> None:
    # the same labels as a window of 300 (finite) and as a sample of the process: the finite interval is
    # narrower, but the test between two windows uses the process error, so p-values barely move
    y_ref = np.r_[np.ones(60), np.zeros(30)]
    y_win = np.r_[np.ones(14), np.zeros(16)]
    ref, win = classical_mean_ci(y_ref, population=900), classical_mean_ci(y_win, population=300)
    ref_p, win_p = classical_mean_ci(y_ref), classical_mean_ci(y_win)
    assert win.width < win_p.width
    assert drop_test(win, ref) == pytest.approx(drop_test(win_p, ref_p), rel=0.2)
