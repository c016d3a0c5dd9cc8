"""Helpers for the monitoring tests: rows written straight into the ingest tables (SQLAlchemy Core)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert

from driftloop.store.models import feedback, interactions

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def interaction(i: int, *, model: str = "m", ts: datetime | None = None, prompt: str | None = None,
                response: str | None = "fine, thanks", version: str | None = "v1", latency: float | None = 100.0,
                meta: dict[str, Any] | None = None, reference: str | None = None,
                prefix: str = "r") -> dict[str, Any]:  # fmt: skip
    """One interactions row; ``i`` makes the request id and the default timestamp (T0 + i s)."""
    return {
        "request_id": f"{prefix}-{model}-{i}",
        "ts": ts or T0 + timedelta(seconds=i),
        "model_id": model,
        "model_version": version,
        "prompt": prompt if prompt is not None else f"question number {i} about the weather",
        "messages": None,
        "response": response,
        "latency_ms": latency,
        "tokens_in": 8,
        "tokens_out": 3,
        "finish_reason": "stop",
        "user_hash": None,
        "session_id": None,
        "reference": reference,
        "metadata": meta,
        "source_topic": "test",
        "source_partition": 0,
        "source_offset": i,
        "ingested_at": datetime.now(UTC),
    }


def insert_rows(engine: Engine, rows: Iterable[dict[str, Any]],
                scores: dict[str, float] | None = None) -> None:  # fmt: skip
    """Insert interactions and, for request ids in ``scores``, one feedback row each."""
    rows = list(rows)
    now = datetime.now(UTC)
    with engine.begin() as c:
        if rows:
            c.execute(insert(interactions), rows)
        fb = [
            {"event_key": f"fb-{rid}", "request_id": rid, "ts": now, "score": sc, "comment": None,
             "correction": None, "source": "event", "metadata": None, "ingested_at": now}
            for rid, sc in (scores or {}).items()
        ]  # fmt: skip
        if fb:
            c.execute(insert(feedback), fb)
