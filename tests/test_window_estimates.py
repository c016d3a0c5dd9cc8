"""Per-window PPI++ estimates: stored in window_metrics by the drift check (with ref.*), NULL without enough
uniform labels, usable in alert conditions, and shown by the Quality dashboard."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import psycopg
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url

from driftloop.monitor.check import DriftCheckJob
from driftloop.monitor.estimates import ESTIMATE_METRICS, WindowScores, choose_source, estimate
from driftloop.monitor.ppi import classical_mean_ci, ppi_mean_ci
from driftloop.monitor.tables import monitor_windows
from driftloop.monitor.tables import window_metrics as wm
from driftloop.settings import ConfigError, Settings
from driftloop.settings.conditions import parse_condition
from driftloop.settings.estimator import EstimateSettings
from driftloop.settings.metrics import is_known_metric
from driftloop.store.db import create_engine_from_url
from driftloop.store.scores import Score, record_scores
from tests.grafana_macros import TimeRange, dashboard_variables, expand
from tests.helpers import make_settings
from tests.monitor_helpers import T0, insert_rows, interaction

WINDOW = 100
RULE = "quality.estimate_high < ref.quality.estimate_low"


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    eng = create_engine_from_url(pg_url)
    yield eng
    eng.dispose()


def _settings(url: str, tmp_path: Path, **estimate: object) -> Settings:
    mon = {"window": {"kind": "count", "size": WINDOW}, "reference": {"kind": "previous", "windows": 1},
           "min_window_size": 50, "reports": False, "reports_dir": str(tmp_path / "r"),
           "embeddings": {"enabled": False}, "text_drift": False}  # fmt: skip
    return make_settings(url, monitor=mon, quality={"estimate": estimate})


def _seed(engine: Engine, rates: list[float], *, label_every: int = 3, seed: int = 0,
          machine: bool = True) -> dict[int, dict[str, dict[str, float]]]:  # fmt: skip
    """Windows of WINDOW interactions with true positive rates ``rates``: an estimator score for every
    interaction, a worse judge, uniform human labels on every ``label_every``-th one, and targeted labels
    (all negative) that the estimate must ignore. Returns per window: {"y": labels, "f": estimator scores}."""
    rng = np.random.default_rng(seed)
    n = WINDOW * len(rates)
    insert_rows(engine, [interaction(i) for i in range(n)])
    truth: dict[int, dict[str, dict[str, float]]] = {}
    out: list[Score] = []
    for i in range(n):
        k = i // WINDOW
        rid = f"r-m-{i}"
        y = float(rng.random() < rates[k])
        f = float(np.clip(0.15 + 0.7 * y + rng.normal(0, 0.15), 0, 1))
        t = truth.setdefault(k, {"y": {}, "f": {}})
        if machine:
            t["f"][rid] = f
            out.append(Score(rid, "estimator:v3", f))
            out.append(Score(rid, "judge:aaa", float(rng.random())))  # 'auto' must prefer the estimator
        if i % label_every == 0:
            t["y"][rid] = y
            out.append(Score(rid, "human_review", y, metadata={"slice": "uniform"}, event=f"u{i}"))
        elif i % label_every == 1:
            out.append(Score(rid, "human_review", 0.0, metadata={"slice": "targeted"}, event=f"t{i}"))
    with engine.begin() as c:
        record_scores(c, out)
    return truth


def _direct(t: dict[str, dict[str, float]]) -> tuple[float, float, float, int]:
    y, f = t["y"], t["f"]
    lab = sorted(y)
    # the estimator scored every interaction: the interval is for the window's own rate (population)
    e = ppi_mean_ci([y[r] for r in lab], [f[r] for r in lab], [v for r, v in sorted(f.items()) if r not in y],
                    alpha=0.1, population=WINDOW)  # fmt: skip
    assert len(f) == WINDOW
    return e.mean, max(0.0, e.low), min(1.0, e.high), e.n_labeled


def _stored(engine: Engine) -> dict[int, dict[str, float | None]]:
    with engine.connect() as c:
        rows = c.execute(select(monitor_windows.c.window_index, wm.c.name, wm.c.value)
                         .join(wm, wm.c.window_id == monitor_windows.c.id)).all()  # fmt: skip
    out: dict[int, dict[str, float | None]] = {}
    for idx, name, value in rows:
        out.setdefault(idx, {})[name] = value
    return out


def test_check_stores_the_ppi_estimate_and_its_reference(engine: Engine, pg_url: str, tmp_path: Path) -> None:
    truth = _seed(engine, [0.8, 0.8, 0.35])
    res = DriftCheckJob(_settings(pg_url, tmp_path), engine).run_once()
    assert [r.status for r in res] == ["insufficient_data", "ok", "ok"]
    m = _stored(engine)
    for k in (0, 1, 2):
        mean, low, high, n_lab = _direct(truth[k])
        assert m[k]["quality.estimate"] == pytest.approx(mean)
        assert m[k]["quality.estimate_low"] == pytest.approx(low)
        assert m[k]["quality.estimate_high"] == pytest.approx(high)
        assert m[k]["quality.estimate_n_labeled"] == n_lab == len(truth[k]["y"])
        assert low <= mean <= high
    for k in (1, 2):  # the reference of window k is window k-1
        for name in ESTIMATE_METRICS:
            assert m[k][f"ref.{name}"] == pytest.approx(m[k - 1][name])
    assert "ref.quality.estimate" not in m[0]  # the first window has no reference
    assert all(is_known_metric(n) for w in m.values() for n in w)
    # PPI++ with a good estimator: narrower than the labels alone, and the drop is seen by the rule
    e1 = truth[1]
    classical = classical_mean_ci([e1["y"][r] for r in sorted(e1["y"])], alpha=0.1, population=WINDOW)
    assert m[1]["quality.estimate_high"] - m[1]["quality.estimate_low"] < classical.width  # type: ignore[operator]
    rule = parse_condition(RULE)
    assert rule.eval(m[2]) is True
    assert rule.eval(m[1]) is False


def test_too_few_uniform_labels_is_unknown_not_zero(engine: Engine, pg_url: str, tmp_path: Path) -> None:
    # every 30th interaction labelled: 3-4 uniform labels per window (< min_labeled 10)
    truth = _seed(engine, [0.8, 0.8], label_every=30)
    assert 0 < len(truth[1]["y"]) < 10
    DriftCheckJob(_settings(pg_url, tmp_path), engine).run_once()
    m = _stored(engine)[1]
    for name in ("quality.estimate", "quality.estimate_low", "quality.estimate_high"):
        assert name in m and m[name] is None
        assert m[f"ref.{name}"] is None
    assert m["quality.estimate_n_labeled"] == len(truth[1]["y"])
    assert m["ref.quality.estimate_n_labeled"] == len(truth[0]["y"])
    assert parse_condition(RULE).eval(m) is None  # unknown: neither fires nor clears


def test_labels_without_machine_scores_give_the_classical_interval(engine: Engine, pg_url: str,
                                                                    tmp_path: Path) -> None:  # fmt: skip
    truth = _seed(engine, [0.6, 0.6], machine=False)
    DriftCheckJob(_settings(pg_url, tmp_path, min_labeled=20), engine).run_once()
    m = _stored(engine)[1]
    y = truth[1]["y"]
    e = classical_mean_ci([y[r] for r in sorted(y)], alpha=0.1, population=WINDOW)
    assert m["quality.estimate"] == pytest.approx(e.mean)
    assert m["quality.estimate_low"] == pytest.approx(max(0.0, e.low))
    # the finite-population factor: narrower than the interval for the process's rate, same centre
    assert e.width < classical_mean_ci([y[r] for r in sorted(y)], alpha=0.1).width
    assert m["quality.estimate_n_labeled"] == len(y)


def test_disabled_stores_no_estimate(engine: Engine, pg_url: str, tmp_path: Path) -> None:
    _seed(engine, [0.8, 0.8])
    DriftCheckJob(_settings(pg_url, tmp_path, enabled=False), engine).run_once()
    assert not any(n.startswith(("quality.estimate", "ref.quality.estimate")) for n in _stored(engine)[1])


def test_machine_source_choice() -> None:
    machine = {"judge:b": {"x": 0.1}, "judge:a": {"x": 0.2}, "estimator:v1": {"x": 0.3},
               "estimator:v2": {"x": 0.3, "y": 0.4}}  # fmt: skip
    assert choose_source(machine, "auto") == "estimator:v2"  # the estimator that scored most
    assert choose_source(machine, "estimator") == "estimator:v2"
    judges = {k: v for k, v in machine.items() if k.startswith("judge:")}
    assert choose_source(judges, "auto") == "judge:a"
    assert choose_source(judges, "estimator") is None
    assert choose_source(machine, "judge:b") == "judge:b"
    assert choose_source(machine, "judge:zzz") is None
    assert choose_source(machine, "none") is None


def test_estimate_uses_the_chosen_source_and_the_positive_threshold() -> None:
    rng = np.random.default_rng(5)
    ids = [f"r{i}" for i in range(200)]
    raw = {r: float(rng.random()) for r in ids}  # human scores in [0, 1]: positive at >= 0.7 here
    labels = {r: raw[r] for r in ids[:40]}
    judge = {r: float(np.clip(raw[r] + 0.05 * rng.normal(), 0, 1)) for r in ids}
    ws = WindowScores(labels=labels, machine={"judge:j": judge, "judge:k": {r: 0.5 for r in ids}})
    s = EstimateSettings(machine_source="judge:j", alpha=0.2)
    e = estimate(ws, s, positive_threshold=0.7)
    assert e is not None and e.method == "ppi++"
    y = [1.0 if labels[r] >= 0.7 else 0.0 for r in ids[:40]]
    want = ppi_mean_ci(y, [judge[r] for r in ids[:40]], [judge[r] for r in ids[40:]], alpha=0.2)
    assert (e.mean, e.low, e.high) == pytest.approx((want.mean, want.low, want.high))
    assert estimate(ws, s.model_copy(update={"min_labeled": 41}), 0.7) is None


def test_rules_accept_the_estimate_metrics_and_name_a_typo(tmp_path: Path) -> None:
    ok = make_settings(None, alerts={"rules": [{"name": "estimate-drop", "condition": RULE}]})
    assert ok.alerts.rules[0].condition == RULE
    with pytest.raises(ConfigError, match=r"quality\.estimate_high"):
        make_settings(None, alerts={"rules": [{"name": "typo", "condition": "quality.estimate_hi < 0.5"}]})
    node = parse_condition("quality.estimate_low < 0.5 and quality.estimate_n_labeled >= 30")
    assert node.eval({"quality.estimate_low": 0.4, "quality.estimate_n_labeled": 30.0}) is True
    assert node.eval({"quality.estimate_low": None, "quality.estimate_n_labeled": 3.0}) is not True


def test_quality_dashboard_panel_shows_estimate_and_band(engine: Engine, pg_url: str, tmp_path: Path) -> None:
    _seed(engine, [0.8, 0.8, 0.35])
    DriftCheckJob(_settings(pg_url, tmp_path), engine).run_once()
    d = json.loads((Path(__file__).resolve().parents[1] / "dashboards" / "quality.json").read_text())
    (panel,) = [p for p in d["panels"] if p["title"].startswith("Estimated positive rate")]
    overrides = {o["matcher"]["options"]: o["properties"] for o in panel["fieldConfig"]["overrides"]}
    assert {"id": "custom.fillBelowTo", "value": "low"} in overrides["high"]
    tr = TimeRange(T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    variables = dashboard_variables(d, {"model": ["m"]}, {"model": ["m"]})
    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True, options="-c default_transaction_read_only=on") as conn:
        cur = conn.execute(expand(panel["targets"][0]["rawSql"], tr, variables))
        cols = [c.name for c in cur.description or []]
        rows = cur.fetchall()
    assert cols == ["time", "estimate", "low", "high"]
    stored = _stored(engine)
    assert [r[1:] for r in rows] == [
        (stored[k]["quality.estimate"], stored[k]["quality.estimate_low"], stored[k]["quality.estimate_high"])
        for k in (0, 1, 2)
    ]
    assert all(lo <= est <= hi for _, est, lo, hi in rows)


def test_retrain_trigger_and_watch_accept_the_estimate() -> None:
    """The gate compares offline scores (a candidate serves no traffic, so it has no labelled windows); the
    estimate reaches retraining through a policy's trigger condition and the post-promotion watch."""
    from driftloop.settings.alerts import AlertSettings, condition_problems
    from driftloop.settings.retrain import RetrainSettings, WatchSettings, cross_check_retrain

    assert condition_problems("retrain.policies.0.trigger.condition", RULE) == []
    assert cross_check_retrain(RetrainSettings(watch=WatchSettings(metric="quality.estimate_low")), AlertSettings()) == []
    bad = cross_check_retrain(RetrainSettings(watch=WatchSettings(metric="quality.estimate_lo")), AlertSettings())
    assert bad and "quality.estimate_lo" in bad[0]
    assert all(is_known_metric(n) and is_known_metric(f"ref.{n}") for n in ESTIMATE_METRICS)
