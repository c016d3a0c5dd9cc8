"""Scheduled jobs. Each is a small ``run_once(ctx)`` unit; APScheduler stores them by textual reference.

Design: APScheduler persists only a reference such as ``"driftloop.jobs:drift_check"``, so the job
functions take no arguments. They find their settings and engine in a process-wide
:class:`JobContext`: ``driftloop run`` installs it with :func:`set_context` before the scheduler
starts; anywhere else (a REPL, ``driftloop jobs run``) the first job builds it from
``$DRIFTLOOP_CONFIG``. The ``*_once`` functions take the context explicitly and are what tests call.

Every run goes through :func:`run_job`, which records a ``job_runs`` row (running -> succeeded |
failed | skipped). A job that raises logs its traceback, records the error and returns: it never
takes the daemon or the other jobs down. A run still going after its interval logs a warning.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)

from driftloop.clikit import default_instance
from driftloop.monitor.alerts.engine import AlertEvaluationJob
from driftloop.monitor.review import review_items
from driftloop.monitor.tables import drift_results, monitor_windows, window_metrics
from driftloop.retrain.runner import RetrainPolicyJob
from driftloop.retrain.watch import PromotionWatchJob
from driftloop.settings import Settings, load_settings
from driftloop.store.db import create_engine_from_url
from driftloop.store.models import BigId, feedback, interactions, metadata, rejected_messages

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
    CheckConstraint("status IN ('running', 'succeeded', 'failed', 'skipped')", name="ck_job_runs_status"),
    Index("ix_job_runs_job_started", "job", "started_at"),
    Index("ix_job_runs_started", "started_at"),
)

STATUSES = ("running", "succeeded", "failed", "skipped")


@dataclass
class JobContext:
    """What a job needs: settings, an engine, who runs it and (in the daemon) a leadership fence."""

    settings: Settings
    engine: Engine
    instance: str
    is_leader: Callable[[], bool] | None = None


class JobSkipped(Exception):
    """Raised by a job that has nothing it may do now; recorded as ``skipped``, not ``failed``."""


_ctx: JobContext | None = None
_ctx_lock = threading.Lock()


def set_context(settings: Settings, engine: Engine, instance: str | None = None,
                is_leader: Callable[[], bool] | None = None) -> JobContext:  # fmt: skip
    """Install the settings/engine the job functions use (done by ``driftloop run``)."""
    global _ctx
    with _ctx_lock:
        _ctx = JobContext(settings, engine, instance or default_instance(), is_leader)
        return _ctx


def clear_context() -> None:
    """Forget the installed context (tests; daemon shutdown)."""
    global _ctx
    with _ctx_lock:
        _ctx = None


def get_context() -> JobContext:
    """The installed context, else one built from ``$DRIFTLOOP_CONFIG`` (or the defaults)."""
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            s = load_settings()
            _ctx = JobContext(s, create_engine_from_url(s.database.url), default_instance())
        return _ctx


def run_job(name: str, fn: Callable[[JobContext], Any], ctx: JobContext | None = None,
            interval_s: float | None = None) -> str:  # fmt: skip
    """Run ``fn(ctx)`` once, record it in ``job_runs`` and return the final status. Never raises."""
    ctx = ctx or get_context()
    if ctx.is_leader is not None and not ctx.is_leader():
        # Fence: a scheduler that is being stopped after a lost election must not start new work.
        log.warning("job %s not started: instance %s is stepping down (shutting down or lost leadership)",
                    name, ctx.instance)  # fmt: skip
        return "skipped"
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    rid = None
    try:
        with ctx.engine.begin() as c:
            rid = c.execute(insert(job_runs).returning(job_runs.c.id),
                            {"job": name, "instance": ctx.instance, "status": "running",
                             "started_at": started}).scalar_one()  # fmt: skip
    except Exception:
        log.exception("job %s: cannot record its run (database down?); running it anyway", name)
    overrun = None
    if interval_s:
        overrun = threading.Timer(interval_s, lambda: log.warning(
            "job %s is still running after %.1fs, longer than its interval; later runs are coalesced",
            name, interval_s))  # fmt: skip
        overrun.daemon = True
        overrun.start()
    status, result, error = "succeeded", None, None
    try:
        out = fn(ctx)
        result = None if out is None else str(out)[:2000]
        log.info("job %s succeeded in %.2fs: %s", name, time.perf_counter() - t0, result or "-")
    except JobSkipped as e:
        status, result = "skipped", str(e)
        log.info("job %s skipped: %s", name, e)
    except Exception as e:
        status, error = "failed", "".join(traceback.format_exception(e))[-8000:]
        log.error("job %s failed: %s\n%s", name, e, error)
    finally:
        if overrun is not None:
            overrun.cancel()
    dur = time.perf_counter() - t0
    if interval_s and dur > interval_s:
        log.warning("job %s took %.1fs, longer than its %.1fs interval", name, dur, interval_s)
    if rid is not None:
        try:
            with ctx.engine.begin() as c:
                c.execute(update(job_runs).where(job_runs.c.id == rid).values(
                    status=status, finished_at=datetime.now(UTC), duration_s=dur, result=result, error=error))  # fmt: skip
        except Exception:
            log.exception("job %s: cannot record its result", name)
    return status


def abandon_runs_of_others(engine: Engine, instance: str) -> int:
    """Mark ``running`` rows of other instances as failed (called by a new leader before it starts).

    Only the leader runs jobs, so such rows belong to a leader that was killed or lost its lock
    mid-run. If that run does finish after all, its own update overwrites this one.
    """
    with engine.begin() as c:
        n = c.execute(update(job_runs).where(job_runs.c.status == "running", job_runs.c.instance != instance).values(
            status="failed", finished_at=datetime.now(UTC),
            error=f"abandoned: its instance died or lost leadership before the run finished (seen by {instance})",
        )).rowcount  # fmt: skip
    if n:
        log.warning("marked %d unfinished run(s) of a previous leader as failed", n)
    return int(n or 0)


# -- the units ------------------------------------------------------------------------------------
def drift_check_once(ctx: JobContext, now: datetime | None = None) -> str:
    """Check every due window: drift and quality metrics in one pass (each window is read once)."""
    # Imported when the job runs, not with this module: monitor.check loads pandas, scipy and Evidently
    # (~150 MB), and every `driftloop` process (the ingest consumer and its writer child included) imports
    # this module through the CLI and the API. Not optional: a failed import is a failed run.
    from driftloop.monitor.check import DriftCheckJob

    pre = _estimator_score_all(ctx, now) if ctx.settings.quality.estimator.enabled else ""
    res = DriftCheckJob(ctx.settings, ctx.engine).run_once(now=now)
    drifted = sum(1 for r in res if r.outcome is not None and r.outcome.drifted)
    errors = sum(1 for r in res if r.status == "error")
    return f"{len(res)} window(s) checked, {drifted} drifted, {errors} error(s)" + (f"; {pre}" if pre else "")


def _estimator_score_all(ctx: JobContext, now: datetime | None = None) -> str:
    """Score every workload's unscored interactions with its estimator champion (before a check: its
    PPI++ estimate then uses them). A failing workload is logged and counted, never fatal."""
    from driftloop.retrain.estimator_jobs import score_interactions, workloads

    done: list[str] = []
    for m in workloads(ctx.engine, ctx.settings, with_champion=True):
        try:
            st = score_interactions(ctx.settings, ctx.engine, m, now=now)
            done.append(f"{m}: {st.scored} scored by estimator:{st.version}, {st.errors} error(s)")
        except Exception as e:
            log.exception("estimator scoring of %s failed", m)
            done.append(f"{m}: failed ({e})")
    return "; ".join(done)


def estimator_score_once(ctx: JobContext, now: datetime | None = None) -> str:
    """The learned estimator's champion scores the new interactions of every workload (``quality.estimator``)."""
    if not ctx.settings.quality.estimator.enabled:
        raise JobSkipped("the learned estimator is off (quality.estimator.enabled)")
    return _estimator_score_all(ctx, now) or "no workload has an estimator champion"


def estimator_train_once(ctx: JobContext, now: datetime | None = None) -> str:
    """Train every workload's estimator on its labels; the new version is champion only if not worse."""
    if not ctx.settings.quality.estimator.enabled:
        raise JobSkipped("the learned estimator is off (quality.estimator.enabled)")
    from driftloop.retrain.estimator_jobs import EstimatorRefused, train_estimator, workloads

    done: list[str] = []
    for m in workloads(ctx.engine, ctx.settings, with_champion=False):
        try:
            v = train_estimator(ctx.settings, ctx.engine, m)
            done.append(f"{m}: {v.family} {v.version} ({v.status})")
        except EstimatorRefused as e:
            done.append(f"{m}: not trained ({e})")
        except Exception as e:
            log.exception("estimator training of %s failed", m)
            done.append(f"{m}: failed ({e})")
    return "; ".join(done) or "no workload has traffic"


def quality_check_once(ctx: JobContext, now: datetime | None = None) -> str:
    """Quality signals. Thin wrapper: the monitor computes them in the drift pass, which is idempotent.

    Scheduling it (``quality_check_s > 0``) only shortens the delay before a new window's quality
    metrics exist; it never checks a window twice.
    """
    return drift_check_once(ctx, now)


def policy_evaluation_once(ctx: JobContext, now: datetime | None = None) -> str:
    """Evaluate the alert policies over the newest windows; fire, resolve and notify."""
    ev = AlertEvaluationJob(ctx.settings, ctx.engine).run_once(now=now)
    return f"{len(ev)} alert event(s)" + (": " + ", ".join(f"{e.event} {e.rule}" for e in ev) if ev else "")


def retention_once(ctx: JobContext, now: datetime | None = None) -> str:
    """Delete rows older than the configured retention, ``batch_size`` rows per transaction."""
    r = ctx.settings.scheduler.retention
    now = now or datetime.now(UTC)
    done: list[str] = []
    plan = [
        (interactions, interactions.c.ts, r.interactions_days),
        (feedback, feedback.c.ts, r.interactions_days),
        (review_items, review_items.c.created_at, r.interactions_days),  # queued with their interactions
        (rejected_messages, rejected_messages.c.rejected_at, r.rejected_days),
        (monitor_windows, monitor_windows.c.window_end, r.monitor_days),
        (job_runs, job_runs.c.started_at, r.job_runs_days),
    ]
    for table, col, days in plan:
        if not days:
            continue
        cutoff = now - timedelta(days=days)
        total = 0
        while True:  # bounded batches keep transactions and locks short
            with ctx.engine.begin() as c:
                q = select(table.c.id).where(col < cutoff).order_by(table.c.id).limit(r.batch_size)
                if table is job_runs:
                    q = q.where(job_runs.c.status != "running")
                ids = [row[0] for row in c.execute(q)]
                if not ids:
                    break
                if table is monitor_windows:  # SQLite does not cascade
                    c.execute(delete(drift_results).where(drift_results.c.window_id.in_(ids)))
                    c.execute(delete(window_metrics).where(window_metrics.c.window_id.in_(ids)))
                c.execute(delete(table).where(table.c.id.in_(ids)))
                total += len(ids)
            if len(ids) < r.batch_size:
                break
        done.append(f"{table.name}={total}")
    return "deleted " + (", ".join(done) if done else "nothing (retention disabled)")


def retrain_check_once(ctx: JobContext, now: datetime | None = None) -> str:
    """Evaluate the retrain policies; a triggered and allowed policy is queued (``retrain_worker`` runs it)."""
    if not ctx.settings.retrain.policies:
        return "no retrain policies"
    out = RetrainPolicyJob(ctx.settings, ctx.engine, ctx.instance).run_once(now=now)
    return "; ".join(f"{d.policy}: {d.action} ({d.reason})" for d in out)


def retrain_worker_once(ctx: JobContext, now: datetime | None = None) -> str:
    """Claim queued retrain jobs and run them, one after another, while this instance leads.

    Only the elected leader runs retrains: a context without a leadership fence (``driftloop jobs
    run``, an API thread) is refused, and the fence is asked again before every claim and while a run
    trains (a demoted leader stops its training and promotes nothing).
    """
    if ctx.is_leader is None:
        raise JobSkipped("retrain jobs are run only by the elected leader of `driftloop run`; this process "
                         "has no leader election (queue with `driftloop retrain run POLICY` instead)")  # fmt: skip
    from driftloop.retrain.queue import RetrainWorker
    from driftloop.retrain.runner import RetrainRunner

    fence = ctx.is_leader
    runner = RetrainRunner(ctx.settings, ctx.engine, ctx.instance, fence=fence)
    out = RetrainWorker(ctx.settings, ctx.engine, ctx.instance, fence, runner=runner).drain()
    return "; ".join(f"job {o.job_id}: {o.status} ({o.message[:200]})" for o in out) or "no queued retrain job"


def promotion_watch_once(ctx: JobContext, now: datetime | None = None) -> str:
    """Compare live quality after each newest promotion with before it; roll back when worse."""
    out = PromotionWatchJob(ctx.settings, ctx.engine).run_once(now=now)
    return "; ".join(f"{r.family} {r.version}: {r.status}" for r in out) or "nothing promoted to watch"


def review_sample_once(ctx: JobContext, now: datetime | None = None) -> str:
    """Put new interactions into the human review queue: the uniform slice, then the targeted slices."""
    cfg = ctx.settings.quality.review
    if not cfg.active():
        raise JobSkipped("the review queue is off (quality.review.enabled)")
    from driftloop.monitor.review import sample_once

    out = sample_once(ctx.engine, cfg, ctx.settings.feedback.positive_threshold, now)
    return "queued " + ", ".join(f"{k}={v}" for k, v in out.items())


def judge_once(ctx: JobContext, now: datetime | None = None) -> str:
    """LLM judges (``quality.judges``): each scores a sample of every newly checked window, within its budget.

    The day's budget counts the requests of this day's earlier runs, read back from their ``job_runs``
    results (the JSON this returns). Pairwise judges compare with the registry champion's answers.
    """
    judges = ctx.settings.quality.judges
    if not judges:
        raise JobSkipped("no judges configured (quality.judges)")
    from driftloop.monitor.judge import run_judges  # pandas/numpy: loaded when the job runs
    from driftloop.retrain.registry import ModelRegistry

    reg = ModelRegistry(ctx.engine)

    def champion(model_id: str) -> str | None:
        v = reg.champion(model_id)
        return v.version if v is not None else None

    used = judge_requests_today(ctx, now)
    out = run_judges(judges, ctx.engine, ctx.settings.monitor, champion, lambda name: used.get(name, 0))
    keep = ("requests", "scored", "cached", "parse_failures", "errors", "skipped", "budget_exhausted")
    return json.dumps({"judges": {st.judge: {k: getattr(st, k) for k in keep} for st in out}}, separators=(",", ":"))


def judge_requests_today(ctx: JobContext, now: datetime | None = None) -> dict[str, int]:
    """Requests each judge made in earlier runs of this UTC day (from the ``judge`` job's recorded results)."""
    now = now or datetime.now(UTC)
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    used: dict[str, int] = {}
    with ctx.engine.connect() as c:
        rows = c.execute(select(job_runs.c.result).where(job_runs.c.job == "judge", job_runs.c.started_at >= midnight,
                                                         job_runs.c.result.is_not(None))).all()  # fmt: skip
    for (result,) in rows:
        try:
            for name, st in json.loads(result).get("judges", {}).items():
                used[name] = used.get(name, 0) + int(st.get("requests", 0))
        except (ValueError, AttributeError, TypeError):
            log.warning("judge: a run's result is not the JSON the job writes; its requests are not counted")
    return used


@dataclass(frozen=True)
class JobSpec:
    """One scheduled job: its unit, the setting holding its interval, and its stored reference."""

    name: str
    unit: Callable[..., Any]
    interval_setting: str
    description: str
    long_running: bool = False  # runs past its interval by design (no overrun warnings)
    interval_of: Callable[[Settings], float] | None = None  # an interval kept outside ``scheduler``

    @property
    def ref(self) -> str:
        return f"driftloop.jobs:{self.name}"

    def interval_s(self, settings: Settings) -> float:
        if self.interval_of is not None:
            return float(self.interval_of(settings))
        return float(getattr(settings.scheduler, self.interval_setting))


JOBS: dict[str, JobSpec] = {
    s.name: s
    for s in (
        JobSpec("drift_check", drift_check_once, "drift_check_s", "drift + quality check of due windows"),
        JobSpec("quality_check", quality_check_once, "quality_check_s", "quality signals (same idempotent pass)"),
        JobSpec("policy_evaluation", policy_evaluation_once, "policy_evaluation_s", "alert policies"),
        JobSpec("retention", retention_once, "retention_s", "delete rows past their retention"),
        JobSpec("retrain_check", retrain_check_once, "retrain_check_s", "retrain policies (queue triggered runs)"),
        JobSpec("retrain_worker", retrain_worker_once, "retrain_worker_s", "run queued retrain jobs (leader only)",
                long_running=True),
        JobSpec("promotion_watch", promotion_watch_once, "promotion_watch_s", "post-promotion watch and rollback"),
        JobSpec("review_sample", review_sample_once, "quality.review.sample_interval_s",
                "sample interactions into the human review queue",
                interval_of=lambda s: s.quality.review.sample_interval_s if s.quality.review.active() else 0),
        # at the checks' pace (newly checked windows are what a judge scores), while any judge is configured
        JobSpec("judge", judge_once, "drift_check_s", "LLM judges score a sample of newly checked windows",
                interval_of=lambda s: s.scheduler.drift_check_s if s.quality.judges else 0),
        JobSpec("estimator_train", estimator_train_once, "quality.estimator.train_interval_s",
                "train the learned quality estimator of every workload", long_running=True,
                interval_of=lambda s: s.quality.estimator.train_interval_s if s.quality.estimator.enabled else 0),
        JobSpec("estimator_score", estimator_score_once, "quality.estimator.score_interval_s",
                "the estimator champion scores new interactions",
                interval_of=lambda s: s.quality.estimator.score_interval_s if s.quality.estimator.enabled else 0),
    )
}


# Other names the jobs are known by (the issue calls policy evaluation "alert evaluation").
JOB_ALIASES: dict[str, str] = {"alert_evaluation": "policy_evaluation", "window_check": "drift_check"}


def resolve_job(name: str) -> str:
    """The job's canonical name (``alert_evaluation`` -> ``policy_evaluation``); KeyError if unknown."""
    name = JOB_ALIASES.get(name, name)
    if name not in JOBS:
        raise KeyError(name)
    return name


def run_named(name: str, ctx: JobContext | None = None) -> str:
    """Run the job called ``name`` (or an alias) once (what the scheduler and ``driftloop jobs run`` do)."""
    name = resolve_job(name)
    spec = JOBS[name]
    ctx = ctx or get_context()
    return run_job(name, spec.unit, ctx, None if spec.long_running else spec.interval_s(ctx.settings) or None)


# -- what APScheduler calls (by textual reference) ------------------------------------------------
def drift_check() -> None:
    """Scheduled: drift + quality check of every due window."""
    run_named("drift_check")


def quality_check() -> None:
    """Scheduled: quality signals (see :func:`quality_check_once`)."""
    run_named("quality_check")


def policy_evaluation() -> None:
    """Scheduled: evaluate the alert policies."""
    run_named("policy_evaluation")


def alert_evaluation() -> None:
    """Alias of :func:`policy_evaluation` (a reference that may be stored or written by hand)."""
    run_named("policy_evaluation")


def retention() -> None:
    """Scheduled: delete rows past their retention."""
    run_named("retention")


def retrain_check() -> None:
    """Scheduled: evaluate the retrain policies."""
    run_named("retrain_check")


def retrain_worker() -> None:
    """Scheduled: run queued retrain jobs."""
    run_named("retrain_worker")


def promotion_watch() -> None:
    """Scheduled: post-promotion watch."""
    run_named("promotion_watch")


def judge() -> None:
    """Scheduled: LLM judges (see :func:`judge_once`)."""
    run_named("judge")


def estimator_train() -> None:
    """Scheduled: train the learned quality estimators (see :func:`estimator_train_once`)."""
    run_named("estimator_train")


def estimator_score() -> None:
    """Scheduled: score new interactions with the estimator champions (see :func:`estimator_score_once`)."""
    run_named("estimator_score")


def review_sample() -> None:
    """Scheduled: sample interactions into the human review queue."""
    run_named("review_sample")
