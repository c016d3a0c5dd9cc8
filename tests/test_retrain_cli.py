"""``driftloop retrain ...`` and ``driftloop models ...`` against PostgreSQL, including the manual approval path."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from driftloop.cli import app
from driftloop.retrain.queue import RetrainWorker, enqueue
from driftloop.retrain.registry import ModelRegistry
from driftloop.retrain.runner import RetrainRunner
from driftloop.settings import load_settings
from driftloop.store.db import create_engine_from_url
from tests.alpaca import store_records
from tests.ingest_helpers import wait_for
from tests.retrain_helpers import fake_training_result, toy_records


def _config(tmp: Path, pg_url: str, approval: str = "manual") -> Path:
    cfg = {
        "database": {"url": pg_url},
        "data_dir": str(tmp / "data"),
        "alerts": {"rules": [{"name": "quality-drop", "condition": "quality.feedback_positive_rate < 0.3"}]},
        "retrain": {
            "targets": [{"name": "serving", "type": "filesystem", "path": str(tmp / "serving")}],
            "policies": [{"name": "toy-retrain", "model_id": "toy", "base_model": str(tmp / "base"),
                          "trigger": {"alerts": ["quality-drop"]}, "approval": approval,
                          "data": {"min_eval_samples": 20}, "targets": ["serving"]}],
        },
    }  # fmt: skip
    p = tmp / "driftloop.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _fake_training(monkeypatch: pytest.MonkeyPatch, better: bool) -> None:
    """Replace the subprocess with its result (what the worker writes): the gate and registry run for real."""
    monkeypatch.setattr(RetrainRunner, "_train_subprocess",
                        lambda self, job_id, work, timeout_s: fake_training_result(work, job_id, better))  # fmt: skip


def _leader(s: Any, eng: Any) -> RetrainWorker:
    """The worker of the daemon that leads (here: always)."""
    return RetrainWorker(s, eng, "leader", lambda: True)


def test_manual_approval_path_and_model_commands(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path, pg_url)
    store_records(pg_url, toy_records("B", 300, start=datetime.now(UTC) - timedelta(hours=1), good=False), "t")
    cli = CliRunner()
    r = cli.invoke(app, ["retrain", "run", "nope", "--config", str(cfg)])
    assert r.exit_code == 2 and "no retrain policy named 'nope'" in r.output
    r = cli.invoke(app, ["retrain", "run", "toy-retrain", "--config", str(cfg)])
    assert r.exit_code == 1 and "not triggered" in r.output and "--force" in r.output

    _fake_training(monkeypatch, better=True)
    r = cli.invoke(app, ["retrain", "run", "toy-retrain", "--force", "--config", str(cfg)])
    assert r.exit_code == 0 and "job 1: queued" in r.output and "retrain status 1" in r.output, r.output
    r = cli.invoke(app, ["retrain", "run", "toy-retrain", "--force", "--config", str(cfg)])
    assert r.exit_code == 1 and "job 1 of toy-retrain is already queued" in r.output, r.output
    s = load_settings(cfg)
    eng = create_engine_from_url(s.database.url)
    reg = ModelRegistry(eng)
    assert reg.versions("toy") == []  # the CLI only queued: nothing ran
    out = _leader(s, eng).run_once()
    assert out.job_id == 1 and out.status == "succeeded"
    assert "waits for approval" in out.message and "models approve toy v1" in out.message
    assert reg.find("toy", "v1").status == "pending_approval" and reg.champion("toy").version == "v0"
    assert not (tmp_path / "serving" / "current").exists()

    r = cli.invoke(app, ["models", "list", "--config", str(cfg)])
    assert r.exit_code == 0 and "pending_approval" in r.output and "champion" in r.output, r.output
    r = cli.invoke(app, ["models", "show", "toy", "v1", "--config", str(cfg)])
    assert r.exit_code == 0 and "perplexity" in r.output and "gate_passed" in r.output, r.output
    r = cli.invoke(app, ["models", "approve", "toy", "v0", "--config", str(cfg)])
    assert r.exit_code == 1 and "not pending_approval" in r.output
    r = cli.invoke(app, ["models", "approve", "toy", "v1", "--actor", "alice", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert reg.champion("toy").version == "v1" and "v1" in os.readlink(tmp_path / "serving" / "current")
    assert [e["actor"] for e in reg.events("toy", reg.find("toy", "v1").id) if e["action"] in ("approved", "promoted")] \
        == ["alice", "alice"]  # fmt: skip

    # a worse candidate is rejected by the gate and cannot be approved; --wait follows the job to its end
    _fake_training(monkeypatch, better=False)
    worker = threading.Thread(target=lambda: wait_for(lambda: _leader(s, eng).run_once() is not None, 60, "a job"))
    worker.start()
    r = cli.invoke(app, ["retrain", "run", "toy-retrain", "--force", "--wait", "--config", str(cfg)])
    worker.join(60)
    assert r.exit_code == 0 and ": succeeded done 100% gate rejected v2" in r.output, r.output
    assert reg.find("toy", "v2").status == "rejected"
    r = cli.invoke(app, ["models", "approve", "toy", "v2", "--config", str(cfg)])
    assert r.exit_code == 1 and "rejected" in r.output
    r = cli.invoke(app, ["models", "reject", "toy", "v2", "--config", str(cfg)])
    assert r.exit_code == 1 and "toy v2 is rejected, not pending_approval" in r.output, r.output
    r = cli.invoke(app, ["models", "promote", "toy", "v9", "--config", str(cfg)])
    assert r.exit_code == 1 and "has no version 'v9'" in r.output, r.output
    r = cli.invoke(app, ["models", "promote", "toy", "v1", "--config", str(cfg)])
    assert r.exit_code == 1 and "toy v1 is already the champion" in r.output, r.output

    r = cli.invoke(app, ["models", "rollback", "toy", "--reason", "bad answers", "--config", str(cfg)])
    assert r.exit_code == 0 and "v0 is the champion again" in r.output
    assert os.readlink(tmp_path / "serving" / "current").endswith("_base")
    r = cli.invoke(app, ["retrain", "status", "--config", str(cfg)])
    assert r.exit_code == 0 and r.output.count("succeeded") == 2, r.output
    r = cli.invoke(app, ["retrain", "status", "1", "--config", str(cfg)])
    assert r.exit_code == 0 and "logs:" in r.output


def test_cancel_a_queued_job_and_unknown_job(pg_url: str, tmp_path: Path) -> None:
    cfg = _config(tmp_path, pg_url)
    s = load_settings(cfg)
    runner = RetrainRunner(s, create_engine_from_url(s.database.url), "test")
    jid = enqueue(runner.engine, s.retrain.policies[0], {"kind": "manual"}, "test").job_id
    cli = CliRunner()
    r = cli.invoke(app, ["retrain", "cancel", str(jid), "--config", str(cfg)])
    assert r.exit_code == 0 and "cancelled" in r.output
    assert runner.job(jid)["status"] == "cancelled"
    r = cli.invoke(app, ["retrain", "cancel", "999", "--config", str(cfg)])
    assert r.exit_code == 1 and "no retrain job 999" in r.output
    r = cli.invoke(app, ["retrain", "--help"])
    assert r.exit_code == 0 and "cancel" in r.output
