"""Drift detection: Evidently 0.7 per-column tests, embedding drift, and a multiple-testing-aware verdict.

Verdict (documented in docs/monitoring.md): with ~15 features tested every window, per-feature
tests at p < 0.05 would flag a stable stream every other window. So:

1. p-value tests (KS, chi-square, Z, ...) are corrected together with Benjamini-Hochberg at
   ``fdr_alpha``; a feature drifts when its adjusted p-value is below ``fdr_alpha``;
2. distance-type methods (Wasserstein, PSI, Jensen-Shannon, ...), text drift (domain-classifier
   ROC AUC) and embedding drift have no p-value; each drifts when it crosses its threshold,
   thresholds chosen so that shuffles of one model's real traffic stay quiet;
3. features are grouped by the signal they measure (``FEATURE_GROUPS``: one length group per side,
   one content group per side holding its text and embedding tests, ...); a group drifts when any of
   its features drifts. The dataset drift score is the share of drifted *groups*, and the window is
   drifted when the score reaches ``drift_share``: correlated columns vote once, and one noisy signal
   cannot raise a dataset alarm on its own.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from driftloop.monitor.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, TEXT_FEATURES, feature_group
from driftloop.settings.monitor import DISTANCE_METHODS, P_VALUE_METHODS, MonitorSettings

log = logging.getLogger(__name__)


@dataclass
class FeatureDrift:
    """One feature's drift test in one window."""

    feature: str
    feature_type: str  # numerical | categorical | text | embedding
    method: str
    statistic: float | None
    threshold: float | None
    p_value: float | None = None
    p_adjusted: float | None = None
    drifted: bool = False

    @property
    def group(self) -> str:
        return feature_group(self.feature)


@dataclass
class DriftOutcome:
    """All tests of one window and the dataset-level verdict (over feature groups)."""

    features: list[FeatureDrift]
    score: float  # share of tested groups that drifted
    drifted: bool
    n_drifted: int  # drifted features (columns)
    snapshots: list[Any]
    groups: dict[str, bool] = field(default_factory=dict)  # tested group -> drifted
    threshold: float = 0.0  # the drift_share the verdict used

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def n_groups_drifted(self) -> int:
        return sum(self.groups.values())

    def by_feature(self) -> dict[str, FeatureDrift]:
        return {f.feature: f for f in self.features}


def benjamini_hochberg(pvalues: list[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (monotone, capped at 1), in input order.

    scipy.stats.false_discovery_control does the adjustment. A NaN p-value (a test that could not be computed)
    stays NaN and is not counted among the tests, so it neither drifts nor dilutes the others.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    known = ~np.isnan(p)
    if known.any():
        out[known] = stats.false_discovery_control(np.clip(p[known], 0.0, 1.0), method="bh")
    return [float(x) for x in out]


def _is_p_value(method: str) -> bool:
    return method in P_VALUE_METHODS or "p_value" in method


def _usable(cur: pd.Series, ref: pd.Series) -> bool:
    return cur.notna().sum() >= 5 and ref.notna().sum() >= 5


def _feature(col: str, ftype: str, method: str, stat: float | None, thr: float | None) -> FeatureDrift:
    """A column's result: p-value tests wait for Benjamini-Hochberg; text drift (ROC AUC) drifts above its
    threshold, distances at or above theirs."""
    if ftype == "text":
        return FeatureDrift(col, ftype, method, stat, thr, drifted=stat is not None and thr is not None and stat > thr)
    if _is_p_value(method):
        return FeatureDrift(col, ftype, method, stat, thr, p_value=stat)
    return FeatureDrift(col, ftype, method, stat, thr, drifted=stat is not None and thr is not None and stat >= thr)


def _preset(cols: list[str], text: list[str], s: MonitorSettings) -> Any:
    """The DataDriftPreset driftloop's settings describe (the Report and the direct tests share it)."""
    from evidently.presets import DataDriftPreset

    m = s.methods
    return DataDriftPreset(
        columns=cols,
        num_method=m.num_method,
        cat_method=m.cat_method,
        text_method=m.text_method if text else None,
        text_threshold=m.text_threshold if text else None,
        per_column_method={c: v for c, v in m.per_column.items() if c in cols} or None,
        per_column_threshold={c: v for c, v in m.thresholds.items() if c in cols} or None,
        include_tests=False,
    )


def column_tests(cur: pd.DataFrame, ref: pd.DataFrame, num: list[str], cat: list[str], text: list[str],
                 s: MonitorSettings) -> list[FeatureDrift]:  # fmt: skip
    """Evidently's per-column drift tests, called directly: the stattest and threshold DataDriftPreset picks
    for each column (settings, else Evidently's defaults by type and size), on the column without missing or
    infinite values, as the Report does it, without the Report's histograms, correlations and text
    examples, which the verdict does not use. ``_run_report`` gives the same statistics (tested)."""
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType
    from evidently.legacy.options.data_drift import DataDriftOptions

    p = _preset(num + cat + text, text, s)
    options = DataDriftOptions(
        all_features_stattest=p.method, cat_features_stattest=p.cat_method, num_features_stattest=p.num_method,
        text_features_stattest=p.text_method, per_feature_stattest=p.per_column_method,
        all_features_threshold=p.threshold, cat_features_threshold=p.cat_threshold,
        num_features_threshold=p.num_threshold, text_features_threshold=p.text_threshold,
        per_feature_threshold=p.per_column_threshold,
    )  # fmt: skip
    out: list[FeatureDrift] = []
    for col in num + cat + text:
        ftype = "numerical" if col in num else "categorical" if col in cat else "text"
        ctype = {"numerical": ColumnType.Numerical, "categorical": ColumnType.Categorical}.get(ftype, ColumnType.Text)
        configured = options.get_feature_stattest_func(col, ctype.value)
        threshold = options.get_threshold(col, ctype.value)
        r, c = (x[col].replace([-np.inf, np.inf], np.nan).dropna() for x in (ref, cur))
        if r.empty or c.empty:
            raise ValueError(f"column {col!r} has no values in the {'reference' if r.empty else 'current'} window")
        test = get_stattest(r, c, ctype, configured)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = test(r, c, ctype, threshold)
        method = configured if isinstance(configured, str) else test.display_name
        stat = None if res.drift_score is None or math.isnan(res.drift_score) else float(res.drift_score)
        out.append(_feature(col, ftype, method, stat, threshold if threshold is not None else res.actual_threshold))
    return out


def _run_report(cur: pd.DataFrame, ref: pd.DataFrame, num: list[str], cat: list[str], text: list[str],
                s: MonitorSettings) -> tuple[list[FeatureDrift], Any]:  # fmt: skip
    """Evidently's Report on the same columns and settings: the HTML report, and the reference for
    :func:`column_tests`."""
    from evidently import DataDefinition, Dataset, Report

    cols = num + cat + text
    dd = DataDefinition(numerical_columns=num or None, categorical_columns=cat or None, text_columns=text or None)
    report = Report([_preset(cols, text, s)], include_tests=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snap = report.run(
            Dataset.from_pandas(cur[cols], data_definition=dd), Dataset.from_pandas(ref[cols], data_definition=dd)
        )
    out: list[FeatureDrift] = []
    for metric in snap.dict()["metrics"]:
        cfg = metric.get("config") or {}
        col = cfg.get("column")
        if col is None or col not in cols:
            continue
        val = metric.get("value")
        stat = None if val is None or (isinstance(val, float) and math.isnan(val)) else float(val)
        ftype = "numerical" if col in num else "categorical" if col in cat else "text"
        out.append(_feature(col, ftype, str(cfg.get("method")), stat, cfg.get("threshold")))
    return out, snap


def contingency_p_value(cur: pd.Series, ref: pd.Series, min_count: int = 5) -> float:
    """Two-sample chi-square test of homogeneity on category counts; categories seen fewer than
    ``min_count`` times in both samples together are pooled into one.

    Unlike a goodness-of-fit test against the reference shares (Evidently's chi-square), a category
    that one small sample happens to lack does not give an infinite statistic and a p-value of 0:
    with a light language detector the rare, misdetected languages would otherwise flag most windows.
    """
    from scipy.stats import chi2_contingency

    counts = pd.concat([cur.value_counts().rename("cur"), ref.value_counts().rename("ref")], axis=1).fillna(0)
    rare = counts.sum(axis=1) < min_count
    table = counts[~rare]
    if rare.any():
        table = pd.concat([table, counts[rare].sum().to_frame("<other>").T])
    table = table[table.sum(axis=1) > 0]
    if len(table) < 2 or (table.sum(axis=0) == 0).any():
        return 1.0
    return float(chi2_contingency(table.to_numpy().T)[1])


def _categorical_on_sample(col: str, cur: pd.Series, ref: pd.Series, s: MonitorSettings) -> FeatureDrift:
    """Evidently's stattest for one categorical column, called directly on its non-missing values."""
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    m = s.methods
    configured = m.per_column.get(col) or m.cat_method
    if configured is None:
        p = contingency_p_value(cur, ref)
        return FeatureDrift(col, "categorical", "chi-square contingency p_value", p, m.thresholds.get(col, 0.05),
                            p_value=p)  # fmt: skip
    test = get_stattest(ref, cur, ColumnType.Categorical, configured)
    res = test(ref, cur, ColumnType.Categorical, m.thresholds.get(col))
    method = f"{test.display_name}"
    stat, thr = float(res.drift_score), float(res.actual_threshold)
    if _is_p_value(method):
        return FeatureDrift(col, "categorical", method, stat, thr, p_value=stat)
    return FeatureDrift(col, "categorical", method, stat, thr, drifted=stat >= thr)


def tabular_and_text_drift(cur: pd.DataFrame, ref: pd.DataFrame, s: MonitorSettings, seed: int = 0,
                           report: bool = False) -> tuple[list[FeatureDrift], list[Any]]:  # fmt: skip
    """Evidently drift tests on the numeric/categorical features and (sampled) text columns.

    The tests are Evidently's stattests called directly (:func:`column_tests`); with ``report`` the Report
    of the tabular columns is run too (its snapshot is the HTML report), on the same data.
    """
    num = [c for c in NUMERIC_FEATURES if c in cur and _usable(cur[c], ref[c])]
    cat = [c for c in CATEGORICAL_FEATURES if c in cur]
    # A column known only on a sample (language) must be tested on that sample alone: inside the
    # Report its missing values would count as a category whose share differs between the sides.
    # Where Evidently would run its goodness-of-fit chi-square (>2 categories, reference <= 1000
    # rows, no method configured), use the two-sample test instead: a rare category absent from a
    # small reference (finish_reason=length, say) would otherwise read as certain drift.
    m = s.methods

    def small_multi(c: str) -> bool:
        return (m.per_column.get(c) is None and m.cat_method is None and len(ref) <= 1000
                and pd.concat([cur[c], ref[c]]).nunique() > 2)  # fmt: skip

    sampled = [c for c in cat if cur[c].isna().any() or ref[c].isna().any() or small_multi(c)]
    cat = [c for c in cat if c not in sampled]
    results, snaps = [], []
    results.extend(column_tests(cur, ref, num, cat, [], s))
    if report:
        snaps.append(_run_report(cur, ref, num, cat, [], s)[1])
    for c in sampled:
        if _usable(cur[c], ref[c]):
            results.append(_categorical_on_sample(c, cur[c].dropna().astype(str), ref[c].dropna().astype(str), s))
    if s.text_drift:
        n = s.text_sample
        cs = cur.sample(min(n, len(cur)), random_state=seed) if len(cur) > n else cur
        rs = ref.sample(min(n, len(ref)), random_state=seed) if len(ref) > n else ref
        for col in TEXT_FEATURES:
            try:
                results.extend(column_tests(cs, rs, [], [], [col], s))
            except ValueError as e:  # e.g. empty vocabulary: a text column with no words
                log.warning("text drift on %s skipped: %s", col, e)
    return results, snaps


def embedding_drift(name: str, cur: np.ndarray, ref: np.ndarray, method: str) -> FeatureDrift:
    """Evidently's embedding drift method called directly on two embedding matrices (no t-SNE)."""
    from evidently.legacy.metrics.data_drift import embedding_drift_methods as edm

    fn = {
        "model": lambda: edm.model(bootstrap=True),
        "distance": lambda: edm.distance(dist="cosine", bootstrap=True),
        "ratio": lambda: edm.ratio(),
        "mmd": lambda: edm.mmd(bootstrap=True),
    }[method]()
    cols = [f"e{i}" for i in range(cur.shape[1])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score, drifted, _ = fn(pd.DataFrame(cur, columns=cols), pd.DataFrame(ref, columns=cols))
    # bootstrapped methods decide against a resampled null distribution, not a fixed threshold
    thr = None if getattr(fn, "bootstrap", False) else getattr(fn, "threshold", None)
    return FeatureDrift(name, "embedding", f"embedding_{method}", float(score), thr, drifted=bool(drifted))


def verdict(features: list[FeatureDrift], s: MonitorSettings, snapshots: list[Any] | None = None) -> DriftOutcome:
    """Apply Benjamini-Hochberg to the p-value tests, group the features, and score the share of drifted groups.

    BH runs over every p-value test of the window (valid under the positive dependence that correlated
    columns have); a group drifts when any of its tested features drifts.
    """
    pv = [f for f in features if f.p_value is not None]
    for f, adj in zip(pv, benjamini_hochberg([f.p_value for f in pv if f.p_value is not None]), strict=True):
        f.p_adjusted = adj
        f.drifted = adj < s.fdr_alpha
    tested = [f for f in features if f.statistic is not None]
    groups: dict[str, bool] = {}
    for f in tested:
        groups[f.group] = groups.get(f.group, False) or f.drifted
    n_groups_drifted = sum(groups.values())
    score = n_groups_drifted / len(groups) if groups else 0.0
    return DriftOutcome(features, score, score >= s.drift_share and n_groups_drifted > 0,
                        sum(f.drifted for f in tested), snapshots or [], groups, s.drift_share)  # fmt: skip


__all__ = [
    "DISTANCE_METHODS",
    "DriftOutcome",
    "FeatureDrift",
    "benjamini_hochberg",
    "column_tests",
    "embedding_drift",
    "tabular_and_text_drift",
    "verdict",
]
