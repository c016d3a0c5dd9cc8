"""Jobs whose optional module (monitor, alerts) is missing are recorded as skipped, not failed."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, insert, select

from driftloop import jobs
from driftloop.settings import load_settings
from driftloop.store.models import interactions

pytestmark = pytest.mark.integration


@pytest.fixture
def ctx(pg_url: str) -> Any:
    s = load_settings(None, database={"url": pg_url}, scheduler={"retention": {"interactions_days": 7}})
    eng = create_engine(pg_url)
    yield jobs.JobContext(s, eng, "skip-test")
    eng.dispose()


def _runs(ctx: jobs.JobContext) -> dict[str, Any]:
    with ctx.engine.connect() as c:
        return {r.job: r for r in c.execute(select(jobs.job_runs).order_by(jobs.job_runs.c.id))}


@pytest.mark.parametrize(("job", "module"), [("drift_check", "driftloop.monitor.check"),
                                             ("quality_check", "driftloop.monitor.check"),
                                             ("policy_evaluation", "driftloop.monitor.alerts.engine")])  # fmt: skip
def test_missing_module_records_a_skipped_run_and_others_still_succeed(
    ctx: jobs.JobContext, monkeypatch: pytest.MonkeyPatch, job: str, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what "not installed" looks like to importlib
    assert jobs.run_named(job, ctx) == "skipped"
    assert jobs.run_named("retention", ctx) == "succeeded"
    rows = _runs(ctx)
    assert rows[job].status == "skipped" and rows[job].error is None
    assert module in rows[job].result and rows[job].finished_at is not None
    assert rows["retention"].status == "succeeded"


def test_retention_without_the_monitor_tables_still_deletes_old_ingest_rows(
    ctx: jobs.JobContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    base = {"model_id": "m", "prompt": "p", "source_topic": "t", "source_partition": 0, "ingested_at": now}
    with ctx.engine.begin() as c:
        c.execute(insert(interactions), [
            {**base, "request_id": "old", "ts": now - timedelta(days=8), "source_offset": 1},
            {**base, "request_id": "new", "ts": now - timedelta(days=6), "source_offset": 2},
        ])  # fmt: skip
    monkeypatch.setitem(sys.modules, "driftloop.monitor.tables", None)
    out = jobs.retention_once(ctx)
    assert "interactions=1" in out and "monitor tables not touched" in out and "monitor_windows" not in out
    with ctx.engine.connect() as c:
        assert [r[0] for r in c.execute(select(interactions.c.request_id))] == ["new"]


def test_a_broken_dependency_inside_a_present_module_is_a_failure(
    ctx: jobs.JobContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the module itself being absent means 'skipped'; its own broken import is a real error."""
    (tmp_path / "dl_broken_job_mod.py").write_text("import dl_no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def unit(c: jobs.JobContext) -> None:
        jobs.optional_import("dl_broken_job_mod", "Job")

    def absent(c: jobs.JobContext) -> None:
        jobs.optional_import("dl_absent_job_mod_xyz", "Job")

    def no_attr(c: jobs.JobContext) -> None:
        jobs.optional_import("driftloop.jobs", "NoSuchJobClass")

    assert jobs.run_job("broken", unit, ctx) == "failed"
    assert jobs.run_job("absent", absent, ctx) == "skipped"
    assert jobs.run_job("no_attr", no_attr, ctx) == "skipped"
    rows = _runs(ctx)
    assert "dl_no_such_dependency_xyz" in rows["broken"].error
    assert "NoSuchJobClass" in rows["no_attr"].result


def test_alert_evaluation_is_an_alias_of_policy_evaluation(sqlite_url: str, tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from driftloop.cli import app

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"database": {"url": sqlite_url}, "scheduler": {"ingest": False}}))
    r = CliRunner().invoke(app, ["jobs", "run", "alert_evaluation", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "policy_evaluation: succeeded" in r.output
    eng = create_engine(sqlite_url)
    with eng.connect() as c:
        rows = [(row.job, row.status) for row in c.execute(select(jobs.job_runs))]
    assert rows == [("policy_evaluation", "succeeded")]
    eng.dispose()
    with pytest.raises(KeyError):
        jobs.resolve_job("alert_evaluations")
