"""Scheduled jobs. Each is a small ``run_once()`` unit; APScheduler stores them by textual reference.

Job functions take no arguments (APScheduler persists only the reference ``driftloop.jobs:<name>``)
and find their settings and engine in a process-wide context that ``driftloop run`` sets with
``set_context``; outside the daemon the context is built from ``$DRIFTLOOP_CONFIG``. Every run is
recorded in ``job_runs``; a failing job logs its traceback, records the error and returns — it
never takes the daemon or the other jobs down.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Column, DateTime, Engine, Float, String, Table, Text, delete, insert, select, update

from driftloop.settings import Settings, load_settings
from driftloop.store.db import create_engine_from_url
from driftloop.store.models import BigId, metadata

log = logging.getLogger("driftloop.jobs")

job_runs = Table(
    "job_runs",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("job", String(64), nullable=False),
    Column("instance", String(128), nullable=False),
    Column("status", String(16), nullable=False),  # running | succeeded | failed | skipped
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("duration_s", Float),
    Column("result", Text),
    Column("error", Text),
)


@dataclass
class JobContext:
    settings: Settings
    engine: Engine
    instance: str


_ctx: JobContext | None = None
_ctx_lock = threading.Lock()


def default_instance() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def set_context(settings: Settings, engine: Engine, instance: str | None = None) -> JobContext:
    """Install the settings/engine the job functions use (done by ``driftloop run``)."""
    global _ctx
    with _ctx_lock:
        _ctx = JobContext(settings, engine, instance or default_instance())
        return _ctx


def get_context() -> JobContext:
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            s = load_settings()
            _ctx = JobContext(s, create_engine_from_url(s.database.url), default_instance())
        return _ctx


def run_job(name: str, fn: Callable[[JobContext], Any], interval_s: float | None = None) -> str:
    """Run ``fn`` once, recording a ``job_runs`` row; returns the final status."""
    ctx = get_context()
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    try:
        with ctx.engine.begin() as c:
            rid = c.execute(insert(job_runs).returning(job_runs.c.id),
                            {"job": name, "instance": ctx.instance, "status": "running",
                             "started_at": started}).scalar_one()  # fmt: skip
    except Exception:
        log.exception("job %s: cannot record its run (database down?); running it anyway", name)
        rid = None
    status, result, error = "succeeded", None, None
    try:
        out = fn(ctx)
        result = None if out is None else str(out)[:2000]
    except _Skipped as e:
        status, result = "skipped", str(e)
        log.info("job %s skipped: %s", name, e)
    except Exception as e:
        status, error = "failed", "".join(traceback.format_exception(e))[-8000:]
        log.error("job %s failed: %s\n%s", name, e, error)
    dur = time.perf_counter() - t0
    if interval_s and dur > interval_s:
        log.warning("job %s took %.1fs, longer than its %.0fs interval (runs are coalesced)", name, dur, interval_s)
    if rid is not None:
        try:
            with ctx.engine.begin() as c:
                c.execute(update(job_runs).where(job_runs.c.id == rid).values(
                    status=status, finished_at=datetime.now(UTC), duration_s=dur, result=result, error=error))  # fmt: skip
        except Exception:
            log.exception("job %s: cannot record its result", name)
    return status


class _Skipped(Exception):
    """The job had nothing it could do (e.g. an optional component is missing)."""


# -- the jobs -------------------------------------------------------------------------------------
def _window_check(ctx: JobContext) -> str:
    from monitor.check import DriftCheckJob

    res = DriftCheckJob(ctx.settings, ctx.engine).run_once()
    drifted = sum(1 for r in res if r.outcome is not None and r.outcome.drifted)
    return f"{len(res)} window(s) checked, {drifted} drifted"


def _alert_evaluation(ctx: JobContext) -> str:
    from monitor.alerts.engine import AlertEvaluationJob

    ev = AlertEvaluationJob(ctx.settings, ctx.engine).run_once()
    return f"{len(ev)} alert event(s)" + (": " + ", ".join(f"{e.event} {e.rule}" for e in ev) if ev else "")


def _retention(ctx: JobContext) -> str:
    from driftloop.store.models import feedback, interactions, rejected_messages
    from monitor.tables import monitor_windows

    r = ctx.settings.scheduler.retention
    now = datetime.now(UTC)
    plan = [
        (interactions, interactions.c.ts, r.interactions_days),
        (feedback, feedback.c.ts, r.interactions_days),
        (rejected_messages, rejected_messages.c.rejected_at, r.rejected_days),
        (monitor_windows, monitor_windows.c.window_end, r.monitor_days),
        (job_runs, job_runs.c.started_at, r.job_runs_days),
    ]
    done = []
    for table, col, days in plan:
        if not days:
            continue
        cutoff = now - timedelta(days=days)
        total = 0
        while True:  # bounded batches keep transactions and locks short
            with ctx.engine.begin() as c:
                ids = [row[0] for row in c.execute(select(table.c.id).where(col < cutoff).limit(r.batch_size))]
                if not ids:
                    break
                if table is monitor_windows:
                    from monitor.tables import drift_results, window_metrics

                    c.execute(delete(drift_results).where(drift_results.c.window_id.in_(ids)))
                    c.execute(delete(window_metrics).where(window_metrics.c.window_id.in_(ids)))
                c.execute(delete(table).where(table.c.id.in_(ids)))
                total += len(ids)
        done.append(f"{table.name}={total}")
    return "deleted " + ", ".join(done)


JOBS: dict[str, Callable[[JobContext], Any]] = {
    "window_check": _window_check,
    "alert_evaluation": _alert_evaluation,
    "retention": _retention,
}


def _interval(name: str) -> float:
    s = get_context().settings.scheduler
    return float(getattr(s, f"{name}_s"))


def window_check() -> None:
    """Drift + quality check of every due window (one pass reads each window once)."""
    run_job("window_check", _window_check, _interval("window_check"))


def alert_evaluation() -> None:
    """Evaluate alert rules over the newest windows; notify."""
    run_job("alert_evaluation", _alert_evaluation, _interval("alert_evaluation"))


def retention() -> None:
    """Delete rows older than the configured retention, in bounded batches."""
    run_job("retention", _retention, _interval("retention"))
