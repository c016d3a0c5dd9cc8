"""Daemon internals: the leadership fence already holds when the scheduler resumes; SIGTERM always stops it."""

from __future__ import annotations

import signal
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from driftloop import daemon as daemon_mod
from driftloop.settings import load_settings
from tests.ingest_helpers import wait_for


def test_fence_sees_the_scheduler_as_soon_as_it_resumes(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs overdue in the store (after a fail-over) run the moment the scheduler resumes; their
    fence (``Daemon.is_leader``) must already say yes then, or that first run is dropped."""
    s = load_settings(None, database={"url": sqlite_url}, scheduler={"ingest": False})
    d = daemon_mod.Daemon(s, ingest=False, instance="t:1")
    d.election = SimpleNamespace(is_leader=True)  # type: ignore[assignment]
    seen: list[bool] = []
    real = daemon_mod.make_scheduler

    def make(engine: Any, settings: Any) -> Any:
        sched = real(engine, settings)
        orig_resume = sched.resume

        def resume() -> None:
            seen.append(d.is_leader())
            orig_resume()

        sched.resume = resume
        return sched

    monkeypatch.setattr(daemon_mod, "make_scheduler", make)
    d._start_scheduler()
    try:
        assert seen == [True]
        assert d.scheduler is not None and d.scheduler.running
    finally:
        d._stop = SimpleNamespace(is_set=lambda: True)  # type: ignore[assignment]
        d._stop_scheduler()
        d.engine.dispose()
    assert d.scheduler is None and not d.is_leader()


def test_a_scheduler_that_fails_to_start_leaves_no_leader_behind(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = load_settings(None, database={"url": sqlite_url}, scheduler={"ingest": False})
    d = daemon_mod.Daemon(s, ingest=False, instance="t:2")
    d.election = SimpleNamespace(is_leader=True)  # type: ignore[assignment]

    def broken(*a: Any, **k: Any) -> Any:
        raise RuntimeError("job store unreachable")

    monkeypatch.setattr(daemon_mod, "register_jobs", broken)
    with pytest.raises(RuntimeError, match="job store unreachable"):
        d._start_scheduler()
    assert d.scheduler is None and not d.is_leader()
    d.engine.dispose()


def test_sigterm_handled_on_another_thread_still_stops_the_daemon(sqlite_url: str) -> None:
    """The kernel may run the SIGTERM handler on any thread of the process (under load, often one that
    is starting a thread: the leader check and every job run start one). CPython then runs the Python
    handler, which sets ``stop``, only when the main thread next executes bytecode; ``Daemon.run`` must
    not sleep on ``stop`` without a timeout, or the daemon ignores the signal until SIGKILL."""
    s = load_settings(None, database={"url": sqlite_url}, scheduler={"ingest": False})
    d = daemon_mod.Daemon(s, ingest=False, api=False, instance="t:3")
    stop = threading.Event()
    returned = threading.Event()
    outcome: dict[str, bool] = {}

    def signal_from_another_thread() -> None:
        try:
            wait_for(d.is_leader, 60, "the daemon to lead")
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # the C handler runs on this thread
            # generous: only bounds how long a daemon that misses the signal would block this test
            outcome["stopped by the signal"] = returned.wait(60)
        finally:
            stop.set()  # never leave the test's main thread blocked

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())  # what the CLI installs
    helper = threading.Thread(target=signal_from_another_thread, name="test-signal", daemon=True)
    try:
        helper.start()
        rc = d.run(stop)  # in the main thread, as in `driftloop run`
        returned.set()
        helper.join(60)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert outcome == {"stopped by the signal": True}, "SIGTERM delivered to a non-main thread was not acted on"
    assert rc == 0 and d.scheduler is None
