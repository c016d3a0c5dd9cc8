"""Scheduled jobs: ``/api/v1/jobs`` (their runs) and ``POST /api/v1/checks/run`` (run one now).

No ``from __future__ import annotations``: the endpoints use the router's local ``Annotated`` aliases.
"""

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, status

from driftloop.api import schemas as S
from driftloop.api.auth import Principal
from driftloop.api.deps import ApiDeps
from driftloop.api.params import CONFLICT, ERRORS, JobName, Limit, Offset, conflict
from driftloop.api.queries import fetch_rows, newest_page
from driftloop.jobs import JobContext, job_runs, run_named

log = logging.getLogger("driftloop.api")


def router(d: ApiDeps) -> APIRouter:
    routes = APIRouter()
    ReadAuth = Annotated[Principal, Depends(d.read)]
    AdminAuth = Annotated[Principal, Depends(d.admin)]

    @routes.get("/api/v1/jobs", response_model=list[S.JobRun], tags=["jobs"], responses=ERRORS,
                summary="Scheduled-job runs, newest first")  # fmt: skip
    def list_job_runs(_: ReadAuth, job: Annotated[JobName | None, Query()] = None,
                      status_: Annotated[Literal["running", "succeeded", "failed", "skipped"] | None,
                                         Query(alias="status")] = None,
                      limit: Limit = 100, offset: Offset = 0) -> list[dict[str, Any]]:  # fmt: skip
        q = newest_page([job_runs], job_runs.c.id, limit, offset, (job_runs.c.job, job), (job_runs.c.status, status_))
        return fetch_rows(d.engine, q)

    @routes.post("/api/v1/checks/run", response_model=S.Accepted, status_code=status.HTTP_202_ACCEPTED,
                 tags=["jobs"], responses={**ERRORS, **CONFLICT},
                 summary="Run a scheduled job (default: the drift check) once now, in the background")  # fmt: skip
    def run_check(who: AdminAuth, job: Annotated[JobName, Query()] = "drift_check") -> S.Accepted:
        ctx = JobContext(d.settings, d.engine, d.instance)
        if not d.background.start(f"job-{job}", lambda: run_named(job, ctx)):
            raise conflict(f"{job} started from the API is still running; see /api/v1/jobs?job={job}")
        log.info("job %s started by %s", job, who.actor)
        return S.Accepted(job=job, detail=f"{job} started; its run appears at /api/v1/jobs?job={job}")

    return routes
