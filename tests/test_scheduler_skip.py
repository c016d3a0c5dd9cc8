"""Skipped versus failed job runs: ``JobSkipped`` is a skip with its reason, anything else (a missing module too)
is a failure with its traceback; either way the other jobs still run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from driftloop import jobs
from driftloop.settings import load_settings


@pytest.fixture
def ctx(pg_url: str) -> Any:
    s = load_settings(None, database={"url": pg_url}, scheduler={"retention": {"interactions_days": 7}})
    eng = create_engine(pg_url)
    yield jobs.JobContext(s, eng, "skip-test")
    eng.dispose()


def _runs(ctx: jobs.JobContext) -> dict[str, Any]:
    with ctx.engine.connect() as c:
        return {r.job: r for r in c.execute(select(jobs.job_runs).order_by(jobs.job_runs.c.id))}


def test_a_job_with_nothing_it_may_do_is_skipped_with_its_reason_and_others_still_run(ctx: jobs.JobContext) -> None:
    def unit(c: jobs.JobContext) -> None:
        raise jobs.JobSkipped("nothing to do here: no leader election in this process")

    assert jobs.run_job("idle", unit, ctx) == "skipped"
    assert jobs.run_named("retention", ctx) == "succeeded"
    rows = _runs(ctx)
    assert rows["idle"].status == "skipped" and rows["idle"].error is None and rows["idle"].finished_at is not None
    assert "no leader election" in rows["idle"].result
    assert rows["retention"].status == "succeeded"


@pytest.mark.parametrize(("job", "unit_class"), [("drift_check", "DriftCheckJob"),
                                                 ("policy_evaluation", "AlertEvaluationJob"),
                                                 ("retrain_check", "RetrainPolicyJob"),
                                                 ("promotion_watch", "PromotionWatchJob")])  # fmt: skip
def test_a_missing_dependency_is_a_failure_not_a_skip(
    ctx: jobs.JobContext, monkeypatch: pytest.MonkeyPatch, job: str, unit_class: str
) -> None:
    """Every unit is part of the one package and imported plainly (the drift check when it runs): a module
    that cannot be imported is a broken installation, recorded as ``failed`` with its traceback (never dressed up as ``skipped``)."""

    class Broken:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ModuleNotFoundError("No module named 'dl_no_such_dependency_xyz'", name="dl_no_such_dependency_xyz")

    if unit_class == "DriftCheckJob":  # imported when the job runs (pandas/Evidently stay out of the CLI)
        import driftloop.monitor.check

        monkeypatch.setattr(driftloop.monitor.check, unit_class, Broken)
    else:
        assert hasattr(jobs, unit_class), f"jobs imports {unit_class} directly"
        monkeypatch.setattr(jobs, unit_class, Broken)
    if job == "retrain_check":  # without a policy the unit returns before it needs the class
        ctx = jobs.JobContext(ctx.settings.model_copy(update={"retrain": _one_policy()}), ctx.engine, ctx.instance)
    assert jobs.run_named(job, ctx) == "failed"
    assert jobs.run_named("retention", ctx) == "succeeded"
    rows = _runs(ctx)
    assert "dl_no_such_dependency_xyz" in rows[job].error and rows[job].result is None
    assert rows["retention"].status == "succeeded"


def _one_policy() -> Any:
    from driftloop.settings.retrain import RetrainSettings

    return RetrainSettings.model_validate({"policies": [{
        "name": "p", "model_id": "m", "base_model": "/nonexistent", "trigger": {"condition": "drift.score > 0.5"}}]})  # fmt: skip


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
