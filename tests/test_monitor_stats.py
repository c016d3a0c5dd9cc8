"""Statistical pieces of the verdict and incremental window reads (no Evidently Report, fast)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select

from driftloop.monitor.check import DriftCheckJob
from driftloop.monitor.drift import contingency_p_value
from driftloop.monitor.features import stable_sample
from driftloop.monitor.tables import monitor_windows
from driftloop.monitor.windows import due_windows, reference_for
from driftloop.settings import load_settings
from driftloop.store.db import create_engine_from_url
from tests.monitor_helpers import T0, insert_rows, interaction


def _langs(rng: np.random.Generator, n: int, p_en: float = 0.95) -> pd.Series:
    rest = (1 - p_en) / 4
    return pd.Series(rng.choice(["en", "de", "fr", "so", "it"], n, p=[p_en, rest, rest, rest, rest]))


def test_contingency_test_is_calibrated_with_rare_categories_and_detects_a_shift() -> None:
    from evidently.legacy.calculations.stattests import chi_stat_test
    from evidently.legacy.core import ColumnType

    rng = np.random.default_rng(3)
    ours, gof = [], []
    for _ in range(200):
        cur, ref = _langs(rng, 150), _langs(rng, 300)
        ours.append(contingency_p_value(cur, ref))
        gof.append(float(chi_stat_test(ref, cur, ColumnType.Categorical, 0.05).drift_score))
    ours_fp = float(np.mean(np.array(ours) < 0.01))
    gof_fp = float(np.mean(np.array(gof) < 0.01))
    # same distribution: the two-sample test stays near its level; goodness-of-fit against the
    # reference shares does not (a rare language missing from the reference gives p = 0)
    assert ours_fp <= 0.03
    assert gof_fp > ours_fp
    shifted = pd.Series(["en"] * 100 + ["es"] * 50)
    assert contingency_p_value(shifted, _langs(rng, 300)) < 1e-6


def test_contingency_degenerate_inputs() -> None:
    assert contingency_p_value(pd.Series(["en"] * 20), pd.Series(["en"] * 30)) == 1.0
    assert contingency_p_value(pd.Series([], dtype=object), pd.Series(["en", "fr"] * 10)) == 1.0


def test_stable_sample_of_a_window_covers_its_share_of_the_union() -> None:
    ids = np.arange(1, 2001)
    k = 100
    first = set(ids[stable_sample(ids[:1000], k)])
    union = ids[stable_sample(ids, k)]
    from_first = {int(i) for i in union if i <= 1000}
    # every record of the first window chosen in the union sample was chosen in the window's own
    # sample, so its language and embedding are already cached
    assert from_first and from_first <= first
    assert len(union) == k and list(union) == sorted(union)
    assert list(stable_sample(ids[:50], k)) == list(range(50))


def test_segmented_reference_streams_only_its_segment(pg_url: str, tmp_path: Path) -> None:
    eng = create_engine_from_url(pg_url)
    s = load_settings(None, database={"url": pg_url}, monitor={
        "window": {"kind": "count", "size": 20}, "reference": {"kind": "previous", "windows": 2},
        "segment_keys": ["r"], "min_window_size": 5, "reports": False}).monitor  # fmt: skip
    insert_rows(eng, [interaction(i, meta={"r": "a" if i % 3 else "b"}) for i in range(300)])
    with eng.connect() as c:
        wins = [w for w in due_windows(c, s, "m") if w.segment == "r=b"]
        ref = reference_for(c, s, wins[3])
        ids_b = {w_id for w in wins[1:3] for w_id in w.ids}
    assert ref.n == 40 and set(ref.ids) == ids_b
    eng.dispose()


def test_time_windows_resume_after_partial_runs(pg_url: str, tmp_path: Path) -> None:
    eng = create_engine_from_url(pg_url)
    s = load_settings(None, database={"url": pg_url}, monitor={
        "window": {"kind": "time", "minutes": 5}, "segment_keys": ["r"], "min_window_size": 10, "reports": False,
        "embeddings": {"enabled": False}, "text_drift": False, "max_windows_per_run": 3})  # fmt: skip
    insert_rows(eng, [interaction(i, ts=T0 + timedelta(seconds=6 * i), meta={"r": "a" if i % 2 else "b"})
                      for i in range(250)])  # fmt: skip  # 25 min: 5 windows x 2 segments
    now = T0 + timedelta(minutes=40)
    seen = []
    for _ in range(6):
        seen += [(r.window.segment, r.window.index, len(r.window.ids)) for r in DriftCheckJob(s, eng).run_once(now)]
    assert len(seen) == len(set(seen)) == 10
    assert all(n == 25 for _, _, n in seen)
    with eng.connect() as c:
        assert c.execute(select(func.count()).select_from(monitor_windows)).scalar_one() == 10
    eng.dispose()


def test_rare_finish_reasons_do_not_read_as_drift_in_small_windows() -> None:
    from driftloop.monitor.drift import tabular_and_text_drift
    from driftloop.monitor.features import compute_features
    from driftloop.settings.monitor import MonitorSettings

    def frame(n: int, seed: int, p: list[float]) -> pd.DataFrame:
        r = np.random.default_rng(seed)
        return pd.DataFrame({"id": np.arange(n) + seed * 10_000, "prompt": ["how are you today"] * n,
                             "response": ["fine, thanks"] * n, "latency_ms": r.normal(500, 50, n), "tokens_in": 4,
                             "tokens_out": 2, "finish_reason": r.choice(["stop", "length", "tool_calls",
                                                                          "content_filter"], n, p=p),
                             "feedback_score": np.nan})  # fmt: skip

    s = MonitorSettings(text_drift=False)
    stable = [0.96, 0.02, 0.01, 0.01]
    ps = []
    for k in range(20):
        cur = compute_features(frame(150, 2 * k, stable), language_sample=20)
        ref = compute_features(frame(300, 2 * k + 1, stable), language_sample=20)
        fr = next(f for f in tabular_and_text_drift(cur, ref, s)[0] if f.feature == "finish_reason")
        assert fr.method == "chi-square contingency p_value"
        ps.append(fr.p_value)
    assert sum(p < 0.01 for p in ps) <= 2  # Evidently's goodness-of-fit chi-square: 6 of these 20
    cur = compute_features(frame(150, 99, [0.6, 0.38, 0.01, 0.01]), language_sample=20)
    ref = compute_features(frame(300, 98, stable), language_sample=20)
    fr = next(f for f in tabular_and_text_drift(cur, ref, s)[0] if f.feature == "finish_reason")
    assert fr.p_value is not None and fr.p_value < 1e-6


@pytest.mark.parametrize("n_ref", [300, 1500])  # Evidently's defaults differ below and above 1000 reference rows
def test_direct_stattests_match_evidently_report(n_ref: int) -> None:
    """The verdict calls Evidently's stattests directly; the Report (run only for the HTML report) must find
    the same method, statistic (p-value or distance), threshold and verdict for every column."""
    from driftloop.monitor.drift import _run_report, column_tests
    from driftloop.settings.monitor import MonitorSettings

    rng = np.random.default_rng(5)

    def frame(n: int, shift: float) -> pd.DataFrame:
        words = np.array(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"])
        return pd.DataFrame({
            "prompt_chars": rng.normal(100 + shift, 20, n), "latency_ms": rng.lognormal(6 + shift / 100, 0.3, n),
            "tokens_out": np.where(rng.random(n) < 0.1, np.nan, rng.poisson(50, n)).astype(float),
            "is_refusal": rng.choice(["yes", "no"], n, p=[0.1, 0.9]),
            "finish_reason": rng.choice(["stop", "length", "content_filter"], n, p=[0.8, 0.15, 0.05]),
            "prompt": [" ".join(rng.choice(words[: 6 + int(shift > 0) * 2], 8)) for _ in range(n)],
        })  # fmt: skip

    cur, ref = frame(150 if n_ref < 1000 else 1200, 10.0), frame(n_ref, 0.0)
    num, cat = ["prompt_chars", "latency_ms", "tokens_out"], ["is_refusal", "finish_reason"]
    configured = MonitorSettings(methods={"per_column": {"latency_ms": "psi"}, "thresholds": {"prompt_chars": 0.01}})
    for s in (MonitorSettings(), configured):
        for cols in ((num, cat, []), ([], [], ["prompt"])):
            direct = column_tests(cur, ref, *cols, s)
            via_report, _ = _run_report(cur, ref, *cols, s)
            assert [f.feature for f in direct] == [f.feature for f in via_report]
            for d, r in zip(direct, via_report, strict=True):
                assert (d.method, d.feature_type, d.p_value is None, d.drifted) == (
                    r.method, r.feature_type, r.p_value is None, r.drifted), d.feature  # fmt: skip
                assert d.statistic == pytest.approx(r.statistic, rel=1e-9, abs=1e-12), d.feature
                assert d.threshold == pytest.approx(r.threshold), d.feature
    methods = {f.feature: f.method for f in column_tests(cur, ref, num, cat, [], configured)}
    assert methods["latency_ms"] == "psi"
