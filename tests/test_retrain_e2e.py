"""The improvement loop end to end on CPU, with a tiny model built here (no downloads).

A base model trained on domain A serves; traffic shifts to domain B through Kafka (Tansu); users mark
the answers bad and correct some of them. Monitoring sees the quality drop, the alert triggers the
retrain policy (queued, then run by the leader's worker), the LoRA candidate is trained in a subprocess, the paired-bootstrap gate compares it
with the champion on held-out recent traffic, and the promotion reaches the filesystem target and a
real local HTTP server that speaks vLLM's adapter endpoints. Then a deliberately bad candidate
(trained on shuffled responses) is rejected, and killing a training subprocess leaves a failed job
and an unchanged champion.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import driftloop.retrain.runner as runner_mod
from driftloop.monitor.alerts.engine import AlertEvaluationJob
from driftloop.monitor.check import DriftCheckJob
from driftloop.retrain.queue import RetrainWorker
from driftloop.retrain.registry import ModelRegistry
from driftloop.retrain.runner import RetrainPolicyJob, RetrainRunner, recover_jobs
from driftloop.retrain.tables import retrain_jobs
from driftloop.settings import load_settings
from driftloop.store.db import create_engine_from_url
from tests.alpaca import now_minus
from tests.helpers import stop_daemons
from tests.ingest_helpers import ingest_until_idle, produce_values, wait_for
from tests.retrain_helpers import run_retrain, toy_records
from tests.vllm_stub import VllmStub

pytestmark = pytest.mark.slow

WINDOW = 150


@pytest.fixture(scope="module")
def base_model(toy_base_model: Path) -> str:
    return str(toy_base_model)  # the session's toy model (tests/conftest.py)


def _settings(pg_url: str, kafka: str, topics: dict[str, str], tmp: Path, base: str, vllm_url: str,
              **training: Any) -> Any:  # fmt: skip
    return load_settings(
        None,
        database={"url": pg_url},
        data_dir=str(tmp / "data"),
        kafka={"bootstrap_servers": [kafka], "topics": [topics["logs"]], "dlq_topic": topics["dlq"],
               "group_id": f"g-{topics['logs']}"},
        monitor={"window": {"kind": "count", "size": WINDOW}, "reference": {"kind": "previous", "windows": 2},
                 "embeddings": {"enabled": False}, "reports": False, "language_sample": 0},
        alerts={"rules": [{"name": "quality-drop", "condition": "quality.feedback_positive_rate < 0.3",
                           "windows": 1, "of": 1}]},
        retrain={
            "targets": [{"name": "serving", "type": "filesystem", "path": str(tmp / "serving")},
                        {"name": "vllm", "type": "vllm", "url": vllm_url, "retries": 1, "backoff_s": 0.05}],
            "policies": [{
                "name": "toy-retrain", "model_id": "toy", "base_model": base,
                "trigger": {"alerts": ["quality-drop"]}, "min_new_samples": 100, "cooldown_minutes": 60,
                "data": {"eval_fraction": 0.2, "min_eval_samples": 30},
                "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
                "training": {"epochs": 4, "learning_rate": 3e-3, "batch_size": 16, "max_length": 96, **training},
                "gate": {"n_bootstrap": 1000, "min_examples": 20, "max_new_tokens": 24},
                "targets": ["serving", "vllm"],
            }],
        },
    )  # fmt: skip


def _traffic(n_a: int, n_b: int) -> list[dict[str, Any]]:
    """``n_a`` good domain-A records, then ``n_b`` domain-B records that users mark bad (60 % corrected)."""
    start = now_minus(3)
    a = toy_records("A", n_a, start=start, prefix="a", seed=1)
    b = toy_records("B", n_b, start=start + timedelta(seconds=n_a + 1), good=False, correction_rate=0.6,
                    prefix="b", seed=2)  # fmt: skip
    return a + b


def test_alert_triggers_retrain_gate_promotes_to_filesystem_and_vllm(
    pg_url: str, kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path, base_model: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    with VllmStub() as vllm:
        s = _settings(pg_url, kafka_bootstrap, topics, tmp_path, base_model, vllm.url)
        recs = _traffic(3 * WINDOW, 4 * WINDOW)
        produce_values(kafka_bootstrap, topics["logs"], [json.dumps(r).encode() for r in recs])
        stats = ingest_until_idle(s)
        eng = create_engine_from_url(pg_url)
        assert stats.stored >= len(recs) or _count(eng) == len(recs)
        # monitoring: windows checked, the quality alert fires on the domain-B windows
        checked = DriftCheckJob(s, eng).run_once()
        assert len([r for r in checked if r.status == "ok"]) >= 6
        events = AlertEvaluationJob(s, eng).run_once()
        assert any(e.rule == "quality-drop" and e.event == "fired" for e in events)

        # the policy job sees the alert and queues a retrain; the leader's worker runs all of it
        lines: list[str] = []
        runner = RetrainRunner(s, eng, "test-daemon", echo=lines.append)
        (d,) = RetrainPolicyJob(s, eng, "test-daemon").run_once()
        assert d.action == "queued", d.reason
        out = RetrainWorker(s, eng, "test-daemon", lambda: True, runner=runner).run_once()
        print("\n".join(lines))
        assert out is not None and out.job_id == d.job_id and out.status == "succeeded", out
        assert out.promoted, out.message
        gate = out.gate
        assert gate is not None and gate["promote"]
        ppl = next(c for c in gate["comparisons"] if c["metric"] == "perplexity" and c["suite"] == "heldout")
        print(f"perplexity on held-out domain B: champion {ppl['champion']:.1f} -> candidate {ppl['candidate']:.2f}, "
              f"relative reduction {ppl['improvement']:.3f} [{ppl['ci_low']:.3f}, {ppl['ci_high']:.3f}]")  # fmt: skip
        assert ppl["candidate"] < ppl["champion"] and ppl["ci_low"] > 0

        reg = ModelRegistry(eng)
        champ = reg.champion("toy")
        assert champ is not None and champ.id == out.version.id and champ.version == "v1"
        assert champ.parent_id == reg.find("toy", "v0").id and champ.dataset_hash and champ.job_id == out.job_id
        # filesystem target: `current` points at a copy of the new adapter
        cur = tmp_path / "serving" / "current"
        assert cur.is_symlink() and (cur / "adapter_config.json").exists()
        assert "v1" in os.readlink(cur)
        # the vLLM-compatible server loaded the adapter from the promoted path
        loads = [r for r in vllm.requests if r.path == "/v1/load_lora_adapter"]
        assert loads and loads[-1].json["lora_path"] == champ.adapter_path
        assert loads[-1].json["lora_name"] in vllm.loaded
        job = runner.job(out.job_id)
        assert job["status"] == "succeeded" and job["timings"]["train_eval_s"] > 0
        assert Path(job["logs_path"]).exists()

        # a deliberately bad candidate: the same data with responses shuffled across prompts
        real_build = runner_mod.build_snapshot

        def shuffled(*a: Any, **kw: Any) -> Any:
            snap = real_build(*a, **kw)
            resp = [r["response"] for r in snap.train]
            random.Random(0).shuffle(resp)
            bad = [dict(r, response=x) for r, x in zip(snap.train, resp, strict=True)]
            path = snap.path.parent / (snap.path.name + "-shuffled")
            path.mkdir(exist_ok=True)
            (path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
            (path / "eval.jsonl").write_text((snap.path / "eval.jsonl").read_text())
            snap.path, snap.train = path, bad
            return snap

        monkeypatch.setattr(runner_mod, "build_snapshot", shuffled)
        bad = run_retrain(s, eng, s.retrain.policies[0], {"kind": "manual", "note": "shuffled responses"}, runner)
        print("\n".join(lines[-2:]))
        assert bad.status == "succeeded" and not bad.promoted and bad.version is not None
        assert bad.version.status == "rejected"
        assert "perplexity" in bad.message and "rejected" in bad.message
        assert reg.champion("toy").id == champ.id  # unchanged
        assert "v1" in os.readlink(cur) and len(
            [r for r in vllm.requests if r.path == "/v1/load_lora_adapter"]
        ) == len(loads)
        gate_ev = [e for e in reg.events("toy", bad.version.id) if e["action"] == "gate_rejected"]
        assert gate_ev and "perplexity" in gate_ev[0]["reason"]
        eng.dispose()


def _count(eng: Any) -> int:
    from sqlalchemy import func

    from driftloop.store.models import interactions

    with eng.connect() as c:
        return int(c.execute(select(func.count()).select_from(interactions)).scalar_one())


def test_killing_the_training_subprocess_fails_the_job_and_keeps_the_champion(
    pg_url: str, kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path, base_model: str
) -> None:
    from tests.alpaca import store_records

    with VllmStub() as vllm:
        s = _settings(pg_url, kafka_bootstrap, topics, tmp_path, base_model, vllm.url, epochs=100)
        store_records(pg_url, _traffic(0, 400), topic="crash")
        eng = create_engine_from_url(pg_url)
        runner = RetrainRunner(s, eng, "daemon-1")
        policy = s.retrain.policies[0]
        result: dict[str, Any] = {}
        th = threading.Thread(target=lambda: result.update(out=run_retrain(s, eng, policy, {"kind": "manual"}, runner)))
        th.start()

        def training() -> bool:
            with eng.connect() as c:
                row = c.execute(select(retrain_jobs.c.pid, retrain_jobs.c.stage, retrain_jobs.c.message)).first()
            return bool(row and row.pid and row.stage == "training" and (row.message or "").startswith("step"))

        wait_for(training, 120, "training to make progress")
        with eng.connect() as c:
            pid = c.execute(select(retrain_jobs.c.pid)).scalar_one()
        os.kill(pid, signal.SIGKILL)
        th.join(120)
        out = result["out"]
        assert out.status == "failed" and "killed by signal 9" in out.message
        job = runner.job(out.job_id)
        assert job["status"] == "failed" and job["finished_at"] is not None and "champion is unchanged" in job["error"]
        reg = ModelRegistry(eng)
        assert reg.champion("toy").version == "v0" and [v.version for v in reg.versions("toy")] == ["v0"]
        assert not any(r.path == "/v1/load_lora_adapter" for r in vllm.requests)
        assert not (tmp_path / "serving" / "current").exists()
        # the same runner (the daemon) still works: a short run completes
        s2 = _settings(pg_url, kafka_bootstrap, topics, tmp_path, base_model, vllm.url, epochs=1, max_steps=3)
        again = run_retrain(s2, eng, s2.retrain.policies[0], {"kind": "manual"}, RetrainRunner(s2, eng, "daemon-1"))
        assert again.status == "succeeded" and again.version is not None

        # a daemon killed mid-run leaves a `running` row: the next daemon marks it failed
        with eng.begin() as c:
            jid = c.execute(retrain_jobs.insert().returning(retrain_jobs.c.id), {
                "policy": "toy-retrain", "model_id": "toy", "status": "running", "progress": 0.4,
                "cancel_requested": False, "instance": "other-host:1", "created_at": datetime.now(UTC),
            }).scalar_one()  # fmt: skip
        assert recover_jobs(eng, "daemon-2") == 1
        row = runner.job(jid)
        assert row["status"] == "failed" and "abandoned" in row["error"]
        eng.dispose()


def test_cancel_stops_training(pg_url: str, kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path,
                               base_model: str) -> None:  # fmt: skip
    from driftloop.retrain.runner import request_cancel
    from tests.alpaca import store_records

    s = _settings(pg_url, kafka_bootstrap, topics, tmp_path, base_model, "http://127.0.0.1:9", epochs=100)
    store_records(pg_url, _traffic(0, 400), topic="cancel")
    eng = create_engine_from_url(pg_url)
    runner = RetrainRunner(s, eng, "daemon-1")
    result: dict[str, Any] = {}
    th = threading.Thread(target=lambda: result.update(out=run_retrain(s, eng, s.retrain.policies[0], {"kind": "manual"},
                                                                       runner)))  # fmt: skip
    th.start()
    wait_for(lambda: _stage(eng) == "training", 120, "training")
    time.sleep(1.0)
    with eng.connect() as c:
        jid = c.execute(select(retrain_jobs.c.id)).scalar_one()
    assert request_cancel(eng, jid) == "cancelling"
    th.join(120)
    assert result["out"].status == "cancelled"
    assert runner.job(jid)["status"] == "cancelled"
    assert ModelRegistry(eng).champion("toy").version == "v0"
    eng.dispose()


def _stage(eng: Any) -> str | None:
    with eng.connect() as c:
        return c.execute(select(retrain_jobs.c.stage)).scalar()


def test_daemon_survives_a_killed_training_subprocess(pg_url: str, kafka_bootstrap: str, topics: dict[str, str],
                                                      tmp_path: Path, base_model: str) -> None:  # fmt: skip
    """`driftloop run` with a triggered policy: SIGKILL the trainer; the daemon keeps running its jobs."""
    import subprocess
    import sys

    import yaml
    from sqlalchemy import insert, text

    from driftloop.monitor.alerts.tables import alerts
    from tests.alpaca import store_records

    s = _settings(pg_url, kafka_bootstrap, topics, tmp_path, base_model, "http://127.0.0.1:9", epochs=100)
    cfg = s.model_dump(mode="json", include={"database", "kafka", "alerts", "retrain", "data_dir"})
    cfg["scheduler"] = {"ingest": False, "drift_check_s": 0, "policy_evaluation_s": 0, "retention_s": 0,
                        "promotion_watch_s": 0, "retrain_check_s": 1, "retrain_worker_s": 1,
                        "leader_retry_s": 0.5}  # fmt: skip
    cfg["api"] = {"enabled": False}
    path = tmp_path / "daemon.yaml"
    path.write_text(yaml.safe_dump(cfg))
    store_records(pg_url, _traffic(0, 400), topic="daemon")
    eng = create_engine_from_url(pg_url)
    now = datetime.now(UTC)
    with eng.begin() as c:
        c.execute(insert(alerts), {"rule": "quality-drop", "group_key": "toy", "model_id": "toy", "segment": "",
                                   "severity": "critical", "state": "fired", "condition": "x", "message": "m",
                                   "fired_at": now, "last_evaluated_at": now, "notify_count": 0})  # fmt: skip
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen([sys.executable, "-m", "driftloop", "run", "--config", str(path)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip

    def q(sql: str) -> list[Any]:
        with eng.connect() as c:
            return list(c.execute(text(sql)).all())

    try:
        wait_for(lambda: bool(q("select 1 from retrain_jobs where stage = 'training' and message like 'step%'")),
                 180, "the daemon's retrain job to train")  # fmt: skip
        pid = q("select pid from retrain_jobs")[0][0]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: q("select status from retrain_jobs")[0][0] == "failed", 60, "the job to be marked failed")
        n_runs = q("select count(*) from job_runs where job = 'retrain_check'")[0][0]
        # the daemon carries on: later policy checks run (and are held back by the cooldown)
        wait_for(lambda: q("select count(*) from job_runs where job = 'retrain_check'")[0][0] >= n_runs + 2, 60,
                 "further retrain_check runs")  # fmt: skip
        assert proc.poll() is None, log.read_text()[-3000:]
        later = q("select result from job_runs where job = 'retrain_check' and status = 'succeeded' order by id desc")
        assert "cooldown" in later[0][0], later[0][0]
        (err,) = q("select error from retrain_jobs")[0]
        assert "killed by signal 9" in err and "champion is unchanged" in err
        assert [r[0] for r in q("select version from model_versions")] == ["v0"]
    finally:
        stop_daemons(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]
    eng.dispose()
