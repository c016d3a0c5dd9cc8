"""Issue 16 acceptance with the real clients: the ``openai`` Python client, instrumented with
``opentelemetry-instrumentation-openai-v2`` (content off, legacy events, latest semconv on the span or in an
event) or with ``openinference-instrumentation-openai``, calls a real ``driftloop serve``; the SDK's OTLP/HTTP
exporter posts to the real receiver of the API app (an ``ingest`` token), which produces to the real broker;
the real ingestion service writes PostgreSQL. Every call must end up as exactly one ``interactions`` row with
the model, token counts, finish reason and latency the server reported, and prompt/response exactly when the
configuration captures content, also when the content came in log requests of their own.

The client runs in a subprocess per configuration (tests/otel_capture.py): instrumentors patch ``openai``
globally and read their content mode from the environment once.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import make_settings
from tests.ingest_helpers import ingest_until_idle, rows, scalar
from tests.otel_capture import CALLS, CONFIGS, client_subprocess

MODEL = "toy-chat"
INGEST = secrets.token_urlsafe(24)
# the Batch processors export on force_flush at the end of the client run, not on a timer that could cut one
# call's log records into two requests at an arbitrary point (the Simple runs show what separate requests do)
BATCH_ENV = {"OTEL_BSP_SCHEDULE_DELAY": "60000", "OTEL_BLRP_SCHEDULE_DELAY": "60000"}


@pytest.fixture(scope="module")
def serve_url(toy_base_model: Path) -> Iterator[str]:
    """``driftloop serve`` on the session's toy GPT-2; its own Kafka record logging off (the OTLP path is tested)."""
    from driftloop.serve import create_serve_app
    from driftloop.settings import load_settings
    from tests.test_serve import UvicornThread

    app = create_serve_app(load_settings(None, serve={"base_model": str(toy_base_model), "model_id": MODEL,
                                                      "max_new_tokens": 16, "log_records": False}))  # fmt: skip
    with UvicornThread(app) as srv:
        yield srv.url


@pytest.fixture
def receiver(pg_url: str, kafka_bootstrap: str, topics: dict[str, str]) -> Iterator[tuple[Any, str]]:
    """The API app (receiver on, one ``ingest`` token) under uvicorn; yields (settings, base URL)."""
    from driftloop.api.server import ApiServer
    from driftloop.store.db import create_engine_from_url

    s = make_settings(pg_url, bootstrap=kafka_bootstrap, topics=topics,
                      api={"tokens": [{"name": "otel-client", "token": INGEST, "role": "ingest"}]})  # fmt: skip
    eng = create_engine_from_url(pg_url)
    srv = ApiServer(s, eng, host="127.0.0.1", port=0)
    url = srv.start()
    try:
        yield s, url
    finally:
        srv.stop()
        srv.app.state.receiver.close()
        eng.dispose()


# Simple processors send one request per log record: a legacy call's system and user message events arrive
# apart, as partial records of one request_id that the writer must append in event order (8e7c9a2).
# All five configurations run at once against one receiver and one database (their rows are told apart by
# the resource's service.name, which the mapper keeps in metadata): one ingestion run per processor mode.


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "simple"])
def test_each_call_is_one_interaction_with_the_right_fields(
    batch: bool, serve_url: str, receiver: tuple[Any, str], pg_url: str
) -> None:
    settings, url = receiver
    with ThreadPoolExecutor(len(CONFIGS)) as pool:  # each client in its own interpreter (global patching)
        futures = {config: pool.submit(client_subprocess, config, serve_url, url, MODEL,
                                       headers={"Authorization": f"Bearer {INGEST}"}, batch=batch,
                                       env=BATCH_ENV if batch else None)
                   for config in CONFIGS}  # fmt: skip
        answered = {config: f.result() for config, f in futures.items()}
    # the receiver answers 200 only after the broker acknowledged, and every client flushed before exiting:
    # every record is in the topic now, and ingestion runs until it has consumed all of it
    stats = ingest_until_idle(settings)
    assert stats.rejected == 0, stats.rejected_by_reason
    assert scalar(pg_url, "select count(*) from rejected_messages") == 0

    got = rows(pg_url, "select request_id, model_id, tokens_in, tokens_out, finish_reason, latency_ms, prompt, "
                       "messages, response, metadata from interactions order by ts, id")  # fmt: skip
    by_client: dict[str, list[Any]] = {}
    for r in got:
        meta = r.metadata if not isinstance(r.metadata, str) else json.loads(r.metadata)
        by_client.setdefault(str((meta or {}).get("service.name")), []).append(r)
    assert set(by_client) == {f"otel-capture-{c}" for c in CONFIGS}, sorted(by_client)
    for config in CONFIGS:
        _check_config(config, answered[config], by_client[f"otel-capture-{config}"])


def _check_config(config: str, answered: list[dict[str, Any]], got: list[Any]) -> None:
    assert len(got) == len(CALLS), (config, [r.request_id for r in got])  # exactly one row per call
    assert sum(bool(w["response"]) for w in answered) >= len(CALLS) // 2, answered  # real answers to compare
    content = CONFIGS[config].content
    for call, want, row in zip(CALLS, answered, got, strict=True):
        where = f"{config} call {call}: {row._asdict()}"
        assert row.request_id.startswith("otel-"), where
        assert row.model_id == MODEL, where
        # a count of 0 (the toy model may answer with EOS at once) is not recorded by openai-v2's instrumentation
        # (its set_span_attribute skips falsy values), so the row has no count rather than a wrong one
        assert (row.tokens_in, row.tokens_out or 0) == (want["tokens_in"], want["tokens_out"]), where
        assert row.tokens_out is not None or want["tokens_out"] == 0, where
        assert row.finish_reason == want["finish_reason"], where
        assert row.latency_ms is not None and row.latency_ms > 0, where
        msgs = row.messages if not isinstance(row.messages, str) else json.loads(row.messages)
        if content:
            expected = ([{"role": "system", "content": call.system}] if call.system else []) + [
                {"role": "user", "content": call.user}]  # fmt: skip
            assert msgs == expected, where
            assert call.user in row.prompt, where
            # an empty answer (EOS at once) is an absent one for openai-v2's legacy choice event: no content
            assert (row.response or "") == want["response"], where
        else:
            assert msgs in (None, []) and row.prompt == "" and row.response in (None, ""), where
            # nothing of the conversation leaks through another column
            meta = json.dumps(row.metadata)
            assert call.user not in meta and (call.system is None or call.system not in meta), where
