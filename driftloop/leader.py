"""Leader election: exactly one daemon instance runs the scheduled jobs.

APScheduler 3 must not share a job store between running schedulers, yet ingestion scales out by
running several daemons in one consumer group. So each daemon competes for a PostgreSQL advisory
lock held on a dedicated connection: the holder runs the scheduler, the others retry every
``leader_retry_s``. If the leader dies its session ends, the lock is released and a follower takes
over within about one retry interval. The leader checks its lock connection every
``leader_check_s`` and steps down (stops its scheduler) as soon as the connection is gone — a
leader cut off from the database cannot run jobs against it anyway.

On SQLite (embedded, one host) an exclusive ``flock`` on a file next to the database plays the
same role.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("driftloop.leader")


class PostgresLeaderLock:
    """``pg_try_advisory_lock`` on a connection of its own."""

    def __init__(self, url: str, key: int) -> None:
        self.url = url.replace("postgresql+psycopg://", "postgresql://")
        self.key = key
        self.conn: Any = None

    def try_acquire(self) -> bool:
        import psycopg

        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                        application_name="driftloop-leader")  # fmt: skip
        got = self.conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]
        if not got:
            self.release()
        return bool(got)

    def still_held(self) -> bool:
        """The lock lives as long as its session: a live connection means we still hold it."""
        try:
            self.conn.execute("SELECT 1").fetchone()
            return True
        except Exception as e:
            log.error("lost the leader lock connection: %s", e)
            return False

    def release(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()  # closing the session releases the advisory lock
        self.conn = None


class FileLeaderLock:
    """An exclusive ``flock`` (SQLite deployments: one host)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

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
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
                os.close(self.fd)
        self.fd = None


def lock_for(db_url: str, key: int) -> PostgresLeaderLock | FileLeaderLock:
    """The right lock for the database in ``db_url``."""
    if db_url.startswith("postgresql"):
        return PostgresLeaderLock(db_url, key)
    path = db_url.split("///", 1)[1] if "///" in db_url else "driftloop.db"
    return FileLeaderLock(path + ".leader.lock")


class LeaderElection:
    """Runs in a thread: acquire, keep checking, call back on election and demotion."""

    def __init__(self, lock: PostgresLeaderLock | FileLeaderLock, instance: str, on_elected: Callable[[], None],
                 on_demoted: Callable[[], None], retry_s: float = 1.0, check_s: float = 2.0) -> None:  # fmt: skip
        self.lock = lock
        self.instance = instance
        self.on_elected = on_elected
        self.on_demoted = on_demoted
        self.retry_s = retry_s
        self.check_s = check_s
        self.is_leader = False

    def run(self, stop: threading.Event) -> None:
        logged_follower = False
        while not stop.is_set():
            if not self.is_leader:
                try:
                    acquired = self.lock.try_acquire()
                except Exception as e:
                    log.warning("leader election: cannot reach the database (%s); retrying", e)
                    acquired = False
                if acquired:
                    self.is_leader = True
                    log.info("instance %s is now the LEADER (runs the scheduled jobs)", self.instance)
                    try:
                        self.on_elected()
                    except Exception:
                        log.exception("starting the scheduler failed; stepping down")
                        self._step_down()
                elif not logged_follower:
                    log.info("instance %s is a follower; another instance runs the scheduled jobs", self.instance)
                    logged_follower = True
                stop.wait(self.retry_s)
            else:
                stop.wait(self.check_s)
                if not stop.is_set() and not self.lock.still_held():
                    log.error("instance %s lost leadership; stopping its scheduler", self.instance)
                    self._step_down()
                    logged_follower = False
        if self.is_leader:
            self._step_down()

    def _step_down(self) -> None:
        self.is_leader = False
        try:
            self.on_demoted()
        finally:
            self.lock.release()
