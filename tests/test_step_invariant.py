"""The decode → write step commits a batch only when every message is a row or a reject row.

Unit-level (embedded SQLite, no broker): the dead-letter producer is made lazily, so a step
without any reject never touches Kafka, and a failing one is injected here.
"""

from __future__ import annotations

import json
import queue
from typing import Any

from sqlalchemy import create_engine, text

from driftloop.ingest.step import BatchWritten, DecodeWriteStep, Event, RawBatch, RawChunk, StepFailed
from driftloop.settings import load_settings


def _raw(values: list[bytes | None]) -> RawBatch:
    n = len(values)
    chunk = RawChunk("logs", 0, list(range(n)), [1_700_000_000_000] * n, [None] * n, list(values))
    return RawBatch(seq=1, generation=0, chunks=[chunk], offsets={("logs", 0): n}, n_messages=n)


def _good(i: int) -> bytes:
    return json.dumps({"request_id": f"r{i}", "prompt": "p", "response": "r", "model_id": "m"}).encode()


def _run(sqlite_url: str, raw: RawBatch, patch: Any) -> tuple[Event, int, int, list[Any]]:
    events: queue.Queue[Event] = queue.Queue()
    s = load_settings(None, database={"url": sqlite_url})
    step = DecodeWriteStep(s, events.put)
    patch(step)
    step.start()
    step.submit(raw)
    ev = events.get(timeout=60)
    step.close(10)
    eng = create_engine(sqlite_url)
    with eng.connect() as c:
        stored = c.execute(text("select count(*) from interactions")).scalar_one()
        offsets = c.execute(text("select count(*) from consumer_offsets")).scalar_one()
        rejects = list(c.execute(text("select reason, dlq_status, dlq_error from rejected_messages")).all())
    eng.dispose()
    return ev, stored, offsets, rejects


def test_a_reject_that_fails_part_way_commits_nothing(sqlite_url: str) -> None:
    def patch(step: DecodeWriteStep) -> None:
        def boom(*_a: Any, **_k: Any) -> None:
            raise RuntimeError("bug while recording a reject")

        step._reject = boom  # type: ignore[method-assign]

    ev, stored, offsets, rejects = _run(sqlite_url, _raw([_good(0), _good(1), b"not json", _good(3)]), patch)
    # before this invariant the retry wrote the two decoded rows with the whole batch's offsets
    assert isinstance(ev, StepFailed) and "decoding stopped after" in ev.error
    assert (stored, offsets, rejects) == (0, 0, [])


def test_a_dead_letter_producer_that_cannot_start_loses_nothing(sqlite_url: str) -> None:
    from kafka.errors import KafkaConnectionError

    def patch(step: DecodeWriteStep) -> None:
        def no_broker() -> Any:
            raise KafkaConnectionError("nobody listens")

        assert step.dlq is None
        orig_start = step.start

        def start() -> DecodeWriteStep:
            orig_start()
            assert step.dlq is not None
            step.dlq.make_producer = no_broker
            return step

        step.start = start  # type: ignore[method-assign]

    raw = _raw([_good(0), b"not json", None, _good(3)])
    ev, stored, offsets, rejects = _run(sqlite_url, raw, patch)
    assert isinstance(ev, BatchWritten) and not ev.dropped
    assert (stored, offsets) == (2, 1)
    assert sorted(r[0] for r in rejects) == ["invalid_json", "invalid_json"]
    assert [r[1] for r in rejects] == ["failed", "failed"]
    # the first send found no broker; the second was not tried for a while (no wait per reject)
    assert sorted(r[2].split(":")[0] for r in rejects) == ["broker_error", "unavailable"]
    assert ev.dlq_failures_by_reason == {"broker_error": 1, "unavailable": 1}
