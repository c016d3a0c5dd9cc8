"""Per-window estimates of the positive rate with an interval: few human labels, many machine scores.

A window's human labels come from the review queue's *uniform* slice only (``human_review`` scores whose
metadata says ``"slice": "uniform"``): the targeted slices (drifted windows, low confidence, negative
feedback) are chosen because they look bad, so averaging them would bias the rate. A machine source
(the learned estimator or a judge) scored many of the window's interactions; PPI++
(:func:`driftloop.monitor.ppi.ppi_mean_ci`) corrects its bias with the labelled pairs and gives an interval
never wider than the labels alone. Without machine scores the estimate is the classical one from the labels;
with fewer than ``min_labeled`` labels it is unknown (None -> NULL in ``window_metrics``), never 0.

Labels are binary (positive = value >= ``feedback.positive_threshold``, the one definition); machine scores
enter as their values in [0, 1] (an estimator's calibrated probability; PPI++'s power tuning rescales any
score). Only labelled interactions that the machine source also scored are pairs; this is unbiased as long
as the machine source chose what to score without looking at the labels (a judge's per-window sample does).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, or_, select

from driftloop.monitor.ppi import Estimate, classical_mean_ci, ppi_mean_ci
from driftloop.settings.estimator import EstimateSettings
from driftloop.store.models import interactions
from driftloop.store.scores import positive_label, scores

HUMAN_SOURCE = "human_review"
ESTIMATE = "quality.estimate"
ESTIMATE_LOW = "quality.estimate_low"
ESTIMATE_HIGH = "quality.estimate_high"
ESTIMATE_N_LABELED = "quality.estimate_n_labeled"
ESTIMATE_METRICS: tuple[str, ...] = (ESTIMATE, ESTIMATE_LOW, ESTIMATE_HIGH, ESTIMATE_N_LABELED)

_CHUNK = 5000  # interaction ids per query (a reference can hold many windows)


@dataclass
class WindowScores:
    """The scores of a set of interactions: uniform-slice human values and each machine source's values.

    The newest score wins where one interaction has several of one source (a re-review, a re-scored window).
    """

    labels: dict[str, float] = field(default_factory=dict)  # request_id -> human value
    machine: dict[str, dict[str, float]] = field(default_factory=dict)  # source -> request_id -> value


def _slice_of(meta: Any) -> str | None:
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            return None
    return str(meta.get("slice")) if isinstance(meta, dict) and meta.get("slice") is not None else None


def load_scores(conn: Connection, ids: Sequence[int], s: EstimateSettings) -> WindowScores:
    """The human labels of slice ``s.slice`` and the machine scores (estimator:/judge:) of interactions ``ids``."""
    out = WindowScores()
    sc, it = scores.c, interactions.c
    wanted = sorted(set(ids))
    for i in range(0, len(wanted), _CHUNK):
        q = (select(sc.request_id, sc.source, sc.value, sc.metadata)
             .join(interactions, it.request_id == sc.request_id)
             .where(it.id.in_(wanted[i : i + _CHUNK]), sc.name == s.score_name,
                    or_(sc.source == HUMAN_SOURCE, sc.source.like("estimator:%"), sc.source.like("judge:%")))
             .order_by(sc.ts, sc.id))  # fmt: skip
        for rid, source, value, meta in conn.execute(q):
            if source == HUMAN_SOURCE:
                if _slice_of(meta) == s.slice:
                    out.labels[rid] = float(value)
            else:
                out.machine.setdefault(source, {})[rid] = float(value)
    return out


def choose_source(machine: Mapping[str, Mapping[str, float]], wanted: str) -> str | None:
    """The machine source to use: ``wanted`` as in :class:`EstimateSettings`, None when there is none.

    ``estimator`` (and ``auto``, first) takes the estimator version that scored most of these interactions
    (ties: the greater version name); ``auto`` falls back to the judge that comes first by name.
    """
    if wanted == "none":
        return None
    if wanted not in ("auto", "estimator"):
        return wanted if machine.get(wanted) else None
    est = Counter({k: len(v) for k, v in machine.items() if k.startswith("estimator:") and v})
    if est:
        return max(est, key=lambda k: (est[k], k))
    if wanted == "auto":
        judges = sorted(k for k, v in machine.items() if k.startswith("judge:") and v)
        return judges[0] if judges else None
    return None


def estimate(ws: WindowScores, s: EstimateSettings, positive_threshold: float,
             population: int | None = None) -> Estimate | None:  # fmt: skip
    """The positive rate of these interactions with its ``1 - s.alpha`` interval, or None (too few labels).

    PPI++ when the chosen machine source scored at least ``min_labeled`` labelled interactions and at least
    one unlabelled one; otherwise the classical interval from all labels. ``population`` (the number of
    interactions): the interval is for their own rate, with the finite-population factor, when the labels
    are a sample of them and, for PPI++, the machine source scored every one of them; otherwise it is for
    the rate of the process that produced them (wider; a judge that scored a sample gives this).
    """
    if len(ws.labels) < s.min_labeled:
        return None
    y = {rid: positive_label(v, positive_threshold) for rid, v in ws.labels.items()}
    src = choose_source(ws.machine, s.machine_source)
    if src is not None:
        f = ws.machine[src]
        pairs = [rid for rid in sorted(y) if rid in f]
        unlabeled = [v for rid, v in sorted(f.items()) if rid not in y]
        if len(pairs) >= s.min_labeled and unlabeled:
            whole = population if population == len(pairs) + len(unlabeled) and len(pairs) == len(y) else None
            return ppi_mean_ci([y[r] for r in pairs], [f[r] for r in pairs], unlabeled, alpha=s.alpha,
                               population=whole)  # fmt: skip
    whole = population if population is not None and population >= len(y) else None
    return classical_mean_ci([y[r] for r in sorted(y)], alpha=s.alpha, population=whole)


def estimate_metrics(conn: Connection, ids: Sequence[int], s: EstimateSettings, positive_threshold: float,
                     prefix: str = "") -> dict[str, float | None]:  # fmt: skip
    """``quality.estimate*`` of interactions ``ids`` (names with ``prefix``, e.g. ``ref.``).

    The interval is intersected with [0, 1] (a rate; the coverage is unchanged). Too few labels: the
    estimate and its bounds are None, and ``quality.estimate_n_labeled`` says how many there were.
    """
    ws = load_scores(conn, ids, s)
    e = estimate(ws, s, positive_threshold, population=len(set(ids)))
    vals: dict[str, float | None] = {ESTIMATE: None, ESTIMATE_LOW: None, ESTIMATE_HIGH: None,
                                     ESTIMATE_N_LABELED: float(len(ws.labels))}  # fmt: skip
    if e is not None:
        vals.update({ESTIMATE: e.mean, ESTIMATE_LOW: max(0.0, e.low), ESTIMATE_HIGH: min(1.0, e.high),
                     ESTIMATE_N_LABELED: float(e.n_labeled)})  # fmt: skip
    return {prefix + k: v for k, v in vals.items()}
