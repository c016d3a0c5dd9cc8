"""The receiver's routes: OTLP/HTTP ``/v1/traces`` and ``/v1/logs``, and ``POST /v1/ingest/{openai,litellm,v1}``.

OTLP answers follow the OTLP/HTTP specification: 200 with an ``Export*ServiceResponse`` in the request's
encoding (``partial_success`` set only when items were rejected), and a ``google.rpc.Status`` body in that
encoding for errors, with ``Retry-After`` on 503. The ``/v1/ingest`` routes answer JSON. Everything but
HTTP framing is in :mod:`driftloop.api.receiver`; docs/receiver.md is the user's guide.

No ``from __future__ import annotations``: FastAPI reads the endpoint signatures.
"""

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsPartialSuccess, ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceResponse,
)
from pydantic import BaseModel, Field
from starlette.routing import Route

from driftloop.api import schemas as S
from driftloop.api.auth import Principal, bearer
from driftloop.api.metrics import RECEIVER_REQUESTS
from driftloop.api.params import AUTH_ERRORS
from driftloop.api.receiver import (
    INTERNAL,
    JSON,
    MAX_LISTED_ERRORS,
    NDJSON,
    PROTOBUF,
    Outcome,
    Receiver,
    ReceiverError,
    content_encoding,
    media_type,
    read_capped,
)

log = logging.getLogger("driftloop.api.receiver")

#: the /v1/ingest/{format} formats (OTLP has its standard paths)
INGEST_FORMATS = ("openai", "litellm", "v1")


class ItemError(BaseModel):
    reason: str = Field(description="stable reason (as in rejected_messages.reason)")
    detail: str


class IngestOut(BaseModel):
    """What became of a /v1/ingest body: every accepted record is in Kafka (acknowledged) already."""

    accepted: int = Field(description="records produced and acknowledged by the broker")
    skipped: int = Field(description="items that are not LLM calls, ignored")
    rejected: int = Field(description="malformed items, not produced (400 when nothing was accepted)")
    errors: list[ItemError] = Field(description=f"the first {MAX_LISTED_ERRORS} rejects")


_ERR = {"model": S.ErrorOut}
_RETRY = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
_WHEN = {
    400: "the body is malformed (not this format, not valid gzip)",
    413: "body (also once decompressed) over api.receiver.max_body_bytes, or more than api.receiver.max_records records",
    415: "unsupported Content-Type or Content-Encoding",
    500: "the receiver has no topic to produce to (configuration)",
    503: "the broker did not acknowledge the records in time; retry after Retry-After",
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    **{code: {**_ERR, "description": d, **({"headers": _RETRY} if code == 503 else {})} for code, d in _WHEN.items()},
}
# OTLP errors carry a google.rpc.Status in the request's encoding (auth errors stay FastAPI's JSON)
_STATUS = {"type": "object", "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
           "required": ["code", "message"]}  # fmt: skip
OTLP_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Export*ServiceResponse in the request's encoding",
          "content": {PROTOBUF: {"schema": {"type": "string", "format": "binary"}}, JSON: {"schema": {"type": "object"}}}},
    **AUTH_ERRORS,
    **{code: {"description": d + " (a google.rpc.Status)", **({"headers": _RETRY} if code == 503 else {}),
              "content": {PROTOBUF: {"schema": {"type": "string", "format": "binary"}}, JSON: {"schema": _STATUS}}}
       for code, d in _WHEN.items()},
}  # fmt: skip


def _otlp_body(types: tuple[str, ...]) -> dict[str, Any]:
    content = {t: {"schema": {"type": "string", "format": "binary"} if t == PROTOBUF else {"type": "object"}}
               for t in types}  # fmt: skip
    return {"requestBody": {"required": True, "content": content}}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def rpc_status(code: int, message: str) -> bytes:
    """A ``google.rpc.Status`` in protobuf (field 1 code, field 2 message): OTLP's error body.

    Encoded by hand: two fields do not justify a dependency on googleapis-common-protos.
    """
    msg = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(msg)) + msg


def _otlp_error(e: ReceiverError, mt: str) -> Response:
    if mt == PROTOBUF:
        return Response(rpc_status(e.code, e.message), e.status, headers=e.headers, media_type=PROTOBUF)
    return Response(json.dumps({"code": e.code, "message": e.message}), e.status, headers=e.headers,
                    media_type=JSON)  # fmt: skip


def _json_error(e: ReceiverError) -> Response:
    return JSONResponse({"detail": e.message}, e.status, headers=e.headers)


async def _handle(receiver: Receiver, fmt: str, request: Request, allowed: tuple[str, ...],
                  answer: Callable[[Outcome, str], Response], error: Callable[[ReceiverError, str], Response]
                  ) -> Response:  # fmt: skip
    """Read, check and accept one request; every answer (and its status) is counted."""
    mt = JSON
    try:
        mt = media_type(request.headers.get("content-type"), allowed)
        gz = content_encoding(request.headers.get("content-encoding"))
        body = await read_capped(request.stream(), request.headers.get("content-length"),
                                 receiver.limits.max_body_bytes)  # fmt: skip
        # the receiver's own threads: anyio's run_in_threadpool (capacity limiter, cancel scopes) costs more
        # per call, and accept() cannot be cancelled anyway
        ct = JSON if mt == NDJSON else mt
        out = await asyncio.get_running_loop().run_in_executor(receiver.executor, receiver.accept, fmt, body, gz, ct)
        resp = answer(out, mt)
    except ReceiverError as e:
        resp = error(e, mt)
    except Exception:
        log.exception("receiver: %s request failed", fmt)
        resp = error(ReceiverError(500, INTERNAL, "internal error; see the server log"), mt)
    RECEIVER_REQUESTS.labels(fmt, str(resp.status_code)).inc()
    return resp


def _otlp_answer(response: type[Message], partial: type[Message], field: str) -> Callable[[Outcome, str], Response]:
    def answer(out: Outcome, mt: str) -> Response:
        msg = response()
        if out.rejected:  # the spec: leave partial_success unset on full success
            msg.partial_success.CopyFrom(partial(**{field: len(out.rejected), "error_message": out.error_summary()}))
        body = msg.SerializeToString() if mt == PROTOBUF else json_format.MessageToJson(msg, indent=None).encode()
        return Response(body, 200, media_type=mt)

    return answer


def _ingest_answer(out: Outcome, _mt: str) -> Response:
    errors = [{"reason": r, "detail": d} for r, d in out.rejected[:MAX_LISTED_ERRORS]]
    body = {"accepted": out.produced, "skipped": out.skipped, "rejected": len(out.rejected), "errors": errors}
    # nothing usable at all: a client posting one bad record must not read this as success
    if out.rejected and not out.produced and not out.skipped:
        return JSONResponse({"detail": "nothing accepted: " + out.error_summary(), **body}, 400)
    return JSONResponse(body, 200)


def lean_route(ingest_auth: Callable[..., Principal]) -> type[APIRoute]:
    """A route class (FastAPI's documented ``get_route_handler`` hook) that serves an endpoint
    ``endpoint(request, principal)`` without FastAPI's dependency solving.

    Why: per request, solving the signature's one dependency ran the synchronous token check in a worker
    thread (a thread hop of its own, beside the one for the mapping). The handler calls the same
    bearer scheme and ``ingest_auth`` inline, so 401/403 (an HTTPException, answered by the app's
    handlers) are unchanged; the endpoint's signature still declares the dependency for the OpenAPI docs.
    """

    class LeanRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            endpoint = self.endpoint

            async def handler(request: Request) -> Response:
                who = ingest_auth(await bearer(request))
                return cast("Response", await endpoint(request, who))

            return handler

    return LeanRoute


def router(receiver: Receiver, ingest_auth: Callable[..., Principal]) -> APIRouter:
    """The receiver's routes over ``receiver``; ``ingest_auth`` admits ingest and admin tokens."""
    routes = APIRouter(tags=["receiver"], route_class=lean_route(ingest_auth))
    Auth = Annotated[Principal, Depends(ingest_auth)]
    otlp_types = (PROTOBUF, JSON)

    traces_answer = _otlp_answer(ExportTraceServiceResponse, ExportTracePartialSuccess, "rejected_spans")
    logs_answer = _otlp_answer(ExportLogsServiceResponse, ExportLogsPartialSuccess, "rejected_log_records")

    @routes.post("/v1/traces", summary="OTLP/HTTP traces (GenAI spans become v1 records)", responses=OTLP_RESPONSES,
                 openapi_extra=_otlp_body(otlp_types), response_class=Response)  # fmt: skip
    async def traces(request: Request, _who: Auth) -> Response:
        """An ``ExportTraceServiceRequest`` (protobuf or JSON, gzip allowed); answered once the broker acked."""
        return await _handle(receiver, "otlp", request, otlp_types, traces_answer, _otlp_error)

    @routes.post("/v1/logs", summary="OTLP/HTTP logs (GenAI events become v1 records)", responses=OTLP_RESPONSES,
                 openapi_extra=_otlp_body(otlp_types), response_class=Response)  # fmt: skip
    async def logs(request: Request, _who: Auth) -> Response:
        """An ``ExportLogsServiceRequest`` (protobuf or JSON, gzip allowed); answered once the broker acked."""
        return await _handle(receiver, "otlp_logs", request, otlp_types, logs_answer, _otlp_error)

    ingest_types = (JSON, NDJSON)

    def add_format(fmt: str) -> None:
        async def ingest(request: Request, _who: Auth) -> Response:
            return await _handle(receiver, fmt, request, ingest_types, _ingest_answer, lambda e, _mt: _json_error(e))

        ingest.__name__ = f"ingest_{fmt}"
        routes.add_api_route(f"/v1/ingest/{fmt}", ingest, methods=["POST"], summary=f"Ingest {fmt} records",
                             description=_FORMAT_DOCS[fmt], responses={200: {"model": IngestOut}, **RESPONSES},
                             openapi_extra=_otlp_body((JSON,)), response_class=Response)  # fmt: skip

    for fmt in INGEST_FORMATS:
        add_format(fmt)
    # any other format: a plain route (not in the spec) naming the ones there are
    routes.routes.append(Route("/v1/ingest/{format}", _unknown_format, methods=["POST"]))
    return routes


async def _unknown_format(request: Request) -> Response:
    fmt = request.path_params.get("format", "")
    return JSONResponse({"detail": f"unknown format {fmt!r}; POST to /v1/ingest/ one of {', '.join(INGEST_FORMATS)} "
                         "(OTLP goes to /v1/traces and /v1/logs)"}, 404)  # fmt: skip


_FORMAT_DOCS = {
    "openai": "OpenAI Chat Completions / Responses request+response pairs (an object, a JSON array or NDJSON).",
    "litellm": "LiteLLM StandardLoggingPayload (an object, a JSON array or NDJSON): the generic API logger's body.",
    "v1": "driftloop v1 log records and feedback events (an object, a JSON array or NDJSON).",
}
