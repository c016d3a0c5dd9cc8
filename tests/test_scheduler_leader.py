"""Leader election: two real daemons on one PostgreSQL, SIGKILL and a killed lock session; file lock on SQLite."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine, create_engine, text

from driftloop.leader import FileLeaderLock, LeaderElection, PostgresLeaderLock, current_leader, lock_for
from tests.helpers import stop_daemons
from tests.ingest_helpers import wait_for

KEY = 0x44524654


def _config(tmp_path: Path, url: str) -> Path:
    cfg = tmp_path / "daemon.yaml"
    cfg.write_text(yaml.safe_dump({
        "database": {"url": url},
        "scheduler": {"ingest": False, "drift_check_s": 0.5, "policy_evaluation_s": 0.5, "leader_retry_s": 0.3,
                      "leader_check_s": 0.5, "leader_timeout_s": 2},
    }))  # fmt: skip
    return cfg


def _start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "driftloop", "run", "--config", str(cfg), "--no-ingest", "--no-migrate"],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _runs(eng: Engine) -> list[Any]:
    with eng.connect() as c:
        return list(
            c.execute(text("select instance, started_at, finished_at, status from job_runs order by started_at"))
        )


def _leader_pid(eng: Engine) -> int | None:
    who = current_leader(eng, KEY)
    return int(who.split(" ")[0].rsplit(":", 1)[1]) if who else None


def _pid(instance: str) -> int:
    return int(instance.rsplit(":", 1)[1])


def _assert_one_leader_at_a_time(runs: list[Any]) -> None:
    """Runs grouped into consecutive stretches per instance; a stretch starts after the previous one ended."""
    stretches: list[list[Any]] = []
    for r in runs:
        if stretches and stretches[-1][-1].instance == r.instance:
            stretches[-1].append(r)
        else:
            stretches.append([r])
    for prev, nxt in itertools.pairwise(stretches):
        ends = [r.finished_at or r.started_at for r in prev]
        assert nxt[0].started_at > max(ends), f"{nxt[0].instance} started a job while {prev[0].instance} ran one"
    # and no instance comes back while another is leading in between, except after a real hand-over
    assert len(stretches) <= 3, [(s[0].instance, len(s)) for s in stretches]




def test_exactly_one_leader_and_failover_after_sigkill(pg_url: str, tmp_path: Path) -> None:
    cfg = _config(tmp_path, pg_url)
    eng = create_engine(pg_url)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_start(cfg, logs[0]), _start(cfg, logs[1])]
    by_pid = {p.pid: p for p in procs}
    try:
        wait_for(lambda: len(_runs(eng)) >= 6, 90, "the leader's first job runs")
        leader_pid = _leader_pid(eng)
        assert leader_pid in by_pid
        assert {_pid(r.instance) for r in _runs(eng)} == {leader_pid}, "a follower ran jobs"
        victim, survivor = by_pid[leader_pid], next(p for p in procs if p.pid != leader_pid)
        killed_at = datetime.now(UTC)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        wait_for(lambda: _leader_pid(eng) == survivor.pid, 60, "the follower to take the lock")
        wait_for(lambda: any(_pid(r.instance) == survivor.pid and r.status == "succeeded" for r in _runs(eng)),
                 60, "the new leader's first successful job run")  # fmt: skip
        runs = _runs(eng)
        assert {_pid(r.instance) for r in runs} == {leader_pid, survivor.pid}
        # a run the victim had in flight is not left 'running' forever
        assert not [r for r in runs if _pid(r.instance) == leader_pid and r.status == "running"]
        _assert_one_leader_at_a_time(runs)
        first_new = min(r.started_at for r in runs if _pid(r.instance) == survivor.pid)
        print(f"first job of the new leader {(first_new - killed_at).total_seconds():.1f}s after SIGKILL")
        survivor_log = logs[procs.index(survivor)].read_text()
        assert "is a FOLLOWER" in survivor_log and "is now the LEADER" in survivor_log
    finally:
        stop_daemons(*procs)
        eng.dispose()
    assert survivor.returncode == 0, logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
    assert "released the PostgreSQL advisory lock" in logs[procs.index(survivor)].read_text()


def test_a_leader_whose_lock_session_dies_steps_down(pg_url: str, tmp_path: Path) -> None:
    """pg_terminate_backend on the lock session (what a server restart or a DBA does): the leader stops its
    scheduler; whoever leads next starts only after the old one stopped."""
    cfg = _config(tmp_path, pg_url)
    eng = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_start(cfg, logs[0]), _start(cfg, logs[1])]
    try:
        wait_for(lambda: len(_runs(eng)) >= 4, 90, "the leader's first job runs")
        old = _leader_pid(eng)
        assert old in {p.pid for p in procs}
        with eng.connect() as c:
            killed = c.execute(text("select pg_terminate_backend(pid) from pg_stat_activity "
                                    "where application_name like :n"), {"n": f"driftloop-leader %:{old}"}).all()  # fmt: skip
        assert killed == [(True,)]
        old_log = logs[[p.pid for p in procs].index(old)]
        wait_for(lambda: "LOST leadership" in old_log.read_text(), 60, "the old leader to notice")
        wait_for(lambda: "scheduler stopped (leadership lost)" in old_log.read_text(), 60, "its scheduler to stop")
        n = len(_runs(eng))
        wait_for(lambda: _leader_pid(eng) is not None and len(_runs(eng)) >= n + 4, 60, "a leader running jobs again")
        _assert_one_leader_at_a_time(_runs(eng))
        assert all(p.poll() is None for p in procs), "losing the lock must not kill the daemon"
    finally:
        stop_daemons(*procs)
        eng.dispose()
    assert [p.returncode for p in procs] == [0, 0]


def test_election_in_threads_has_one_leader_and_hands_over(pg_url: str) -> None:
    state: dict[str, int] = {"a": 0, "b": 0}
    both = threading.Event()

    def election(name: str) -> LeaderElection:
        def up() -> None:
            state[name] += 1
            if sum(state.values()) > 1:
                both.set()

        def down() -> None:
            state[name] -= 1

        lock = PostgresLeaderLock(pg_url, KEY, instance=name, check_s=0.2, timeout_s=2)
        return LeaderElection(lock, name, up, down, retry_s=0.1, check_s=0.2, timeout_s=2, takeover_delay_s=0.5)

    stops = {n: threading.Event() for n in state}
    els = {n: election(n) for n in state}
    threads = {n: threading.Thread(target=els[n].run, args=(stops[n],), daemon=True) for n in state}
    for t in threads.values():
        t.start()
    try:
        wait_for(lambda: sum(state.values()) == 1, 30, "a leader")
        first = next(n for n, v in state.items() if v)
        assert els[first].is_leader and not els[next(n for n in state if n != first)].is_leader
        stops[first].set()  # graceful stop: steps down and releases the lock
        threads[first].join(30)
        assert state[first] == 0
        other = next(n for n in state if n != first)
        wait_for(lambda: state[other] == 1, 30, "the other to take over")
        assert not both.is_set(), "two leaders at once"
    finally:
        for s in stops.values():
            s.set()
        for t in threads.values():
            t.join(30)


def test_a_hung_lock_check_counts_as_lost() -> None:
    """A check that never answers (a half-open TCP connection) demotes the leader after timeout_s."""

    class HangingLock:
        hang = threading.Event()

        def try_acquire(self) -> bool:
            return True

        def still_held(self) -> bool:
            self.hang.wait()  # never set while the test runs
            return True

        def release(self) -> None:
            pass

        def describe(self) -> str:
            return "hanging lock"

    demoted = threading.Event()
    stop = threading.Event()

    def down() -> None:
        demoted.set()
        stop.set()

    el = LeaderElection(HangingLock(), "x", lambda: None, down,
                        retry_s=0.1, check_s=0.1, timeout_s=0.3)  # fmt: skip
    t = threading.Thread(target=el.run, args=(stop,), daemon=True)
    t.start()
    assert demoted.wait(30), "the leader never stepped down"
    t.join(30)
    assert not el.is_leader


def test_sqlite_uses_an_exclusive_file_lock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/dl.db"
    a, b = lock_for(url, KEY), lock_for(url, KEY)
    assert isinstance(a, FileLeaderLock) and a.path == f"{tmp_path}/dl.db.leader.lock"
    assert a.try_acquire() and not b.try_acquire()
    a.release()
    assert b.try_acquire() and not a.try_acquire()
    b.release()
    # another process is excluded too (flock is per open file, held until the process exits)
    code = f"from driftloop.leader import lock_for; print(lock_for({url!r}, 1).try_acquire())"
    assert a.try_acquire()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    a.release()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
