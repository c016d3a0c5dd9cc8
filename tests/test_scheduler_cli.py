"""``driftloop jobs list|run`` and ``driftloop run`` exit paths."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from sqlalchemy import create_engine, select
from typer.testing import CliRunner

from driftloop.cli import app
from driftloop.jobs import job_runs
from tests.ingest_helpers import wait_for


def _cfg(tmp_path: Path, url: str, **sched: object) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"database": {"url": url}, "scheduler": {"ingest": False, **sched}}))
    return p


def test_jobs_run_records_and_jobs_list_shows_it(pg_url: str, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, pg_url)
    r = CliRunner().invoke(app, ["jobs", "run", "retention", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "retention: succeeded" in r.output
    eng = create_engine(pg_url)
    with eng.connect() as c:
        rows = c.execute(select(job_runs.c.job, job_runs.c.status, job_runs.c.instance)).all()
    eng.dispose()
    assert [(j, st) for j, st, _ in rows] == [("retention", "succeeded")] and rows[0][2].endswith("(cli)")
    r = CliRunner().invoke(app, ["jobs", "list", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "drift_check" in r.output and "quality_check      disabled" in r.output
    assert "leader: none" in r.output and "retention" in r.output.split("recent runs:")[1]


def test_jobs_run_unknown_name_exits_2(sqlite_url: str, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["jobs", "run", "window_chek", "--config", str(_cfg(tmp_path, sqlite_url))])
    assert r.exit_code == 2 and "unknown job 'window_chek'" in r.output and "drift_check" in r.output


def test_run_on_sqlite_leads_alone_and_stops_on_sigterm(sqlite_url: str, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, sqlite_url, drift_check_s=0.5, policy_evaluation_s=0.5)
    log = tmp_path / "run.log"
    with open(log, "ab") as out:
        p = subprocess.Popen([sys.executable, "-m", "driftloop", "run", "--config", str(cfg), "--no-ingest"],
                             stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    eng = create_engine(sqlite_url)
    try:

        def runs() -> int:
            with eng.connect() as c:
                return len(c.execute(select(job_runs.c.id).where(job_runs.c.status == "succeeded")).all())

        wait_for(lambda: runs() >= 2, 60, "jobs to run")
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if p.poll() is None:
            p.kill()
        eng.dispose()
    text = log.read_text()
    assert "is now the LEADER" in text and "file lock" in text and "stopped" in text
    assert "Traceback" not in text


def test_run_ingests_and_schedules_in_one_process(pg_url: str, kafka_bootstrap: str, topics: dict[str, str],
                                                  tmp_path: Path) -> None:  # fmt: skip
    """``driftloop run`` with ingestion: records land in the database while the leader runs jobs; SIGTERM stops both."""
    from tests.ingest_helpers import produce_values, records, scalar, settings_for, write_config

    cfg = write_config(tmp_path / "c.yaml", settings_for(pg_url, kafka_bootstrap, topics))
    data = yaml.safe_load(cfg.read_text())
    data["scheduler"] = {"drift_check_s": 0.5, "policy_evaluation_s": 0.5}
    cfg.write_text(yaml.safe_dump(data))
    log = tmp_path / "run.log"
    with open(log, "ab") as out:
        p = subprocess.Popen([sys.executable, "-m", "driftloop", "run", "--config", str(cfg)], stdout=out,
                             stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        assert produce_values(kafka_bootstrap, topics["logs"], records(300, seed=3)) == 300
        wait_for(lambda: scalar(pg_url, "select count(*) from interactions") == 300, 120, "300 ingested records")
        wait_for(
            lambda: scalar(pg_url, "select count(*) from job_runs where status = 'succeeded'") >= 2, 60, "job runs"
        )
        p.send_signal(signal.SIGTERM)
        assert p.wait(90) == 0, log.read_text()[-3000:]
    finally:
        if p.poll() is None:
            p.kill()
    text = log.read_text()
    assert "ingest=True, scheduler=True" in text and "is now the LEADER" in text and "driftloop.daemon: stopped" in text
    assert scalar(pg_url, "select count(*) from job_runs where status = 'running'") == 0
