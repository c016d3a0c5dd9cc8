"""Retrain policies: validation, triggers, cooldown, max runs per day, minimum new samples (PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, insert, select, update

from driftloop.monitor.alerts.tables import alerts
from driftloop.retrain.runner import RetrainPolicyJob
from driftloop.retrain.tables import retrain_jobs
from driftloop.settings import ConfigError, load_settings
from driftloop.store.db import create_engine_from_url
from tests.alpaca import store_records
from tests.retrain_helpers import toy_records

RULES = [{"name": "quality-drop", "condition": "quality.feedback_positive_rate < 0.3"}]


def _policy(**kw: Any) -> dict[str, Any]:
    return {"name": "toy-retrain", "model_id": "toy", "base_model": "/models/base",
            "trigger": {"alerts": ["quality-drop"]}, "min_new_samples": 50, "cooldown_minutes": 60,
            "max_runs_per_day": 2, **kw}  # fmt: skip


def _load(tmp_path: Path, cfg: dict[str, Any]) -> Any:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return load_settings(p)


def test_bad_retrain_policies_are_reported_with_paths(tmp_path: Path) -> None:
    cfg = {
        "alerts": {"rules": RULES},
        "retrain": {
            "targets": [{"name": "fs", "type": "filesystem", "path": "/srv/models"}],
            "policies": [
                _policy(trigger={"alerts": ["no-such-rule"]}, targets=["fs", "nope"]),
                _policy(name="p2", trigger={}, gate={"guards": {"bleu": -1, "perplexityy": 0.1}}),
                _policy(name="p3", training={"learning_rate": 0}, approval="sometimes", lora={"r": 0},
                        data={"eval_fraction": 1.5}, extra_field=1),
                _policy(name="p4", trigger={"condition": "quality.feedback_positive_rate <"}),
                _policy(name="p5", trigger={"condition": "quality.nope < 1"}, gate={"primary": "rouge_l",
                                                                                    "guards": {"rouge_l": 0.1}}),
            ],
            "watch": {"metric": "quality.nothing", "channels": ["pager"]},
        },
    }  # fmt: skip
    with pytest.raises(ConfigError) as ei:
        _load(tmp_path, cfg)
    text = "\n".join(ei.value.problems)
    for needle in [
        "retrain.policies.1.trigger",
        "retrain.policies.1.gate.guards",
        "retrain.policies.2.training.learning_rate: must be > 0",
        "retrain.policies.2.approval",
        "retrain.policies.2.lora.r: must be > 0",
        "retrain.policies.2.data.eval_fraction: must be < 1",
        "retrain.policies.2.extra_field: unknown field",
        "retrain.policies.3.trigger.condition",
        "retrain.policies.4.gate",
    ]:
        assert needle in text, (needle, text)
    # cross-section problems are reported once the sections themselves are valid
    ok = {"alerts": {"rules": RULES}, "retrain": {
        "targets": [{"name": "fs", "type": "filesystem", "path": "/srv/models"}],
        "policies": [_policy(trigger={"alerts": ["no-such-rule"], "condition": "quality.nope < 1"},
                             targets=["fs", "nope"])],
        "watch": {"metric": "quality.nothing", "channels": ["pager"]}}}  # fmt: skip
    with pytest.raises(ConfigError) as ei:
        _load(tmp_path, ok)
    text = "\n".join(ei.value.problems)
    assert "retrain.policies.0.trigger.alerts.0: unknown alert rule 'no-such-rule'" in text
    assert "retrain.policies.0.trigger.condition: unknown metric 'quality.nope'" in text
    assert "retrain.policies.0.targets.1: unknown target 'nope'" in text
    assert "retrain.watch.metric: unknown metric 'quality.nothing'" in text
    assert "retrain.watch.channels.0: unknown channel 'pager'" in text


def test_example_policy_file_is_valid() -> None:
    p = Path(__file__).resolve().parents[1] / "deploy/retrain.example.yaml"
    s = load_settings(p)
    assert s.retrain.policies and s.retrain.targets


def _open_alert(eng: Any, rule: str = "quality-drop", model: str = "toy") -> None:
    now = datetime.now(UTC)
    with eng.begin() as c:
        c.execute(insert(alerts), {"rule": rule, "group_key": f"{model}|{now.timestamp()}", "model_id": model,
                                   "segment": "", "severity": "warning", "state": "fired", "condition": "x",
                                   "message": "m", "fired_at": now, "last_evaluated_at": now,
                                   "notify_count": 0})  # fmt: skip


def _finish_queued(eng: Any, created_at: datetime) -> None:
    """What the leader's worker records for a run, without training: the queued job succeeded."""
    with eng.begin() as c:
        c.execute(update(retrain_jobs).where(retrain_jobs.c.status == "queued").values(
            status="succeeded", progress=1.0, created_at=created_at, finished_at=datetime.now(UTC)))  # fmt: skip


def test_cooldown_max_runs_and_min_samples_under_repeated_alerts(pg_url: str, tmp_path: Path) -> None:
    s = load_settings(None, database={"url": pg_url}, alerts={"rules": RULES},
                      retrain={"policies": [_policy()]})  # fmt: skip
    eng = create_engine_from_url(pg_url)
    clock = {"now": datetime.now(UTC)}
    job = RetrainPolicyJob(s, eng, "test")

    def queued() -> list[dict[str, Any]]:
        with eng.connect() as c:
            return [dict(r) for r in c.execute(select(retrain_jobs).where(retrain_jobs.c.status == "queued")).mappings()]

    assert job.run_once(clock["now"])[0].reason == "not triggered"
    _open_alert(eng)
    d = job.run_once(clock["now"])[0]
    assert d.action == "skipped" and "only 0 new eligible" in d.reason
    store_records(pg_url, toy_records("B", 200, start=clock["now"] - timedelta(minutes=30), good=False,
                                      correction_rate=0.5), topic="b1")  # fmt: skip
    d = job.run_once(clock["now"])[0]
    assert d.action == "queued" and d.job_id is not None
    (q,) = queued()  # the scheduler only queues: the leader's worker runs it
    assert q["id"] == d.job_id and q["requested_by"] == "scheduler:test" and q["instance"] is None
    assert q["trigger"]["alerts"][0]["rule"] == "quality-drop" and q["trigger"]["eligible"] >= 50
    # while it is queued, a second evaluation queues nothing more (cooldown from its creation)
    d = job.run_once(clock["now"])[0]
    assert d.action == "skipped" and len(queued()) == 1
    _finish_queued(eng, clock["now"])
    # the alert stays open: every evaluation within the cooldown is refused
    for minutes in (1, 10, 59):
        d = job.run_once(clock["now"] + timedelta(minutes=minutes))[0]
        assert d.action == "skipped" and d.reason.startswith("cooldown"), d.reason
    # after the cooldown: new data is needed (the last run consumed what was there)
    clock["now"] += timedelta(minutes=61)
    d = job.run_once(clock["now"])[0]
    assert d.action == "skipped" and "new eligible" in d.reason
    store_records(pg_url, toy_records("B", 200, start=clock["now"] - timedelta(minutes=5), good=False,
                                      correction_rate=0.5, prefix="b2", seed=2), topic="b2")  # fmt: skip
    assert job.run_once(clock["now"])[0].action == "queued"
    _finish_queued(eng, clock["now"])
    # third run within 24 h: max_runs_per_day = 2
    clock["now"] += timedelta(minutes=61)
    store_records(pg_url, toy_records("B", 200, start=clock["now"] - timedelta(minutes=5), good=False,
                                      correction_rate=0.5, prefix="b3", seed=3), topic="b3")  # fmt: skip
    d = job.run_once(clock["now"])[0]
    assert d.action == "skipped" and "max_runs_per_day" in d.reason
    with eng.connect() as c:
        assert c.execute(select(func.count()).select_from(retrain_jobs)).scalar() == 2
    eng.dispose()


def test_condition_trigger_goes_through_the_alert_engine_and_run_in_progress(pg_url: str) -> None:
    from driftloop.monitor.alerts.engine import AlertEvaluationJob, trigger_rule_name
    from driftloop.monitor.tables import monitor_windows, window_metrics

    pol = _policy(trigger={"condition": "quality.feedback_positive_rate < 0.3"}, min_new_samples=1)
    s = load_settings(None, database={"url": pg_url}, retrain={"policies": [pol]})
    eng = create_engine_from_url(pg_url)
    now = datetime.now(UTC)

    def window(value: float, at: datetime, model: str = "toy", index: int = 0) -> None:
        with eng.begin() as c:
            wid = c.execute(insert(monitor_windows).returning(monitor_windows.c.id), {
                "model_id": model, "segment": "", "window_kind": "count", "window_index": index, "window_start": at,
                "window_end": at, "n_records": 100, "ref_kind": "previous", "ref_n": 0, "status": "ok",
                "created_at": at}).scalar_one()  # fmt: skip
            c.execute(insert(window_metrics), {"window_id": wid, "model_id": model, "segment": "", "window_end": at,
                                               "name": "quality.feedback_positive_rate", "value": value})  # fmt: skip

    window(0.1, now)
    window(0.1, now, model="other")  # another model's windows never trigger this policy
    store_records(pg_url, toy_records("B", 20, start=now - timedelta(minutes=5), good=False), topic="c1")
    job = RetrainPolicyJob(s, eng, "test")
    policy = s.retrain.policies[0]
    # the retrain loop evaluates nothing itself: until the engine has fired the implicit rule, no trigger
    assert job.triggered(policy, now) is None
    ev = AlertEvaluationJob(s, eng).run_once(now)
    assert [(e.event, e.rule, e.model_id) for e in ev] == [("fired", trigger_rule_name("toy-retrain"), "toy")]
    trig = job.triggered(policy, now)
    assert trig is not None and trig["condition"]["condition"].startswith("quality.feedback_positive_rate")
    assert trig["condition"]["alert_id"] == ev[0].alert_id
    # a run in progress: the queue's unique index keeps it the only one
    with eng.begin() as c:
        running = c.execute(insert(retrain_jobs).returning(retrain_jobs.c.id), {
            "policy": "toy-retrain", "model_id": "toy", "status": "running", "progress": 0.3,
            "cancel_requested": False, "instance": "leader", "created_at": now - timedelta(days=2)}).scalar_one()  # fmt: skip
    d = job.run_once(now)[0]
    assert d.action == "skipped" and "already in progress" in d.reason and d.job_id == running
    # the engine resolves the implicit alert when the condition clears: the trigger is gone
    window(0.9, now + timedelta(minutes=1), index=1)
    ev = AlertEvaluationJob(s, eng).run_once(now + timedelta(minutes=1))
    assert [(e.event, e.rule) for e in ev] == [("resolved", trigger_rule_name("toy-retrain"))]
    assert job.triggered(policy, now) is None
    eng.dispose()
