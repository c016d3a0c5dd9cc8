"""Leader election: exactly one daemon instance runs the scheduled jobs.

APScheduler 3 must not share a job store between running schedulers, yet ingestion scales out by
running several daemons in one consumer group. Each daemon therefore competes for a PostgreSQL
advisory lock (``pg_try_advisory_lock(leader_lock_id)``) taken on a dedicated connection and held
for as long as that session lives:

* Followers retry every ``leader_retry_s``. When the leader process dies its socket closes, the
  session ends, the lock is released and a follower gets it on its next try. If the leader's host
  dies or is cut off, the server notices through TCP keepalives that the lock session sets on the
  server side (idle ``leader_check_s + leader_timeout_s + 2`` s, then 3 probes 1 s apart).
* The leader checks every ``leader_check_s`` that its session still holds the lock (a query on
  ``pg_locks``). A check that fails, or takes longer than ``leader_timeout_s``, makes it step down:
  its scheduler stops at once.
* A new leader waits ``takeover_delay_s = leader_check_s + leader_timeout_s`` after getting the
  lock before it starts jobs. An old leader whose session was lost (killed backend, server
  restart, network partition) has stopped by then, so two schedulers never run side by side.

On SQLite (embedded, one host) an exclusive ``flock`` on ``<database>.leader.lock`` plays the same
role; the kernel drops it when the process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("driftloop.leader")


class LeaderLock(Protocol):
    """A lock that at most one process holds; ``still_held`` may block up to the caller's timeout."""

    def try_acquire(self) -> bool: ...
    def still_held(self) -> bool: ...
    def release(self) -> None: ...
    def describe(self) -> str: ...


def _key_parts(key: int) -> tuple[int, int]:
    """How ``pg_locks`` shows a bigint advisory key: (classid, objid) = high and low 32 bits."""
    u = key & 0xFFFFFFFFFFFFFFFF
    return u >> 32, u & 0xFFFFFFFF


class PostgresLeaderLock:
    """``pg_try_advisory_lock`` on a connection of its own (the lock lives as long as the session)."""

    def __init__(self, url: str, key: int, *, instance: str = "", check_s: float = 1.0, timeout_s: float = 3.0) -> None:
        self.url = url.replace("postgresql+psycopg://", "postgresql://")
        self.key = key
        self.instance = instance
        self.check_s = check_s
        self.timeout_s = timeout_s
        self.conn: Any = None

    def describe(self) -> str:
        return f"PostgreSQL advisory lock {self.key}"

    def _connect(self) -> Any:
        import psycopg

        t = max(1, int(self.timeout_s))
        conn = psycopg.connect(
            self.url, autocommit=True, connect_timeout=max(2, t),
            application_name=f"driftloop-leader {self.instance}"[:63],
            # client side: a dead server or network fails our checks within about timeout_s
            keepalives=1, keepalives_idle=t, keepalives_interval=1, keepalives_count=3,
            tcp_user_timeout=int(self.timeout_s * 1000),
        )  # fmt: skip
        # server side: a dead leader host is detected (and its lock released) after
        # idle + 3 probes, which is longer than the leader needs to notice and step down.
        idle = int(self.check_s + self.timeout_s) + 2
        for sql in (f"SET tcp_keepalives_idle = {idle}", "SET tcp_keepalives_interval = 1",
                    "SET tcp_keepalives_count = 3", f"SET statement_timeout = {int(self.timeout_s * 1000)}"):  # fmt: skip
            conn.execute(sql)
        return conn

    def try_acquire(self) -> bool:
        if self.conn is None or self.conn.closed:
            self.conn = self._connect()
        got = self.conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]
        if not got:
            self.release()
        return bool(got)

    def still_held(self) -> bool:
        hi, lo = _key_parts(self.key)
        try:
            row = self.conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                " AND classid = %s AND objid = %s AND objsubid = 1 AND granted", (hi, lo)).fetchone()  # fmt: skip
            return bool(row and row[0])
        except Exception as e:
            log.error("leader lock connection failed: %s", str(e).strip() or type(e).__name__)
            return False

    def release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()  # ending the session releases the advisory lock


class FileLeaderLock:
    """An exclusive ``flock`` (SQLite deployments: one host)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def describe(self) -> str:
        return f"file lock {self.path}"

    def try_acquire(self) -> bool:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def still_held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(fd)


def lock_for(db_url: str, key: int, *, instance: str = "", check_s: float = 1.0,
             timeout_s: float = 3.0) -> PostgresLeaderLock | FileLeaderLock:  # fmt: skip
    """The right lock for the database in ``db_url``."""
    if db_url.startswith("postgresql"):
        return PostgresLeaderLock(db_url, key, instance=instance, check_s=check_s, timeout_s=timeout_s)
    path = db_url.split("///", 1)[1] if "///" in db_url else ""
    if not path or path == ":memory:":
        path = "driftloop-data/driftloop.db"
    return FileLeaderLock(path + ".leader.lock")


def _bounded(fn: Callable[[], bool], timeout_s: float) -> bool:
    """``fn()`` or False when it has not answered within ``timeout_s`` (a hung socket)."""
    box: list[bool] = []
    t = threading.Thread(target=lambda: box.append(fn()), name="driftloop-leader-check", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        log.error("leader lock check did not answer within %.1fs", timeout_s)
        return False
    return bool(box and box[0])


class LeaderElection:
    """Run in a thread: acquire, wait the takeover delay, keep checking; call back on election/demotion."""

    def __init__(self, lock: LeaderLock, instance: str, on_elected: Callable[[], None],
                 on_demoted: Callable[[], None], *, retry_s: float = 1.0, check_s: float = 1.0,
                 timeout_s: float = 3.0, takeover_delay_s: float = 0.0) -> None:  # fmt: skip
        self.lock = lock
        self.instance = instance
        self.on_elected = on_elected
        self.on_demoted = on_demoted
        self.retry_s = retry_s
        self.check_s = check_s
        self.timeout_s = timeout_s
        self.takeover_delay_s = takeover_delay_s
        self._leader = threading.Event()

    @property
    def is_leader(self) -> bool:
        return self._leader.is_set()

    def run(self, stop: threading.Event) -> None:
        logged_follower = False
        while not stop.is_set():
            try:
                acquired = self.lock.try_acquire()
            except Exception as e:
                log.warning("leader election: cannot reach the database (%s); retrying", str(e).strip())
                acquired = False
            if not acquired:
                if not logged_follower:
                    log.info("instance %s is a FOLLOWER: another instance holds the %s", self.instance,
                             self.lock.describe())  # fmt: skip
                    logged_follower = True
                stop.wait(self.retry_s)
                continue
            logged_follower = False
            if self.takeover_delay_s:
                log.info("instance %s got the %s; starting jobs in %.1fs (lets a lost leader stop first)",
                         self.instance, self.lock.describe(), self.takeover_delay_s)  # fmt: skip
                if stop.wait(self.takeover_delay_s) or not _bounded(self.lock.still_held, self.timeout_s):
                    self.lock.release()
                    continue
            self._lead(stop)

    def _lead(self, stop: threading.Event) -> None:
        self._leader.set()
        log.info("instance %s is now the LEADER (runs the scheduled jobs)", self.instance)
        try:
            self.on_elected()
        except Exception:
            log.exception("starting the scheduler failed; stepping down")
            self._step_down()
            stop.wait(self.retry_s)
            return
        while not stop.wait(self.check_s):
            if not _bounded(self.lock.still_held, self.timeout_s):
                log.error("instance %s LOST leadership; stopping its scheduler", self.instance)
                break
        self._step_down()

    def _step_down(self) -> None:
        self._leader.clear()
        try:
            self.on_demoted()
        except Exception:
            log.exception("stopping the scheduler failed")
        finally:
            self.lock.release()
            log.info("instance %s released the %s", self.instance, self.lock.describe())


def current_leader(engine: Any, key: int) -> str | None:
    """The instance holding the leader lock (PostgreSQL only; from ``pg_stat_activity``)."""
    from sqlalchemy import text

    if engine.dialect.name != "postgresql":
        return None
    hi, lo = _key_parts(key)
    with engine.connect() as c:
        row = c.execute(text(
            "SELECT a.application_name, a.client_addr FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.classid = :hi AND l.objid = :lo AND l.objsubid = 1 AND l.granted"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
            {"hi": hi, "lo": lo}).first()  # fmt: skip
    if row is None:
        return None
    name = (row[0] or "").removeprefix("driftloop-leader ").strip() or "?"
    return f"{name} (from {row[1] or 'local socket'})"
