"""Prediction-powered estimates of a window's positive rate, with honest intervals.

PPI++ for a mean (Angelopoulos, Duchi, Zrnic 2023, "PPI++: Efficient Prediction-Powered Inference"):
a few human labels ``y`` (a *uniform* sample of the window) with their machine scores ``f_labeled``,
plus machine scores ``f_unlabeled`` of the window's other records, give

    estimate = lam * mean(f_unlabeled) + mean(y - lam * f_labeled)
    variance = lam^2 Var(f_unlabeled) / N + Var(y - lam * f_labeled) / n

which is unbiased for every ``lam`` (the rectifier ``y - lam f`` removes the scorer's bias) and, at
``lam = 0``, is the classical mean of the labels. ``lam`` is power-tuned: chosen in [0, 1] to
minimise the variance, so the interval is never wider than the classical one by construction (``lam
= 0`` is one of the candidates). The paper's closed form ``Cov(y, f) / ((1 + n/N) Var(f))`` is the
minimiser of the plain variance; here the same quadratic is minimised exactly on the adjusted sample
below, which reduces to that closed form as the labels grow.

Small samples. A window of 300 with a 10 % slice has ~30 labels; with a rate near 0.03 no positive
is seen in ~40 % of windows and a plain CLT interval collapses to [0, 0], ruining coverage. The
classical interval is therefore Agresti-Coull: ``z^2/2`` pseudo-successes and ``z^2/2`` pseudo-failures
are added before the normal interval is taken (for binary ``y`` exactly Agresti & Coull 1998; for
``y`` in [0, 1] the pseudo-observations are the values 1 and 0). PPI++ gets the *same* pseudo-count
treatment on its rectifier, in the Agresti-Caffo way: ``z^2/4`` pseudo-observations go into each cell
of the label x score table, (y, f) = (1, 1), (0, 0), (1, 0), (0, 1), so the rectifier sees half a
pseudo-disagreement in each direction. With ``lam = 0`` that is the classical interval, exactly (z^2/2
ones and z^2/2 zeros); a rectifier with no disagreement among 30 labels still gets a nonzero variance.
Measured by simulation (30 labels of 300, rates 0.03-0.5, judges of 70-95 % agreement): coverage of
the 90 % interval 0.90-0.99; the other obvious choice (pseudo labels scored at the mean score) fell
to 0.86 at rate 0.1 with a 95 % judge. The reported ``mean``
is the unadjusted (unbiased) point estimate; the interval is centred on the adjusted one (shrunk
towards 1/2 by ``z^2`` pseudo-observations, as Agresti-Coull is) and always contains the point estimate.

Why not ``ppi-python``: its wheel installs a top-level ``tests`` package (shadowing this project's)
and pulls numba; the mean estimator is these few lines of numpy/scipy, and the small-sample adjustment
above is not in it anyway.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ArrayLike = Sequence[float] | np.ndarray


@dataclass(frozen=True)
class Estimate:
    """A positive-rate estimate and its ``1 - alpha`` interval (all three clipped to [0, 1]).

    ``se`` (the standard error on the adjusted sample) and ``alpha`` are kept so that two estimates can
    be compared (``drop_test``) without re-deriving the error from a clipped interval.
    """

    mean: float
    low: float
    high: float
    n_labeled: int
    n_unlabeled: int
    lam: float
    method: str
    se: float = math.nan
    alpha: float = 0.1
    se_model: float = math.nan  # the error against the process's rate (== se unless ``population`` is set)
    population: int | None = None  # the window's size when the interval is for the window's own rate

    @property
    def width(self) -> float:
        return self.high - self.low


def _array(name: str, values: ArrayLike, *, allow_empty: bool = False) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    if a.size == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: an estimate needs at least one labeled record")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if a.size and (a.min() < 0.0 or a.max() > 1.0):
        raise ValueError(f"{name} has values outside [0, 1] (min {a.min():g}, max {a.max():g})")
    return a


def _alpha(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    return float(stats.norm.ppf(1.0 - alpha / 2.0))


def _adjusted(y: np.ndarray, f_l: np.ndarray, f_u: np.ndarray, lam: float, z: float,
              population: int | None = None) -> tuple[float, float, float, float]:  # fmt: skip
    """(point estimate, adjusted centre, standard error, model standard error) of PPI++ at ``lam``.

    ``population`` None: the paper's estimator of the rate of the process that produced the records
    (labelled and unlabelled records are two samples of it). ``population`` T = n + N: the rate of exactly
    these T records (a window), estimated by the difference (GREG) estimator ``lam * mean(f over all T) +
    mean(y - lam f over the labels)``; the labels are a uniform sample *of the window*, so the variance
    carries the finite-population factor ``1 - n/T`` and no term for the scores' mean (it is known, not
    sampled). The model standard error adds the window's own variation around the process's rate
    (``Var(y) / T``), which is what comparing two windows (``drop_test``) needs.
    """
    n, big_n = y.size, f_u.size
    w = z * z / 2.0
    r = y - lam * f_l
    pseudo = np.array([1.0 - lam, 0.0, 1.0, -lam])  # (y, f) = (1, 1), (0, 0), (1, 0), (0, 1)
    cw = w / 2  # pseudo-observations per cell of the label x score table
    n_adj = n + 2.0 * w
    r_mean = (float(r.sum()) + cw * float(pseudo.sum())) / n_adj
    r_var = max((float((r * r).sum()) + cw * float((pseudo * pseudo).sum())) / n_adj - r_mean * r_mean, 0.0)
    if population is None:
        m = float(f_u.mean()) if big_n else 0.0
        var = r_var / n_adj
        if big_n and lam:
            var += lam * lam * float(f_u.var(ddof=1) if big_n > 1 else 0.0) / big_n
        se = math.sqrt(var)
        return lam * m + float(r.mean()), lam * m + r_mean, se, se
    m = (float(f_l.sum()) + float(f_u.sum())) / population
    var = max(1.0 - n / population, 0.0) * r_var / n_adj
    p_adj = (float(y.sum()) + w) / n_adj  # Agresti-Coull centre of the labels (z^2/2 ones, z^2/2 zeros)
    y_var = max((float((y * y).sum()) + w) / n_adj - p_adj * p_adj, 0.0)
    return lam * m + float(r.mean()), lam * m + r_mean, math.sqrt(var), math.sqrt(var + y_var / population)


def _estimate(y: np.ndarray, f_l: np.ndarray, f_u: np.ndarray, lam: float, alpha: float,
              population: int | None = None) -> Estimate:  # fmt: skip
    z = _alpha(alpha)
    point, centre, se, se_model = _adjusted(y, f_l, f_u, lam, z, population)
    low, high = centre - z * se, centre + z * se
    clip = lambda v: min(max(v, 0.0), 1.0)  # noqa: E731
    low, high = clip(min(low, point)), clip(max(high, point))
    return Estimate(
        mean=clip(point), low=low, high=high, n_labeled=int(y.size), n_unlabeled=int(f_u.size), lam=float(lam),
        method="ppi++" if lam > 0 else "classical", se=se, alpha=alpha, se_model=se_model,
        population=population,
    )  # fmt: skip


def _population(population: int | None, n: int, n_unlabeled: int | None = None) -> int | None:
    if population is None:
        return None
    if n_unlabeled is not None and population != n + n_unlabeled:
        raise ValueError(f"population is {population} but {n} labelled + {n_unlabeled} unlabelled records were "
                         "given: the window's estimate needs a machine score for every one of its records")  # fmt: skip
    if population < n:
        raise ValueError(f"population ({population}) is smaller than the number of labels ({n})")
    return int(population)


def classical_mean_ci(y: ArrayLike, alpha: float = 0.1, population: int | None = None) -> Estimate:
    """The labels' mean with an Agresti-Coull ``1 - alpha`` interval (see the module docstring).

    ``population``: the labels are a uniform sample of a window of that many records, and the interval
    is for the window's rate (finite-population factor ``1 - n/T``); None: for the process's rate.
    """
    ya = _array("y", y)
    empty = np.empty(0)
    return _estimate(ya, np.zeros_like(ya), empty, 0.0, alpha, _population(population, ya.size))


def tuned_lambda(y: np.ndarray, f_l: np.ndarray, f_u: np.ndarray, alpha: float = 0.1,
                 population: int | None = None) -> float:  # fmt: skip
    """The ``lam`` in [0, 1] minimising the adjusted standard error.

    The variance is a quadratic in ``lam`` (every term is linear in it before squaring), so three
    evaluations give it exactly; its clipped vertex is the minimiser. If rounding made the vertex no
    better than ``lam = 0``, 0 is returned: the interval is never wider than the classical one.
    """
    if f_u.size < 2:
        return 0.0
    z = _alpha(alpha)
    v0, vh, v1 = (_adjusted(y, f_l, f_u, lam, z, population)[2] ** 2 for lam in (0.0, 0.5, 1.0))
    a = 2.0 * (v1 - 2.0 * vh + v0)  # v(lam) = a lam^2 + b lam + v0
    b = v1 - v0 - a
    lam = min(max(-b / (2.0 * a), 0.0), 1.0) if a > 0 else 0.0  # a = 0: the scores carry no variance
    return lam if _adjusted(y, f_l, f_u, lam, z, population)[2] < math.sqrt(v0) else 0.0


def ppi_mean_ci(
    y_labeled: ArrayLike, f_labeled: ArrayLike, f_unlabeled: ArrayLike, alpha: float = 0.1, lam: float | None = None,
    population: int | None = None,
) -> Estimate:  # fmt: skip
    """PPI++ estimate of the mean of ``y`` with a ``1 - alpha`` interval.

    ``y_labeled``: human labels of a uniform sample of the window; ``f_labeled``: machine scores of the
    same records; ``f_unlabeled``: machine scores of the window's records without a human label (may
    be empty: then the result is the classical interval). ``lam=None`` tunes it (see ``tuned_lambda``).
    ``population``: the window's size, when these are *all* of its records (``len(y) + len(f_unlabeled)``):
    the interval is then for the window's own rate (see ``_adjusted``); None: for the process's rate.
    """
    y = _array("y_labeled", y_labeled)
    f_l = _array("f_labeled", f_labeled, allow_empty=True)
    f_u = _array("f_unlabeled", f_unlabeled, allow_empty=True)
    if f_l.size != y.size:
        raise ValueError(f"f_labeled has {f_l.size} values but y_labeled has {y.size}: they must pair up")
    if lam is not None and not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam!r}")
    pop = _population(population, y.size, f_u.size)
    if f_u.size == 0:
        return _estimate(y, f_l, f_u, 0.0, alpha, pop)
    if lam is not None:
        return _estimate(y, f_l, f_u, float(lam), alpha, pop)
    tuned = _estimate(y, f_l, f_u, tuned_lambda(y, f_l, f_u, alpha, pop), alpha, pop)
    # Clipping to [0, 1] can make a smaller standard error a wider interval: compare the intervals.
    classical = _estimate(y, f_l, f_u, 0.0, alpha, pop)
    return tuned if tuned.width <= classical.width else classical


def drop_test(window: Estimate, reference: Estimate) -> float:
    """One-sided p-value that ``window``'s rate is below ``reference``'s.

    Normal approximation on the difference of the two point estimates with their (adjusted) standard
    errors; the errors are never zero thanks to the pseudo-counts, so a window with no positive seen
    is evidence, not a division by zero.
    """
    se = math.hypot(_se_model(window), _se_model(reference))
    if se <= 0:
        return 0.0 if window.mean < reference.mean else 1.0
    return float(stats.norm.sf((reference.mean - window.mean) / se))


def _se_model(e: Estimate) -> float:
    """An estimate's standard error against the process's rate; from the interval when it has none."""
    if math.isfinite(e.se_model):
        return e.se_model
    if math.isfinite(e.se):
        return e.se
    return e.width / (2.0 * float(stats.norm.ppf(1.0 - e.alpha / 2.0)))
