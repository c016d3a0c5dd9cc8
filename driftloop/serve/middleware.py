"""Middleware of the serving app: the body cap, the API key, request metrics, and vLLM-shaped errors."""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from driftloop.serve.errors import ServeError

if TYPE_CHECKING:
    from driftloop.serve.app import ServeState


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes, by Content-Length or counted as it arrives.

    Why: FastAPI reads a whole body before validating it, so without a cap one request (a chunked one too)
    holds as much memory as its client sends. The body is read here up to the limit and replayed to the app;
    the rest of a refused body is discarded by uvicorn, so the client still reads the 413 (tested over HTTP).
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                with contextlib.suppress(ValueError):
                    declared = int(v)
        if declared is not None and declared > self.limit:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":  # the client went away
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(body)
            if not msg.get("more_body"):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # e.g. http.disconnect, for streaming responses
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = ServeError(413, f"Request body too large: this server accepts at most {self.limit} bytes "
                              "(serve.max_body_bytes)", "RequestTooLargeError")  # fmt: skip
        await err.response()(scope, receive, send)


# the paths of the routes: a metrics label for requests answered before routing (401, 413), else "other"
ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/load_lora_adapter",
           "/v1/unload_lora_adapter", "/v1/feedback", "/metrics", "/health")  # fmt: skip


def _endpoint_label(request: Request) -> str:
    route = request.scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "other"))
    path = request.url.path  # answered before routing, e.g. 413
    return path if path in ROUTES else "other"


def install_middleware(app: FastAPI, st: ServeState) -> None:
    app.add_middleware(BodyLimit, limit=st.settings.serve.max_body_bytes)  # inside _observe: 401 before reading

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
        return ServeError(400, "; ".join(parts) or "invalid request").response()

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Any]) -> Response:
        t0 = time.perf_counter()
        path = request.url.path
        if st.api_key and path.startswith("/v1"):
            got = request.headers.get("authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {st.api_key}".encode()):
                st.metrics.requests.labels(path if path in ROUTES else "other", "401").inc()
                return JSONResponse({"error": "Unauthorized"}, status_code=401)
        try:
            response: Response = await call_next(request)
        except Exception:
            st.metrics.requests.labels(_endpoint_label(request), "500").inc()
            raise
        label = _endpoint_label(request)
        st.metrics.requests.labels(label, str(response.status_code)).inc()
        st.metrics.latency.labels(label).observe(time.perf_counter() - t0)
        return response
