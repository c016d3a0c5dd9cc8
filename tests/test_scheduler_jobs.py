"""Job runs: recording, failure isolation, the leadership fence, overrun warnings, retention."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, insert, inspect, select

from driftloop import jobs
from driftloop.settings import Settings, load_settings
from driftloop.store.db import downgrade, migrate
from driftloop.store.models import feedback, interactions, rejected_messages
from tests.ingest_helpers import wait_for

BOOM_CALLS: list[float] = []


def boom_job() -> None:
    """A scheduled job (by textual reference) whose unit always raises."""

    def unit(ctx: jobs.JobContext) -> None:
        BOOM_CALLS.append(time.monotonic())
        raise RuntimeError("the model registry is on fire")

    jobs.run_job("boom", unit)


def _runs(eng: Engine) -> list[Any]:
    with eng.connect() as c:
        return list(c.execute(select(jobs.job_runs).order_by(jobs.job_runs.c.id)))


@pytest.fixture
def ctx(pg_url: str) -> Any:
    s = load_settings(None, database={"url": pg_url})
    eng = create_engine(pg_url)
    yield jobs.set_context(s, eng, "test-instance")
    jobs.clear_context()
    eng.dispose()


def test_a_failing_job_is_recorded_and_the_others_still_run(ctx: jobs.JobContext) -> None:
    def boom(c: jobs.JobContext) -> None:
        raise RuntimeError("the model registry is on fire")

    assert jobs.run_job("boom", boom, ctx) == "failed"
    for name in ("drift_check", "policy_evaluation", "retention"):
        assert jobs.run_named(name, ctx) == "succeeded", name
    rows = {r.job: r for r in _runs(ctx.engine)}
    assert rows["boom"].status == "failed"
    assert "the model registry is on fire" in rows["boom"].error and "Traceback" in rows["boom"].error
    assert rows["boom"].finished_at is not None and rows["boom"].duration_s >= 0
    for name in ("drift_check", "policy_evaluation", "retention"):
        assert rows[name].status == "succeeded" and rows[name].finished_at is not None
        assert rows[name].instance == "test-instance" and rows[name].error is None


def test_scheduler_keeps_running_other_jobs_while_one_fails(ctx: jobs.JobContext) -> None:
    """Real APScheduler on the PG job store: the failing job repeats, the others keep succeeding."""
    from driftloop.scheduler import make_scheduler

    BOOM_CALLS.clear()
    s = ctx.settings
    sched = make_scheduler(ctx.engine, s)
    sched.start(paused=True)
    sched.add_job("tests.test_scheduler_jobs:boom_job", "interval", seconds=0.3, id="boom")
    sched.add_job("driftloop.jobs:policy_evaluation", "interval", seconds=0.3, id="policy_evaluation")
    sched.resume()
    try:

        def enough() -> bool:
            rows = _runs(ctx.engine)
            return (sum(r.job == "boom" and r.status == "failed" for r in rows) >= 3
                    and sum(r.job == "policy_evaluation" and r.status == "succeeded" for r in rows) >= 3)  # fmt: skip

        wait_for(enough, 60, "3 failed boom runs and 3 successful policy evaluations")
        assert sched.running and {j.id for j in sched.get_jobs()} == {"boom", "policy_evaluation"}
    finally:
        sched.shutdown(wait=True)


def test_fence_refuses_to_start_a_job_after_leadership_is_lost(ctx: jobs.JobContext) -> None:
    ran: list[int] = []
    lost = jobs.JobContext(ctx.settings, ctx.engine, "old-leader", is_leader=lambda: False)
    assert jobs.run_job("drift_check", lambda c: ran.append(1), lost) == "skipped"
    assert ran == [] and _runs(ctx.engine) == []


def test_a_job_longer_than_its_interval_warns(ctx: jobs.JobContext, caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()

    def slow(c: jobs.JobContext) -> str:
        # finish only once the watchdog has warned: no dependence on how fast this machine is
        wait_for(lambda: "still running" in caplog.text, 30, "the overrun warning")
        release.set()
        return "done"

    with caplog.at_level(logging.WARNING, logger="driftloop.jobs"):
        assert jobs.run_job("slow", slow, ctx, interval_s=0.2) == "succeeded"
    assert release.is_set()
    assert "job slow is still running after 0.2s" in caplog.text
    assert "longer than its 0.2s interval" in caplog.text
    with caplog.at_level(logging.WARNING, logger="driftloop.jobs"):
        caplog.clear()
        assert jobs.run_job("quick", lambda c: "ok", ctx, interval_s=30) == "succeeded"
    assert "longer than" not in caplog.text


def _retention_settings(url: str, **retention: Any) -> Settings:
    return load_settings(None, database={"url": url}, scheduler={"retention": {"batch_size": 3, **retention}})


@pytest.mark.parametrize("backend", [pytest.param("pg", marks=pytest.mark.postgres), "sqlite"])
def test_retention_deletes_only_old_rows_in_batches(backend: str, request: pytest.FixtureRequest) -> None:
    from driftloop.monitor.tables import drift_results, monitor_windows

    url = request.getfixturevalue("pg_url" if backend == "pg" else "sqlite_url")
    s = _retention_settings(url, interactions_days=7, rejected_days=2, monitor_days=30, job_runs_days=1)
    eng = create_engine(url)
    now = datetime.now(UTC)
    ages = {"old": 8, "new": 6}  # days, against interactions_days=7
    with eng.begin() as c:
        base = {"model_id": "m", "prompt": "p", "source_topic": "t", "source_partition": 0, "ingested_at": now}
        c.execute(insert(interactions), [
            {**base, "request_id": f"{k}-{i}", "ts": now - timedelta(days=d), "source_offset": 100 * d + i}
            for k, d in ages.items() for i in range(7)])  # fmt: skip
        c.execute(insert(feedback), [
            {"event_key": f"{k}-{i}", "request_id": f"{k}-{i}", "ts": now - timedelta(days=d), "score": 1.0,
             "source": "event", "ingested_at": now} for k, d in ages.items() for i in range(4)])  # fmt: skip
        c.execute(insert(rejected_messages), [
            {"source_topic": "t", "source_partition": 0, "source_offset": d, "reason": "bad_json", "error": "x",
             "raw_size": 1, "raw_sha256": str(d), "rejected_at": now - timedelta(days=d)} for d in (1, 3)])  # fmt: skip
        win = {"model_id": "m", "segment": "", "window_kind": "count", "n_records": 1, "ref_kind": "previous",
               "ref_n": 1, "status": "ok", "created_at": now}  # fmt: skip
        wids = [c.execute(insert(monitor_windows).returning(monitor_windows.c.id),
                          {**win, "window_index": d, "window_start": now - timedelta(days=d, hours=1),
                           "window_end": now - timedelta(days=d)}).scalar_one() for d in (40, 20)]  # fmt: skip
        c.execute(
            insert(drift_results),
            [
                {"window_id": w, "feature": "f", "feature_type": "numerical", "method": "ks", "drifted": False}
                for w in wids
            ],
        )
        c.execute(insert(jobs.job_runs), [
            {"job": "j", "instance": "i", "status": st, "started_at": now - timedelta(days=d)}
            for d, st in ((3, "succeeded"), (3, "running"), (0.5, "failed"))])  # fmt: skip
    ctx = jobs.JobContext(s, eng, "t")
    assert jobs.run_named("retention", ctx) == "succeeded"
    with eng.connect() as c:
        assert sorted(r[0] for r in c.execute(select(interactions.c.request_id))) == [f"new-{i}" for i in range(7)]
        assert sorted(r[0] for r in c.execute(select(feedback.c.event_key))) == [f"new-{i}" for i in range(4)]
        assert [r[0] for r in c.execute(select(rejected_messages.c.source_offset))] == [1]
        assert [r[0] for r in c.execute(select(monitor_windows.c.window_index))] == [20]
        assert [r[0] for r in c.execute(select(drift_results.c.window_id))] == [wids[1]]
        kept = sorted((r.status, r.job) for r in c.execute(select(jobs.job_runs)))
    # the 3-day-old finished run is gone; a 'running' row is never deleted; this run's own row stays
    assert ("succeeded", "j") not in kept and ("running", "j") in kept and ("failed", "j") in kept
    assert ("succeeded", "retention") in kept
    eng.dispose()


def test_retention_zero_days_keeps_everything(pg_url: str) -> None:
    s = _retention_settings(pg_url, interactions_days=0, rejected_days=0, monitor_days=0, job_runs_days=0)
    eng = create_engine(pg_url)
    now = datetime.now(UTC)
    with eng.begin() as c:
        c.execute(insert(interactions), {"request_id": "ancient", "model_id": "m", "prompt": "p",
                                         "ts": now - timedelta(days=3650), "source_topic": "t",
                                         "source_partition": 0, "source_offset": 1, "ingested_at": now})  # fmt: skip
    out = jobs.retention_once(jobs.JobContext(s, eng, "t"))
    assert "retention disabled" in out
    with eng.connect() as c:
        assert c.execute(select(func.count()).select_from(interactions)).scalar() == 1
    eng.dispose()


@pytest.mark.parametrize("backend", [pytest.param("pg", marks=pytest.mark.postgres), "sqlite"])
def test_migration_0004_upgrades_and_downgrades(backend: str, request: pytest.FixtureRequest, tmp_path: Any) -> None:
    url = request.getfixturevalue("empty_pg_url") if backend == "pg" else f"sqlite:///{tmp_path}/m.db"
    migrate(url)
    eng = create_engine(url)
    assert {"job_runs"} <= set(inspect(eng).get_table_names())
    idx = {i["name"] for i in inspect(eng).get_indexes("job_runs")}
    assert {"ix_job_runs_job_started", "ix_job_runs_started"} <= idx
    with eng.begin() as c, pytest.raises(Exception, match=r"ck_job_runs_status|CHECK constraint"):
        c.execute(
            insert(jobs.job_runs), {"job": "j", "instance": "i", "status": "exploded", "started_at": datetime.now(UTC)}
        )
    downgrade(url, "0003_alerts")
    assert "job_runs" not in inspect(eng).get_table_names()
    downgrade(url, "base")
    assert [t for t in inspect(eng).get_table_names() if t != "alembic_version"] == []
    migrate(url)
    assert "job_runs" in inspect(eng).get_table_names()
    eng.dispose()


def test_a_new_leader_marks_unfinished_runs_of_others_failed(ctx: jobs.JobContext) -> None:
    now = datetime.now(UTC)
    with ctx.engine.begin() as c:
        c.execute(insert(jobs.job_runs), [
            {"job": "drift_check", "instance": inst, "status": st, "started_at": now}
            for inst, st in (("dead:1", "running"), ("dead:1", "succeeded"), ("me:2", "running"))])  # fmt: skip
    assert jobs.abandon_runs_of_others(ctx.engine, "me:2") == 1
    got = sorted((r.instance, r.status, (r.error or "")[:9]) for r in _runs(ctx.engine))
    assert got == [("dead:1", "failed", "abandoned"), ("dead:1", "succeeded", ""), ("me:2", "running", "")]
