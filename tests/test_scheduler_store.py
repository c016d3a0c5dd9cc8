"""The APScheduler job store lives in driftloop's database: jobs survive restarts, never duplicate."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine, text

from driftloop.jobs import JOBS
from driftloop.scheduler import make_scheduler, register_jobs
from driftloop.settings import Settings, load_settings
from tests.helpers import make_settings


def _enabled(s: Settings) -> set[str]:
    return {n for n, spec in JOBS.items() if spec.interval_s(s)}


@pytest.mark.parametrize("backend", [pytest.param("pg", marks=pytest.mark.postgres), "sqlite"])
def test_jobs_survive_a_restart_without_duplicates(backend: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_url" if backend == "pg" else "sqlite_url")
    s = make_settings(url, scheduler={"quality_check_s": 120})
    eng = create_engine(url)
    sched = make_scheduler(eng, s)
    sched.start(paused=True)
    done = register_jobs(sched, s)
    assert all(v.startswith("added") for v in done.values()) and set(done) == _enabled(s)
    first = {j.id: j.next_run_time for j in sched.get_jobs()}
    sched.shutdown(wait=False)

    # a new scheduler (a restarted daemon) on the same store sees the jobs before registering anything
    sched2 = make_scheduler(eng, s)
    sched2.start(paused=True)
    jobs2 = sched2.get_jobs()
    assert {j.id for j in jobs2} == _enabled(s) == {"drift_check", "quality_check", "policy_evaluation", "retention",
                                                    "retrain_check", "retrain_worker", "promotion_watch"}
    assert {j.id: j.next_run_time for j in jobs2} == first
    assert {j.id: j.func_ref for j in jobs2} == {n: f"driftloop.jobs:{n}" for n in first}
    assert all(j.coalesce and j.max_instances == 1 and j.misfire_grace_time == s.scheduler.misfire_grace_s
               for j in jobs2)  # fmt: skip
    done2 = register_jobs(sched2, s)  # unchanged settings: kept, next run time preserved
    assert all(v.startswith("kept") for v in done2.values()), done2
    assert {j.id: j.next_run_time for j in sched2.get_jobs()} == first
    with eng.connect() as c:
        assert c.execute(text("select count(*) from apscheduler_jobs")).scalar() == len(first)
    sched2.shutdown(wait=False)
    eng.dispose()


def test_changed_disabled_and_unknown_jobs_are_reconciled(pg_url: str) -> None:
    s = make_settings(pg_url)
    eng = create_engine(pg_url)
    sched = make_scheduler(eng, s)
    sched.start(paused=True)
    register_jobs(sched, s)
    sched.add_job("driftloop.jobs:retention", "interval", seconds=5, id="window_check")  # e.g. an old name
    sched.shutdown(wait=False)

    s2 = make_settings(pg_url, scheduler={"drift_check_s": 15, "retention_s": 0, "misfire_grace_s": 7})
    sched2 = make_scheduler(eng, s2)
    sched2.start(paused=True)
    done = register_jobs(sched2, s2)
    assert done["window_check"].startswith("removed") and done["retention"].startswith("removed")
    assert done["drift_check"].startswith("replaced") and done["policy_evaluation"].startswith("replaced")
    got = {j.id: j for j in sched2.get_jobs()}
    assert set(got) == {"drift_check", "policy_evaluation", "retrain_check", "retrain_worker", "promotion_watch"}
    assert got["drift_check"].trigger.interval.total_seconds() == 15
    assert {j.misfire_grace_time for j in got.values()} == {7}
    sched2.shutdown(wait=False)
    with eng.connect() as c:
        ids = {r[0] for r in c.execute(text("select id from apscheduler_jobs"))}
    assert ids == {"drift_check", "policy_evaluation", "retrain_check", "retrain_worker", "promotion_watch"}
    eng.dispose()


def test_old_setting_names_are_still_accepted() -> None:
    s = load_settings(None, scheduler={"window_check_s": 5, "alert_evaluation_s": 7})
    assert (s.scheduler.drift_check_s, s.scheduler.policy_evaluation_s) == (5, 7)


def test_bad_scheduler_settings_say_what_to_do(tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from driftloop.cli import app

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("scheduler:\n  drift_check_s: 0.01\n  retension_s: 5\n")
    r = CliRunner().invoke(app, ["check-config", str(cfg)])
    assert r.exit_code == 2
    out = r.output
    assert "scheduler.retension_s" in out and "0 to disable the job" in out
