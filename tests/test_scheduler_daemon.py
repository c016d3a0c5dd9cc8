"""Daemon internals: the leadership fence already holds when the scheduler resumes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from driftloop import daemon as daemon_mod
from driftloop.settings import load_settings


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
