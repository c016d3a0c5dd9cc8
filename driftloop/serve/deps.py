"""Dependencies of the serving routes: the app's :class:`~driftloop.serve.app.ServeState`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from driftloop.serve.app import ServeState


def serve_state(request: Request) -> ServeState:
    """The state ``create_serve_app`` put on the app (runtime, logger, metrics, pools, settings)."""
    st: ServeState = request.app.state.serve
    return st


State = Annotated[ServeState, Depends(serve_state)]
