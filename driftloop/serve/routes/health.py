"""``GET /metrics`` (Prometheus) and ``GET /health`` (instance, active adapter, log-record delivery)."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from driftloop.serve.deps import State

router = APIRouter()


@router.get("/metrics")
async def metrics(st: State) -> Response:
    return Response(st.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/health")
async def health(st: State) -> dict[str, Any]:
    stats = st.logger.stats() if st.logger is not None else None
    return {"status": "ok", "instance": st.instance, "started_at": st.started_at, "pid": os.getpid(),
            "model_id": st.model_id, "active_adapter": st.runtime.active,
            "log_records": None if stats is None else {
                "sent": stats.sent, "dropped": stats.dropped, "buffered": stats.buffered,
                "truncated": stats.truncated, "rejected": dict(stats.rejected_reasons),
                "last_error": stats.last_error}}  # fmt: skip
