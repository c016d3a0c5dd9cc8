"""APScheduler 3.11 wiring: a BackgroundScheduler whose job store is a table in driftloop's database."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Engine

from driftloop.scheduler_config import SchedulerSettings

log = logging.getLogger("driftloop.scheduler")

# job id -> (textual reference, settings attribute holding the interval in seconds)
JOB_SPECS: dict[str, tuple[str, str]] = {
    "window_check": ("driftloop.jobs:window_check", "window_check_s"),
    "alert_evaluation": ("driftloop.jobs:alert_evaluation", "alert_evaluation_s"),
    "retention": ("driftloop.jobs:retention", "retention_s"),
}


def make_scheduler(engine: Engine, settings: SchedulerSettings) -> Any:
    """A (not yet started) scheduler with a SQLAlchemy job store in ``engine``'s database."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    return BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=engine, tablename="apscheduler_jobs")},
        executors={"default": ThreadPoolExecutor(max_workers=len(JOB_SPECS))},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": settings.misfire_grace_s},
        timezone="UTC",
    )


def register_jobs(scheduler: Any, settings: SchedulerSettings) -> list[str]:
    """Add (or update in place) every job under a stable id: restarts never duplicate them."""
    ids = []
    for job_id, (ref, attr) in JOB_SPECS.items():
        scheduler.add_job(ref, "interval", seconds=float(getattr(settings, attr)), id=job_id, name=job_id,
                          replace_existing=True)  # fmt: skip
        ids.append(job_id)
    return ids
