"""Health: ``/healthz`` (liveness), ``/readyz`` (database and broker reachable), ``/metrics`` (Prometheus).

No ``from __future__ import annotations``: the endpoints use the router's local ``Annotated`` aliases.
"""

import socket
from typing import Annotated

from fastapi import APIRouter, Depends, Response, status
from sqlalchemy import text

from driftloop.api import schemas as S
from driftloop.api.auth import Principal
from driftloop.api.deps import ApiDeps
from driftloop.api.metrics import render


def broker_reachable(servers: list[str], timeout: float) -> tuple[bool, str]:
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


def router(d: ApiDeps) -> APIRouter:
    routes = APIRouter()
    ReadAuth = Annotated[Principal, Depends(d.read)]
    engine = d.engine

    @routes.get("/healthz", response_model=S.Health, tags=["health"], summary="The process is up")
    def healthz() -> S.Health:
        return S.Health()

    @routes.get("/readyz", response_model=S.Ready, tags=["health"], summary="Database and broker reachable",
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
        ok, why = broker_reachable(list(d.settings.kafka.bootstrap_servers), 2.0)
        checks["broker"] = S.Check(ok=ok, detail=why)
        ready = all(c.ok for c in checks.values())
        if not ready:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return S.Ready(status="ready" if ready else "not ready", checks=checks)

    @routes.get("/metrics", tags=["health"], summary="Prometheus metrics (text exposition format)",
                response_class=Response,
                responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})  # fmt: skip
    def metrics(_: ReadAuth) -> Response:
        return Response(render(d.registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    return routes
