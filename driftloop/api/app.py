"""The FastAPI application: health, readiness, metrics, read and mutating endpoints, reports, status page.

No ``from __future__ import annotations`` here: the endpoints are closures over the app's settings and
use local ``Annotated`` aliases, which FastAPI can only resolve from real (not stringified) annotations.
"""

import logging
import socket
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, HTTPException, Path, Query, Response, status
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from driftloop.api import schemas as S
from driftloop.api.auth import Principal, require_admin, require_read
from driftloop.api.metrics import make_registry, render
from driftloop.settings import Settings

log = logging.getLogger("driftloop.api")

MAX_ID = 2**63 - 1  # PostgreSQL BIGINT: larger ids cannot exist (and would be a database error)
Id = Annotated[int, Path(ge=0, le=MAX_ID, description="numeric id")]
Limit = Annotated[int, Query(ge=1, le=1000, description="rows returned (newest first)")]
Offset = Annotated[int, Query(ge=0, le=2**31, description="rows skipped")]
# Names are stored as text: no NUL (PostgreSQL text cannot hold it) and no control characters.
_NAME = r"^[^\x00-\x1f\x7f/]+$"
Family = Annotated[str, Path(min_length=1, max_length=256, pattern=_NAME, description="model family (model_id)")]
VersionRef = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                                 description="version label (v3) or numeric id")]  # fmt: skip
PolicyName = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")]
ModelFilter = Annotated[str | None, Query(min_length=1, max_length=256, pattern=_NAME, description="model_id")]
NameFilter = Annotated[str | None, Query(min_length=1, max_length=128, pattern=_NAME)]
# The names of driftloop.jobs.JOBS (a test keeps the two in step).
JobName = Literal["drift_check", "quality_check", "policy_evaluation", "retention", "retrain_check", "retrain_worker",
                  "promotion_watch"]

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": S.ErrorOut, "description": "no or invalid bearer token (or none configured)"},
    403: {"model": S.ErrorOut, "description": "the token's role may not do this"},
}
# Every route that reads the database: one exception handler (below) turns a lost database into this.
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": S.ErrorOut, "description": "the database is unreachable; retry after the Retry-After seconds",
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}}}  # fmt: skip
ERRORS = {**AUTH_ERRORS, **UNAVAILABLE}
RETRY_AFTER_S = 5
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": S.ErrorOut, "description": "no such object"}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": S.ErrorOut, "description": "not possible in this state"}}
BAD_BODY: dict[int | str, dict[str, Any]] = {400: {"model": S.ErrorOut, "description": "the body is not JSON"}}
HTML: dict[int | str, dict[str, Any]] = {200: {"content": {"text/html": {"schema": {"type": "string"}}}}}


class Background:
    """Actions started by the API in threads (one at a time per name); ``join`` waits for them (tests, shutdown)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}

    def start(self, name: str, fn: Callable[[], Any]) -> bool:
        """Start ``fn`` in a thread called ``name``; False if one by that name is still running."""
        with self._lock:
            t = self._threads.get(name)
            if t is not None and t.is_alive():
                return False

            def main() -> None:
                try:
                    fn()
                except Exception:
                    log.exception("background action %s failed", name)

            t = threading.Thread(target=main, name=f"driftloop-api-{name}", daemon=True)
            self._threads[name] = t
            t.start()
            return True

    def join(self, timeout: float | None = None) -> None:
        with self._lock:
            threads = list(self._threads.values())
        for t in threads:
            t.join(timeout)


def _not_found(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail)


def _conflict(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, detail)


def _report_file(path: str, reports_dir: str) -> FsPath | None:
    """The report at ``path`` with links resolved, if it is an HTML file inside ``reports_dir`` (also resolved)."""
    try:
        p = FsPath(path).resolve(strict=True)
        root = FsPath(reports_dir).resolve()
    except (OSError, RuntimeError):  # missing, or a symlink loop
        return None
    return p if p.suffix == ".html" and p.is_file() and p.is_relative_to(root) else None


def _row(r: Mapping[Any, Any]) -> dict[str, Any]:
    return dict(r)


def _broker_reachable(servers: list[str], timeout: float) -> tuple[bool, str]:
    """TCP connect to each bootstrap server; reachable when one accepts."""
    errors = []
    for hp in servers:
        host, _, port = hp.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        try:
            with socket.create_connection((host, int(port)), timeout=timeout):
                return True, f"{hp} reachable"
        except (OSError, ValueError) as e:
            errors.append(f"{hp}: {e}")
    return False, "no bootstrap server reachable (" + "; ".join(errors) + "); check kafka.bootstrap_servers"


def create_app(settings: Settings, engine: Engine, *, instance: str | None = None) -> FastAPI:
    """The API over ``engine`` with ``settings`` (tokens, retrain policies, targets, jobs)."""
    from driftloop.clikit import default_instance

    instance = instance or default_instance() + ":api"
    api = settings.api
    read = require_read(api)
    admin = require_admin(api)
    ReadAuth = Annotated[Principal, Depends(read)]
    AdminAuth = Annotated[Principal, Depends(admin)]
    registry = make_registry(engine)
    background = Background()

    app = FastAPI(
        title="driftloop",
        version="1",
        description="Drift monitoring, alerts and the retrain loop of a driftloop daemon. Mutating endpoints need "
        "`Authorization: Bearer <token>` with an admin token from `api.tokens`; read endpoints are open unless "
        "`api.read_requires_token`. A route that finds the database unreachable answers 503 with `Retry-After`.",
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.background = background

    def report_url(wid: int) -> str:
        base = (api.public_url or "").rstrip("/")
        return f"{base}/reports/{wid}"

    def window_out(r: Mapping[Any, Any]) -> dict[str, Any]:
        d = _row(r)
        d["has_report"] = bool(d.get("report_path"))
        d["report_url"] = report_url(d["id"]) if d["has_report"] else None
        return d

    # -- health ---------------------------------------------------------------------------------
    @app.get("/healthz", response_model=S.Health, tags=["health"], summary="The process is up")
    def healthz() -> S.Health:
        return S.Health()

    @app.get("/readyz", response_model=S.Ready, tags=["health"], summary="Database and broker reachable",
             responses={503: {"model": S.Ready, "description": "a dependency is unreachable"}})  # fmt: skip
    def readyz(response: Response) -> S.Ready:
        checks: dict[str, S.Check] = {}
        try:
            with engine.connect() as c:
                c.execute(text("SELECT 1"))
            checks["database"] = S.Check(ok=True, detail=f"{engine.dialect.name} reachable")
        except Exception as e:
            checks["database"] = S.Check(ok=False, detail=f"database unreachable: {type(e).__name__}: "
                                         f"{str(e).splitlines()[0][:300]}; check database.url")  # fmt: skip
        ok, why = _broker_reachable(list(settings.kafka.bootstrap_servers), 2.0)
        checks["broker"] = S.Check(ok=ok, detail=why)
        ready = all(c.ok for c in checks.values())
        if not ready:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return S.Ready(status="ready" if ready else "not ready", checks=checks)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics (text exposition format)",
             response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})  # fmt: skip
    def metrics(_: ReadAuth) -> Response:
        return Response(render(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- windows and drift ----------------------------------------------------------------------
    from driftloop.monitor.tables import drift_results, monitor_windows, window_metrics

    win_cols = [c for c in monitor_windows.c if c.name not in ("first_id", "last_id", "ref_start", "ref_end")]

    @app.get("/api/v1/windows", response_model=list[S.Window], tags=["monitoring"], responses=ERRORS,
             summary="Checked windows, newest first")  # fmt: skip
    def list_windows(_: ReadAuth, model: ModelFilter = None,
                     status_: Annotated[Literal["ok", "insufficient_data", "error"] | None,
                                        Query(alias="status")] = None,
                     limit: Limit = 100, offset: Offset = 0) -> list[dict[str, Any]]:  # fmt: skip
        q = select(*win_cols).order_by(monitor_windows.c.id.desc()).limit(limit).offset(offset)
        if model:
            q = q.where(monitor_windows.c.model_id == model)
        if status_:
            q = q.where(monitor_windows.c.status == status_)
        with engine.connect() as c:
            return [window_out(r) for r in c.execute(q).mappings()]

    @app.get("/api/v1/windows/{window_id}", response_model=S.WindowDetail, tags=["monitoring"],
             responses={**ERRORS, **NOT_FOUND}, summary="One window with its metrics")  # fmt: skip
    def get_window(window_id: Id, _: ReadAuth) -> dict[str, Any]:
        with engine.connect() as c:
            r = c.execute(select(*win_cols).where(monitor_windows.c.id == window_id)).mappings().first()
            if r is None:
                raise _not_found(f"no window {window_id}; list them at /api/v1/windows")
            ms = c.execute(select(window_metrics.c.name, window_metrics.c.value)
                           .where(window_metrics.c.window_id == window_id)).all()  # fmt: skip
        return {**window_out(r), "metrics": {m.name: m.value for m in ms}}

    @app.get("/api/v1/windows/{window_id}/drift", response_model=list[S.DriftResult], tags=["monitoring"],
             responses={**ERRORS, **NOT_FOUND}, summary="Per-feature drift results of a window")  # fmt: skip
    def window_drift(window_id: Id, _: ReadAuth) -> list[dict[str, Any]]:
        with engine.connect() as c:
            if c.execute(select(monitor_windows.c.id).where(monitor_windows.c.id == window_id)).first() is None:
                raise _not_found(f"no window {window_id}; list them at /api/v1/windows")
            q = select(drift_results).where(drift_results.c.window_id == window_id).order_by(drift_results.c.id)
            return [_row(r) for r in c.execute(q).mappings()]

    # response_class=Response (not HTMLResponse): the error responses are JSON, and the spec says so
    @app.get("/reports/{window_id}", response_class=Response, tags=["monitoring"],
             responses={**ERRORS, **NOT_FOUND, **HTML}, summary="The window's Evidently HTML report")  # fmt: skip
    def report(window_id: Id, _: ReadAuth) -> Response:
        with engine.connect() as c:
            path = c.execute(select(monitor_windows.c.report_path).where(monitor_windows.c.id == window_id)).scalar()
        # only a path written by the monitor into the database is ever served, never one from the request
        if not path:
            raise _not_found(f"window {window_id} has no report (unknown window, or monitor.reports was off)")
        p = _report_file(path, settings.monitor.reports_dir)
        if p is None:  # the path only goes to the log: a response must not map the server's filesystem
            log.warning("report of window %d not served: %s is missing, not HTML or outside monitor.reports_dir (%s)",
                        window_id, path, settings.monitor.reports_dir)  # fmt: skip
            raise _not_found(f"the report file of window {window_id} is unavailable (deleted, outside "
                             "monitor.reports_dir, or written by another machine's monitor)")  # fmt: skip
        return FileResponse(p, media_type="text/html; charset=utf-8")

    # -- alerts ---------------------------------------------------------------------------------
    from driftloop.monitor.alerts.engine import acknowledge
    from driftloop.monitor.alerts.tables import OPEN_STATES, alerts

    alert_cols = [c for c in alerts.c if c.name not in ("group_key", "last_notified_at")]

    @app.get("/api/v1/alerts", response_model=list[S.Alert], tags=["alerts"], responses=ERRORS,
             summary="Alerts, newest first")  # fmt: skip
    def list_alerts(_: ReadAuth,
                    state: Annotated[Literal["open", "fired", "acknowledged", "resolved"] | None,
                                     Query(description="open = fired or acknowledged")] = None,
                    model: ModelFilter = None, rule: NameFilter = None,
                    limit: Limit = 100, offset: Offset = 0) -> list[dict[str, Any]]:  # fmt: skip
        q = select(*alert_cols).order_by(alerts.c.id.desc()).limit(limit).offset(offset)
        if state == "open":
            q = q.where(alerts.c.state.in_(OPEN_STATES))
        elif state:
            q = q.where(alerts.c.state == state)
        if model:
            q = q.where(alerts.c.model_id == model)
        if rule:
            q = q.where(alerts.c.rule == rule)
        with engine.connect() as c:
            return [_row(r) for r in c.execute(q).mappings()]

    def get_alert_row(alert_id: int) -> dict[str, Any]:
        with engine.connect() as c:
            r = c.execute(select(*alert_cols).where(alerts.c.id == alert_id)).mappings().first()
        if r is None:
            raise _not_found(f"no alert {alert_id}; list them at /api/v1/alerts")
        return _row(r)

    @app.get("/api/v1/alerts/{alert_id}", response_model=S.Alert, tags=["alerts"],
             responses={**ERRORS, **NOT_FOUND})  # fmt: skip
    def get_alert(alert_id: Id, _: ReadAuth) -> dict[str, Any]:
        return get_alert_row(alert_id)

    @app.post("/api/v1/alerts/{alert_id}/ack", response_model=S.AckResult, tags=["alerts"],
              responses={**ERRORS, **NOT_FOUND, **CONFLICT},
              summary="Acknowledge a fired alert (no more reminders; it still resolves)")  # fmt: skip
    def ack_alert(alert_id: Id, who: AdminAuth) -> dict[str, Any]:
        if not acknowledge(engine, alert_id, who.actor):
            a = get_alert_row(alert_id)
            raise _conflict(f"alert {alert_id} is {a['state']}; only a fired alert can be acknowledged")
        log.info("alert %d acknowledged by %s", alert_id, who.actor)
        return {"alert": get_alert_row(alert_id)}

    # -- jobs -----------------------------------------------------------------------------------
    from driftloop.jobs import JobContext, job_runs, run_named
    from driftloop.retrain.tables import retrain_jobs

    @app.get("/api/v1/jobs", response_model=list[S.JobRun], tags=["jobs"], responses=ERRORS,
             summary="Scheduled-job runs, newest first")  # fmt: skip
    def list_job_runs(_: ReadAuth, job: Annotated[JobName | None, Query()] = None,
                      status_: Annotated[Literal["running", "succeeded", "failed", "skipped"] | None,
                                         Query(alias="status")] = None,
                      limit: Limit = 100, offset: Offset = 0) -> list[dict[str, Any]]:  # fmt: skip
        q = select(job_runs).order_by(job_runs.c.id.desc()).limit(limit).offset(offset)
        if job:
            q = q.where(job_runs.c.job == job)
        if status_:
            q = q.where(job_runs.c.status == status_)
        with engine.connect() as c:
            return [_row(r) for r in c.execute(q).mappings()]

    @app.post("/api/v1/checks/run", response_model=S.Accepted, status_code=status.HTTP_202_ACCEPTED, tags=["jobs"],
              responses={**ERRORS, **CONFLICT},
              summary="Run a scheduled job (default: the drift check) once now, in the background")  # fmt: skip
    def run_check(who: AdminAuth, job: Annotated[JobName, Query()] = "drift_check") -> S.Accepted:
        ctx = JobContext(settings, engine, instance)
        if not background.start(f"job-{job}", lambda: run_named(job, ctx)):
            raise _conflict(f"{job} started from the API is still running; see /api/v1/jobs?job={job}")
        log.info("job %s started by %s", job, who.actor)
        return S.Accepted(job=job, detail=f"{job} started; its run appears at /api/v1/jobs?job={job}")

    rj_cols = [c for c in retrain_jobs.c if c.name not in ("work_dir", "pid")]

    @app.get("/api/v1/retrain/jobs", response_model=list[S.RetrainJob], tags=["retrain"], responses=ERRORS,
             summary="Retrain jobs, newest first")  # fmt: skip
    def list_retrain_jobs(_: ReadAuth, policy: NameFilter = None,
                          status_: Annotated[Literal["queued", "running", "succeeded", "failed", "cancelled"] | None,
                                             Query(alias="status")] = None,
                          limit: Limit = 100, offset: Offset = 0) -> list[dict[str, Any]]:  # fmt: skip
        q = select(*rj_cols).order_by(retrain_jobs.c.id.desc()).limit(limit).offset(offset)
        if policy:
            q = q.where(retrain_jobs.c.policy == policy)
        if status_:
            q = q.where(retrain_jobs.c.status == status_)
        with engine.connect() as c:
            return [_row(r) for r in c.execute(q).mappings()]

    @app.get("/api/v1/retrain/jobs/{job_id}", response_model=S.RetrainJob, tags=["retrain"],
             responses={**ERRORS, **NOT_FOUND})  # fmt: skip
    def get_retrain_job(job_id: Id, _: ReadAuth) -> dict[str, Any]:
        with engine.connect() as c:
            r = c.execute(select(*rj_cols).where(retrain_jobs.c.id == job_id)).mappings().first()
        if r is None:
            raise _not_found(f"no retrain job {job_id}; list them at /api/v1/retrain/jobs")
        return _row(r)

    @app.post("/api/v1/retrain/{policy}/run", response_model=S.Accepted, status_code=status.HTTP_202_ACCEPTED,
              tags=["retrain"], responses={**ERRORS, **NOT_FOUND, **CONFLICT},
              summary="Queue a retrain of a policy (the leader's worker runs it)")  # fmt: skip
    def run_retrain(policy: PolicyName, who: AdminAuth,
                    force: Annotated[bool, Query(description="run even if not triggered, in cooldown or over "
                                                             "max_runs_per_day")] = False) -> S.Accepted:  # fmt: skip
        from driftloop.retrain.queue import enqueue
        from driftloop.retrain.runner import RetrainError, RetrainPolicyJob, find_policy

        try:
            p = find_policy(settings, policy)
        except RetrainError as e:
            raise _not_found(str(e)) from None
        trigger: dict[str, Any] = {"kind": "manual", "forced": force, "by": who.actor}
        if not force:
            trig, why = RetrainPolicyJob(settings, engine, instance).check(p, datetime.now(UTC))
            if trig is None:
                raise _conflict(f"policy {policy} may not run now: {why} (add ?force=true to run anyway)")
            trigger = {**trig, "kind": "manual", "by": who.actor}
        q = enqueue(engine, p, trigger, who.actor)
        if not q.created:
            raise _conflict(f"retrain job {q.job_id} of policy {policy} is still {q.status}; "
                            f"cancel it at /api/v1/retrain/jobs/{q.job_id}/cancel or wait")  # fmt: skip
        log.info("retrain job %d of %s queued by %s", q.job_id, policy, who.actor)
        return S.Accepted(job="retrain", job_id=q.job_id,
                          detail=f"retrain job {q.job_id} queued; the leader runs it; "
                                 f"follow it at /api/v1/retrain/jobs/{q.job_id}")  # fmt: skip

    @app.post("/api/v1/retrain/jobs/{job_id}/cancel", response_model=S.CancelResult, tags=["retrain"],
              responses={**ERRORS, **NOT_FOUND}, summary="Ask a queued or running retrain job to stop")  # fmt: skip
    def cancel_retrain(job_id: Id, who: AdminAuth) -> S.CancelResult:
        from driftloop.retrain.runner import RetrainError, request_cancel

        try:
            st = request_cancel(engine, job_id)
        except RetrainError as e:
            raise _not_found(str(e)) from None
        log.info("retrain job %d: cancel requested by %s (%s)", job_id, who.actor, st)
        return S.CancelResult(job_id=job_id, status=st)

    # -- models ---------------------------------------------------------------------------------
    from driftloop.retrain.registry import ModelRegistry, RegistryError
    from driftloop.retrain.registry import ModelVersion as MV
    from driftloop.retrain.tables import model_versions

    reg = ModelRegistry(engine)

    def version_out(v: MV, aliases: Mapping[str, int], detail: bool = False) -> dict[str, Any]:
        d = v.to_dict()
        d["created_at"] = v.created_at
        d["aliases"] = sorted(a for a, vid in aliases.items() if vid == v.id)
        d["gate_promote"] = bool(v.gate["promote"]) if v.gate and "promote" in v.gate else None
        if detail:
            d["events"] = [{k: e[k] for k in ("id", "action", "from_status", "to_status", "actor", "reason",
                                               "details", "at")} for e in reg.events(v.family, v.id)]  # fmt: skip
        return d

    def find(family: str, version: str) -> MV:
        if version.isdigit() and int(version) > MAX_ID:
            raise _not_found(f"model {family!r} has no version {version!r}")
        try:
            return reg.find(family, version)
        except RegistryError as e:
            raise _not_found(str(e)) from None

    def targets(family: str) -> list[Any]:
        from driftloop.retrain.runner import targets_for_family

        try:
            return targets_for_family(settings, family)
        except Exception as e:
            raise _conflict(f"cannot build the promotion targets of {family!r}: {e}; check retrain.targets") from None

    @app.get("/api/v1/models", response_model=list[S.ModelFamily], tags=["models"], responses=ERRORS,
             summary="Model families with their champion")  # fmt: skip
    def list_models(_: ReadAuth) -> list[dict[str, Any]]:
        out = []
        with engine.connect() as c:
            counts = c.execute(select(model_versions.c.family, model_versions.c.status, func.count())
                               .group_by(model_versions.c.family, model_versions.c.status)).all()  # fmt: skip
        by: dict[str, dict[str, int]] = {}
        for fam, st, n in counts:
            by.setdefault(fam, {})[st] = int(n)
        for fam in sorted(by):
            al = reg.aliases(fam)
            champ = reg.get(al["champion"]) if "champion" in al else None
            prev = reg.get(al["previous"]) if "previous" in al else None
            out.append({"family": fam, "champion": version_out(champ, al) if champ else None,
                        "previous": version_out(prev, al) if prev else None,
                        "versions": sum(by[fam].values()), "by_status": by[fam]})  # fmt: skip
        return out

    @app.get("/api/v1/models/{family}/versions", response_model=list[S.ModelVersion], tags=["models"],
             responses={**ERRORS, **NOT_FOUND}, summary="A family's versions, oldest first")  # fmt: skip
    def list_versions(family: Family, _: ReadAuth) -> list[dict[str, Any]]:
        vs = reg.versions(family)
        if not vs:
            raise _not_found(f"no model family {family!r}; see /api/v1/models")
        al = reg.aliases(family)
        return [version_out(v, al) for v in vs]

    @app.get("/api/v1/models/{family}/versions/{version}", response_model=S.ModelVersionDetail, tags=["models"],
             responses={**ERRORS, **NOT_FOUND}, summary="One version: lineage, gate and audit log")  # fmt: skip
    def get_version(family: Family, version: VersionRef, _: ReadAuth) -> dict[str, Any]:
        v = find(family, version)
        return version_out(v, reg.aliases(family), detail=True)

    Reason = Annotated[S.ActionBody | None, Body()]

    @app.post("/api/v1/models/{family}/versions/{version}/approve", response_model=S.ModelVersionDetail,
              tags=["models"], responses={**ERRORS, **NOT_FOUND, **CONFLICT, **BAD_BODY},
              summary="Approve a version waiting for approval, then promote it")  # fmt: skip
    def approve(family: Family, version: VersionRef, who: AdminAuth, body: Reason = None) -> dict[str, Any]:
        v = find(family, version)
        ts = targets(family)
        try:
            v = reg.approve(v.id, ts, actor=who.actor, reason=body.reason if body else None)
        except RegistryError as e:
            raise _conflict(str(e)) from None
        return version_out(v, reg.aliases(family), detail=True)

    @app.post("/api/v1/models/{family}/versions/{version}/promote", response_model=S.ModelVersionDetail,
              tags=["models"], responses={**ERRORS, **NOT_FOUND, **CONFLICT, **BAD_BODY},
              summary="Make a version the champion on every target, then in the registry")  # fmt: skip
    def promote(family: Family, version: VersionRef, who: AdminAuth, body: Reason = None) -> dict[str, Any]:
        v = find(family, version)
        try:
            v = reg.promote(v.id, targets(family), actor=who.actor,
                            reason=(body.reason if body else None) or "manual promotion")
        except RegistryError as e:
            raise _conflict(str(e)) from None
        return version_out(v, reg.aliases(family), detail=True)

    @app.post("/api/v1/models/{family}/rollback", response_model=S.ModelVersionDetail, tags=["models"],
              responses={**ERRORS, **NOT_FOUND, **CONFLICT, **BAD_BODY},
              summary="Serve the previous champion again; the current one becomes rolled_back")  # fmt: skip
    def rollback(family: Family, who: AdminAuth, body: Reason = None) -> dict[str, Any]:
        if not reg.versions(family):
            raise _not_found(f"no model family {family!r}; see /api/v1/models")
        try:
            v = reg.rollback(family, targets(family), actor=who.actor,
                             reason=(body.reason if body else None) or "manual rollback")
        except RegistryError as e:
            raise _conflict(str(e)) from None
        return version_out(v, reg.aliases(family), detail=True)

    # -- status page ----------------------------------------------------------------------------
    from driftloop.api.status import render_status

    @app.get("/", response_class=Response, tags=["status"], summary="Status page (HTML)",
             responses={**ERRORS, **HTML})  # fmt: skip
    def status_page(_: ReadAuth) -> Response:
        with engine.connect():  # unreachable: a 503 (below); a section whose table is missing shows its error
            pass
        return HTMLResponse(render_status(engine, settings))

    def _database_unavailable(_req: Any, exc: Exception) -> JSONResponse:
        # one handler for every route: a lost database is a retryable 503, never a 500; the error itself (host,
        # port, database name) goes to the log only
        log.warning("database unavailable, answered 503: %s: %s", type(exc).__name__,
                    str(exc).splitlines()[0][:300] if str(exc) else "")  # fmt: skip
        return JSONResponse({"detail": "the database is unavailable; retry later (see /readyz)"},
                            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                            headers={"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip

    # OperationalError: connection refused/lost, database gone; InterfaceError: a closed connection;
    # PoolTimeoutError: every pooled connection is busy (a database that stopped answering)
    for exc_type in (OperationalError, InterfaceError, PoolTimeoutError):
        app.add_exception_handler(exc_type, _database_unavailable)

    @app.exception_handler(RegistryError)
    def _registry_error(_req: Any, exc: RegistryError) -> JSONResponse:  # a RegistryError not mapped above
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_409_CONFLICT)

    return app
