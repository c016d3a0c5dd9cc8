"""APScheduler 3.11 wiring: a BackgroundScheduler whose job store is a table in driftloop's database.

Jobs are stored by textual reference (``driftloop.jobs:drift_check``) in ``apscheduler_jobs`` with
``coalesce=True``, ``max_instances=1`` and ``misfire_grace_time=misfire_grace_s``. Only the elected
leader runs a scheduler on that store (see :mod:`driftloop.leader`).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine

from driftloop.jobs import JOBS
from driftloop.settings import Settings

log = logging.getLogger("driftloop.scheduler")

JOBSTORE_TABLE = "apscheduler_jobs"


def _executor(max_workers: int) -> Any:
    """A thread pool that ignores jobs handed to it while it shuts down.

    APScheduler 3.11's ``shutdown`` races its own scheduler thread: a processing pass that passed
    its state check before the shutdown may submit a due job after the pool closed, which logs
    ``RuntimeError: cannot schedule new futures after shutdown`` with a traceback. Here that run is
    dropped with an info line instead (it is the next leader's, or the next start's, to run).
    """
    from apscheduler.executors.pool import ThreadPoolExecutor

    class DrainingThreadPoolExecutor(ThreadPoolExecutor):
        _stopping = False

        def shutdown(self, wait: bool = True) -> None:
            with self._lock:  # submit_job holds it: a submission in flight completes first
                self._stopping = True
            super().shutdown(wait)

        def _do_submit_job(self, job: Any, run_times: Any) -> None:
            if self._stopping:
                log.info("job %s not started: the scheduler is shutting down", job.id)
                return
            super()._do_submit_job(job, run_times)

    return DrainingThreadPoolExecutor(max_workers=max_workers)


def make_scheduler(engine: Engine, settings: Settings) -> Any:
    """A (not yet started) scheduler with a SQLAlchemy job store in ``engine``'s database."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    return BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=engine, tablename=JOBSTORE_TABLE)},
        executors={"default": _executor(len(JOBS))},
        job_defaults=job_options(settings),
        timezone="UTC",
    )


def job_options(settings: Settings) -> dict[str, Any]:
    return {"coalesce": True, "max_instances": 1, "misfire_grace_time": settings.scheduler.misfire_grace_s}


def register_jobs(scheduler: Any, settings: Settings) -> dict[str, str]:
    """Make the job store match the settings; returns ``{job id: what happened}``.

    A stored job whose reference, interval and options are unchanged is kept as is, so its next
    run time survives restarts (a daemon restarted every 30 min still runs an hourly job). A
    changed one is replaced, a disabled one (interval 0) or an unknown one is removed. Ids are
    the job names: registering twice never duplicates a job.
    """
    from apscheduler.triggers.interval import IntervalTrigger

    opts = job_options(settings)
    done: dict[str, str] = {}
    stored = {j.id: j for j in scheduler.get_jobs()}
    for name, spec in JOBS.items():
        interval = spec.interval_s(settings)
        job = stored.pop(name, None)
        if not interval:
            if job is not None:
                scheduler.remove_job(name)
                done[name] = "removed (disabled)"
            continue
        if (job is not None and job.func_ref == spec.ref and isinstance(job.trigger, IntervalTrigger)
                and job.trigger.interval == timedelta(seconds=interval)
                and all(getattr(job, k) == v for k, v in opts.items())):  # fmt: skip
            done[name] = f"kept (every {interval:g}s, next run {job.next_run_time:%H:%M:%S})"
            continue
        scheduler.add_job(spec.ref, "interval", seconds=interval, id=name, name=name, replace_existing=True, **opts)
        done[name] = ("replaced" if job is not None else "added") + f" (every {interval:g}s)"
    for stale in stored:  # e.g. a job renamed by an upgrade
        scheduler.remove_job(stale)
        done[stale] = "removed (not a driftloop job)"
    return done
