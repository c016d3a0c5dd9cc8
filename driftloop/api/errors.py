"""Exception handlers of the API: a lost database is a retryable 503 on every route, never a 500."""

import logging
from typing import Any

from fastapi import FastAPI, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from driftloop.retrain.registry import RegistryError

log = logging.getLogger("driftloop.api")

RETRY_AFTER_S = 5


def database_unavailable(_req: Any, exc: Exception) -> JSONResponse:
    """503 with ``Retry-After``; the error itself (host, port, database name) goes to the log only."""
    log.warning("database unavailable, answered 503: %s: %s", type(exc).__name__,
                str(exc).splitlines()[0][:300] if str(exc) else "")  # fmt: skip
    return JSONResponse({"detail": "the database is unavailable; retry later (see /readyz)"},
                        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                        headers={"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip


def registry_error(_req: Any, exc: RegistryError) -> JSONResponse:
    """A RegistryError no route mapped itself: the registry refused a change in this state."""
    return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_409_CONFLICT)


def install_error_handlers(app: FastAPI) -> None:
    # OperationalError: connection refused/lost, database gone; InterfaceError: a closed connection;
    # PoolTimeoutError: every pooled connection is busy (a database that stopped answering)
    for exc_type in (OperationalError, InterfaceError, PoolTimeoutError):
        app.add_exception_handler(exc_type, database_unavailable)
    app.add_exception_handler(RegistryError, registry_error)  # type: ignore[arg-type]
