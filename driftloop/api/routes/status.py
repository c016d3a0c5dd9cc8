"""``/``: the status page (HTML).

No ``from __future__ import annotations``: the endpoints use the router's local ``Annotated`` aliases.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import HTMLResponse

from driftloop.api.auth import Principal
from driftloop.api.deps import ApiDeps
from driftloop.api.params import ERRORS, HTML
from driftloop.api.status import render_status


def router(d: ApiDeps) -> APIRouter:
    routes = APIRouter()
    ReadAuth = Annotated[Principal, Depends(d.read)]

    @routes.get("/", response_class=Response, tags=["status"], summary="Status page (HTML)",
                responses={**ERRORS, **HTML})  # fmt: skip
    def status_page(_: ReadAuth) -> Response:
        # unreachable: a 503 (driftloop.api.errors); a section whose table is missing shows its error
        with d.engine.connect():
            pass
        return HTMLResponse(render_status(d.engine, d.settings))

    return routes
