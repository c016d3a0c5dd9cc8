"""Retrain jobs: ``/api/v1/retrain/jobs`` (list, one, cancel) and ``POST /api/v1/retrain/{policy}/run``.

No ``from __future__ import annotations``: the endpoints use the router's local ``Annotated`` aliases.
"""

import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, status
from sqlalchemy import select

from driftloop.api import schemas as S
from driftloop.api.auth import Principal
from driftloop.api.deps import ApiDeps
from driftloop.api.params import (
    CONFLICT,
    ERRORS,
    NOT_FOUND,
    Id,
    Limit,
    NameFilter,
    Offset,
    PolicyName,
    conflict,
    not_found,
)
from driftloop.api.queries import fetch_one, fetch_rows, newest_page
from driftloop.retrain.tables import retrain_jobs

log = logging.getLogger("driftloop.api")

RJ_COLS = [c for c in retrain_jobs.c if c.name not in ("work_dir", "pid")]


def start_retrain(d: ApiDeps, policy: str, who: Principal, force: bool) -> S.Accepted:
    """Check the policy may run (unless ``force``) and queue its job; the leader's worker runs it."""
    from driftloop.retrain.queue import enqueue
    from driftloop.retrain.runner import RetrainError, RetrainPolicyJob, find_policy

    settings, engine, instance = d.settings, d.engine, d.instance
    try:
        p = find_policy(settings, policy)
    except RetrainError as e:
        raise not_found(str(e)) from None
    trigger: dict[str, Any] = {"kind": "manual", "forced": force, "by": who.actor}
    if not force:
        trig, why = RetrainPolicyJob(settings, engine, instance).check(p, datetime.now(UTC))
        if trig is None:
            raise conflict(f"policy {policy} may not run now: {why} (add ?force=true to run anyway)")
        trigger = {**trig, "kind": "manual", "by": who.actor}
    q = enqueue(engine, p, trigger, who.actor)
    if not q.created:
        raise conflict(f"retrain job {q.job_id} of policy {policy} is still {q.status}; "
                       f"cancel it at /api/v1/retrain/jobs/{q.job_id}/cancel or wait")  # fmt: skip
    log.info("retrain job %d of %s queued by %s", q.job_id, policy, who.actor)
    return S.Accepted(job="retrain", job_id=q.job_id,
                      detail=f"retrain job {q.job_id} queued; the leader runs it; "
                             f"follow it at /api/v1/retrain/jobs/{q.job_id}")  # fmt: skip


def router(d: ApiDeps) -> APIRouter:
    routes = APIRouter()
    ReadAuth = Annotated[Principal, Depends(d.read)]
    AdminAuth = Annotated[Principal, Depends(d.admin)]
    engine = d.engine

    @routes.get("/api/v1/retrain/jobs", response_model=list[S.RetrainJob], tags=["retrain"], responses=ERRORS,
                summary="Retrain jobs, newest first")  # fmt: skip
    def list_retrain_jobs(_: ReadAuth, policy: NameFilter = None,
                          status_: Annotated[Literal["queued", "running", "succeeded", "failed", "cancelled"] | None,
                                             Query(alias="status")] = None,
                          limit: Limit = 100, offset: Offset = 0) -> list[dict[str, Any]]:  # fmt: skip
        q = newest_page(RJ_COLS, retrain_jobs.c.id, limit, offset, (retrain_jobs.c.policy, policy),
                        (retrain_jobs.c.status, status_))  # fmt: skip
        return fetch_rows(engine, q)

    @routes.get("/api/v1/retrain/jobs/{job_id}", response_model=S.RetrainJob, tags=["retrain"],
                responses={**ERRORS, **NOT_FOUND})  # fmt: skip
    def get_retrain_job(job_id: Id, _: ReadAuth) -> dict[str, Any]:
        q = select(*RJ_COLS).where(retrain_jobs.c.id == job_id)
        return fetch_one(engine, q, f"no retrain job {job_id}; list them at /api/v1/retrain/jobs")

    @routes.post("/api/v1/retrain/{policy}/run", response_model=S.Accepted, status_code=status.HTTP_202_ACCEPTED,
                 tags=["retrain"], responses={**ERRORS, **NOT_FOUND, **CONFLICT},
                 summary="Queue a retrain of a policy (the leader's worker runs it)")  # fmt: skip
    def run_retrain(policy: PolicyName, who: AdminAuth,
                    force: Annotated[bool, Query(description="run even if not triggered, in cooldown or over "
                                                             "max_runs_per_day")] = False) -> S.Accepted:  # fmt: skip
        return start_retrain(d, policy, who, force)

    @routes.post("/api/v1/retrain/jobs/{job_id}/cancel", response_model=S.CancelResult, tags=["retrain"],
                 responses={**ERRORS, **NOT_FOUND}, summary="Ask a queued or running retrain job to stop")  # fmt: skip
    def cancel_retrain(job_id: Id, who: AdminAuth) -> S.CancelResult:
        from driftloop.retrain.runner import RetrainError, request_cancel

        try:
            st = request_cancel(engine, job_id)
        except RetrainError as e:
            raise not_found(str(e)) from None
        log.info("retrain job %d: cancel requested by %s (%s)", job_id, who.actor, st)
        return S.CancelResult(job_id=job_id, status=st)

    return routes
