"""Scheduler, job runs and leader election against a real PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, insert, select, text

from driftloop import jobs
from driftloop.scheduler import JOB_SPECS, make_scheduler, register_jobs
from driftloop.settings import load_settings
from tests.ingest_helpers import wait_for

pytestmark = pytest.mark.integration


def test_jobs_survive_a_restart_without_duplicates(pg_url: str) -> None:
    s = load_settings(None, database={"url": pg_url}).scheduler
    eng = create_engine(pg_url)
    sched = make_scheduler(eng, s)
    sched.start(paused=True)
    register_jobs(sched, s)
    first = {j.id: j.next_run_time for j in sched.get_jobs()}
    sched.shutdown(wait=False)
    # a new process: a fresh scheduler on the same job store sees the jobs before registering anything
    sched2 = make_scheduler(eng, s)
    sched2.start(paused=True)
    assert {j.id for j in sched2.get_jobs()} == set(JOB_SPECS)
    assert {j.id: j.next_run_time for j in sched2.get_jobs()} == first
    register_jobs(sched2, s)  # registering again replaces, never duplicates
    assert len(sched2.get_jobs()) == len(JOB_SPECS)
    with eng.connect() as c:
        assert c.execute(text("select count(*) from apscheduler_jobs")).scalar() == len(JOB_SPECS)
    sched2.shutdown(wait=False)
    eng.dispose()


def test_a_failing_job_is_recorded_and_others_still_run(pg_url: str) -> None:
    s = load_settings(None, database={"url": pg_url})
    eng = create_engine(pg_url)
    jobs.set_context(s, eng, "test-instance")

    def boom(ctx: jobs.JobContext) -> None:
        raise RuntimeError("the model registry is on fire")

    assert jobs.run_job("boom", boom) == "failed"
    assert jobs.run_job("window_check", jobs.JOBS["window_check"]) == "succeeded"
    assert jobs.run_job("alert_evaluation", jobs.JOBS["alert_evaluation"]) == "succeeded"
    with eng.connect() as c:
        rows = {r.job: r for r in c.execute(select(jobs.job_runs)).all()}
    assert rows["boom"].status == "failed" and "the model registry is on fire" in rows["boom"].error
    assert rows["window_check"].status == "succeeded" and rows["window_check"].finished_at is not None
    eng.dispose()


def test_retention_deletes_only_old_rows(pg_url: str) -> None:
    from driftloop.store.models import interactions

    s = load_settings(None, database={"url": pg_url}, scheduler={"retention": {"interactions_days": 7}})
    eng = create_engine(pg_url)
    now = datetime.now(UTC)
    base = {"model_id": "m", "prompt": "p", "source_topic": "t", "source_partition": 0, "ingested_at": now}
    with eng.begin() as c:
        c.execute(insert(interactions), [
            {**base, "request_id": "old", "ts": now - timedelta(days=8), "source_offset": 1},
            {**base, "request_id": "new", "ts": now - timedelta(days=6), "source_offset": 2},
        ])  # fmt: skip
    jobs.set_context(s, eng, "t")
    assert jobs.run_job("retention", jobs.JOBS["retention"]) == "succeeded"
    with eng.connect() as c:
        assert [r[0] for r in c.execute(select(interactions.c.request_id))] == ["new"]
    eng.dispose()


def _start_daemon(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "driftloop", "run", "--config", str(cfg), "--no-ingest", "--no-migrate"],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_exactly_one_leader_and_failover_after_sigkill(pg_url: str, tmp_path: Path) -> None:
    cfg = tmp_path / "d.yaml"
    cfg.write_text(yaml.safe_dump({
        "database": {"url": pg_url},
        "scheduler": {"window_check_s": 0.5, "alert_evaluation_s": 0.5, "leader_retry_s": 0.5, "leader_check_s": 0.5},
    }))  # fmt: skip
    eng = create_engine(pg_url)

    def runs() -> list[tuple[str, datetime]]:
        with eng.connect() as c:
            return [(r[0], r[1]) for r in c.execute(text("select instance, started_at from job_runs order by id"))]

    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_start_daemon(cfg, logs[0]), _start_daemon(cfg, logs[1])]
    try:
        wait_for(lambda: len(runs()) >= 6, 60, "the leader's first job runs")
        time.sleep(2)
        leaders = {i for i, _ in runs()}
        assert len(leaders) == 1, f"two instances ran jobs at once: {leaders}"
        leader = leaders.pop()
        pid = int(leader.rsplit(":", 1)[1])
        victim = next(p for p in procs if p.pid == pid)
        survivor = next(p for p in procs if p.pid != pid)
        killed_at = datetime.now(UTC)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        wait_for(lambda: any(i != leader for i, _ in runs()), 60, "a follower to take over")
        new = [(i, t) for i, t in runs() if i != leader]
        takeover_s = (min(t for _, t in new) - killed_at).total_seconds()
        assert {i for i, _ in new} == {f"{i.split(':')[0]}:{survivor.pid}" for i, _ in new}
        # never two leaders: after the first run of the new leader, the old one ran nothing
        first_new = min(t for _, t in new)
        assert not [t for i, t in runs() if i == leader and t > first_new]
        print(f"takeover after SIGKILL: {takeover_s:.1f}s")
        assert "is now the LEADER" in logs[0].read_text() + logs[1].read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        eng.dispose()
    assert survivor.returncode == 0, logs[0].read_text()[-2000:] + logs[1].read_text()[-2000:]
