"""The retrain queue (issue 13): one active job per policy, decided by the database; only the leader runs jobs.

* two processes that enqueue the same policy at the same moment get one job between them;
* a claim holds its row with ``FOR UPDATE SKIP LOCKED``: a second claimer gets nothing, without waiting;
* a follower (or a process without leader election) never claims; of two ``driftloop run`` daemons on
  one database only the leader runs the retrain.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select, text

from driftloop.jobs import JobContext, JobSkipped, retrain_worker_once, run_job
from driftloop.leader import LeaderElection, PostgresLeaderLock
from driftloop.retrain.queue import claim, claim_next, enqueue
from driftloop.retrain.runner import RetrainRunner, request_cancel
from driftloop.retrain.tables import retrain_jobs
from driftloop.settings import load_settings
from driftloop.settings.retrain import PolicySettings
from driftloop.store.db import create_engine_from_url
from tests.alpaca import store_records
from tests.helpers import stop_daemons
from tests.ingest_helpers import wait_for
from tests.retrain_helpers import fake_training_result, toy_records

ROUNDS = 20


def _policy(name: str = "p") -> PolicySettings:
    return PolicySettings(name=name, model_id="toy", base_model="/models/base", trigger={"alerts": ["a"]})


def _enqueue_rounds(url: str, barrier: Any, out: Any) -> None:
    """Child process: in each round, wait for the other process, then enqueue the round's policy."""
    eng = create_engine_from_url(url)
    got = []
    for r in range(ROUNDS):
        barrier.wait(timeout=60)
        q = enqueue(eng, _policy(f"race-{r}"), {"kind": "test"}, f"proc:{os.getpid()}")
        got.append((r, q.job_id, q.created))
    out.put(got)
    eng.dispose()


def test_concurrent_enqueue_from_two_processes_yields_one_job(pg_url: str) -> None:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_enqueue_rounds, args=(pg_url, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    eng = create_engine_from_url(pg_url)
    with eng.connect() as c:
        rows = c.execute(select(retrain_jobs.c.policy, retrain_jobs.c.id, retrain_jobs.c.status)).all()
    eng.dispose()
    assert len(rows) == ROUNDS and {r.status for r in rows} == {"queued"}
    by_policy = {r.policy: r.id for r in rows}
    for r in range(ROUNDS):
        (a_id, a_new), (b_id, b_new) = ((j, c) for rr, j, c in results[0] + results[1] if rr == r)
        # both processes name the same job; exactly one of them created it
        assert a_id == b_id == by_policy[f"race-{r}"] and a_new != b_new, (r, results)


def test_enqueue_returns_the_active_job_and_queues_again_once_it_ended(pg_url: str, sqlite_url: str) -> None:
    for url in (pg_url, sqlite_url):
        eng = create_engine_from_url(url)
        first = enqueue(eng, _policy(), {"kind": "test"}, "test")
        again = enqueue(eng, _policy(), {"kind": "test"}, "test")
        assert first.created and not again.created and again.job_id == first.job_id and again.status == "queued"
        assert enqueue(eng, _policy("other"), {}, "test").created  # another policy has its own slot
        assert claim(eng, "leader") == first.job_id
        running = enqueue(eng, _policy(), {}, "test")
        assert not running.created and running.job_id == first.job_id and running.status == "running"
        assert request_cancel(eng, first.job_id) == "cancelling"
        with eng.begin() as c:  # what the runner records when it stops
            c.execute(retrain_jobs.update().where(retrain_jobs.c.id == first.job_id).values(status="cancelled"))
        nxt = enqueue(eng, _policy(), {}, "test")
        assert nxt.created and nxt.job_id != first.job_id
        assert request_cancel(eng, nxt.job_id) == "cancelled"  # queued: cancelled at once, never claimed
        assert claim(eng, "leader") not in (nxt.job_id, first.job_id)
        eng.dispose()


def test_a_held_claim_is_skipped_not_waited_for(pg_url: str) -> None:
    eng = create_engine_from_url(pg_url)
    only = enqueue(eng, _policy(), {}, "test").job_id
    with eng.connect() as a, eng.connect() as b:
        ta = a.begin()
        assert claim_next(a, "leader-a") == only  # row locked until ta ends
        tb = b.begin()
        # without SKIP LOCKED this would block on a's lock (and fail on the lock timeout)
        b.execute(text("SET LOCAL lock_timeout = '5s'"))
        assert claim_next(b, "leader-b") is None
        tb.rollback()
        ta.rollback()  # a gives the job back ...
        tb = b.begin()
        assert claim_next(b, "leader-b") == only  # ... and the next claimer gets it
        tb.commit()
    with eng.connect() as c:
        assert c.execute(select(retrain_jobs.c.instance).where(retrain_jobs.c.id == only)).scalar() == "leader-b"
    eng.dispose()


@pytest.fixture
def leaders(pg_url: str) -> Iterator[list[tuple[str, LeaderElection, threading.Event]]]:
    """Two instances running leader election on one database (a private lock key)."""
    key = random.randrange(1, 2**62)
    stop = threading.Event()
    out = []
    threads = []
    for name in ("instance-a", "instance-b"):
        elected = threading.Event()
        el = LeaderElection(PostgresLeaderLock(pg_url, key, instance=name, check_s=0.2, timeout_s=2.0), name,
                            elected.set, elected.clear, retry_s=0.1, check_s=0.2)  # fmt: skip
        threads.append(threading.Thread(target=el.run, args=(stop,), daemon=True))
        out.append((name, el, elected))
    for t in threads:
        t.start()
    yield out
    stop.set()
    for t in threads:
        t.join(10)


def test_only_the_leader_claims(pg_url: str, tmp_path: Path, leaders: list[Any],
                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    s = load_settings(None, database={"url": pg_url}, data_dir=str(tmp_path / "data"),
                      alerts={"rules": [{"name": "a", "condition": "quality.feedback_positive_rate < 0.3"}]},
                      retrain={"policies": [{"name": "p", "model_id": "toy", "base_model": str(tmp_path / "base"),
                                             "trigger": {"alerts": ["a"]}, "approval": "manual",
                                             "data": {"min_eval_samples": 20}}]})  # fmt: skip
    store_records(pg_url, toy_records("B", 300, start=datetime.now(UTC) - timedelta(hours=1), good=False), "t")
    monkeypatch.setattr(RetrainRunner, "_train_subprocess", lambda self, jid, work, t: fake_training_result(work, jid))
    eng = create_engine_from_url(pg_url)
    wait_for(lambda: any(el.is_leader for _, el, _ in leaders), 30, "a leader")
    (leader,) = [x for x in leaders if x[1].is_leader]
    (follower,) = [x for x in leaders if not x[1].is_leader]
    jid = enqueue(eng, s.retrain.policies[0], {"kind": "test"}, "test").job_id

    def ctx(who: Any) -> JobContext:
        return JobContext(s, eng, who[0], is_leader=lambda: who[1].is_leader)

    # the follower: the job fence refuses the run, and its worker claims nothing when asked directly
    assert run_job("retrain_worker", retrain_worker_once, ctx(follower)) == "skipped"
    assert retrain_worker_once(ctx(follower)) == "no queued retrain job"
    # a process without leader election (`driftloop jobs run`, an API thread) never claims
    with pytest.raises(JobSkipped, match="only by the elected leader"):
        retrain_worker_once(JobContext(s, eng, "cli"))
    assert RetrainRunner.read_job(eng, jid)["status"] == "queued"
    # the runner refuses a job nobody claimed for it
    assert RetrainRunner(s, eng, follower[0]).execute(jid).status == "failed"
    assert RetrainRunner.read_job(eng, jid)["status"] == "queued"

    assert run_job("retrain_worker", retrain_worker_once, ctx(leader)) == "succeeded"
    row = RetrainRunner.read_job(eng, jid)
    assert row["status"] == "succeeded" and row["instance"] == leader[0], row
    assert row["claimed_at"] is not None and row["heartbeat_at"] is not None and row["requested_by"] == "test"
    eng.dispose()


FAKE_PYTHON = """#!{python}
# stands in for `python -m driftloop.retrain.worker WORK_DIR`: writes the prepared result
import shutil, sys
from pathlib import Path
work = Path(sys.argv[-1])
(work / "adapter").mkdir(exist_ok=True)
(work / "adapter" / "adapter_config.json").write_text("{{}}")
shutil.copy({result!r}, work / "result.json")
"""


def test_of_two_daemons_only_the_leader_runs_the_retrain(pg_url: str, tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    result.write_text(json.dumps(fake_training_result(tmp_path / "scratch", 1)))
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable, result=str(result)))
    fake.chmod(0o755)
    cfg = {
        "database": {"url": pg_url}, "data_dir": str(tmp_path / "data"), "api": {"enabled": False},
        "alerts": {"rules": [{"name": "a", "condition": "quality.feedback_positive_rate < 0.3"}]},
        "scheduler": {"ingest": False, "drift_check_s": 0, "policy_evaluation_s": 0, "retention_s": 0,
                      "retrain_check_s": 0, "promotion_watch_s": 0, "retrain_worker_s": 0.2,
                      "leader_retry_s": 0.2, "leader_check_s": 0.2, "leader_timeout_s": 1.0,
                      "leader_lock_id": random.randrange(1, 2**62)},
        "retrain": {"python": str(fake), "policies": [{
            "name": "p", "model_id": "toy", "base_model": str(tmp_path / "base"), "trigger": {"alerts": ["a"]},
            "approval": "manual", "data": {"min_eval_samples": 20}}]},
    }  # fmt: skip
    path = tmp_path / "daemon.yaml"
    path.write_text(yaml.safe_dump(cfg))
    store_records(pg_url, toy_records("B", 300, start=datetime.now(UTC) - timedelta(hours=1), good=False), "t")
    eng = create_engine_from_url(pg_url)

    def q(sql: str) -> list[Any]:
        with eng.connect() as c:
            return list(c.execute(text(sql)).all())

    procs = []
    for name in ("daemon-a", "daemon-b"):
        log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115 - closed by the child's exit
        procs.append(subprocess.Popen([sys.executable, "-m", "driftloop", "run", "--config", str(path)],
                                      stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
    try:
        # both are up, one leads: the leader's worker is polling the queue
        wait_for(lambda: bool(q("select 1 from job_runs where job = 'retrain_worker'")), 60, "a worker run")
        (leader,) = {r[0] for r in q("select instance from job_runs where job = 'retrain_worker'")}
        jid = enqueue(eng, load_settings(path).retrain.policies[0], {"kind": "test"}, "test").job_id
        wait_for(lambda: q(f"select status from retrain_jobs where id = {jid}")[0][0] == "succeeded", 60,
                 "the queued job to be run")  # fmt: skip
        assert q(f"select instance from retrain_jobs where id = {jid}")[0][0] == leader
        assert q("select version, status from model_versions where version = 'v1'") == [("v1", "pending_approval")]
        # the follower is alive and never ran the worker
        assert all(p.poll() is None for p in procs)
        assert {r[0] for r in q("select distinct instance from job_runs")} == {leader}
    finally:
        stop_daemons(*procs)
    eng.dispose()
    assert [p.returncode for p in procs] == [0, 0], [(tmp_path / f"daemon-{n}.log").read_text()[-2000:] for n in "ab"]
