"""Workloads (issue 16): one model serving several tasks is watched as several streams.

Derivation at ingestion (unit tests through the real decoder), then on PostgreSQL: one model serving
three workloads becomes three streams of windows, a drift in one workload is flagged (and alerted) there
only, and the dashboards' workload variable lists the workloads.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from driftloop.ingest.decode import DecodePolicy, Decoder, Source
from driftloop.ingest.redact import Redactor
from driftloop.ingest.workload import system_prompt_workload, workload_of
from driftloop.records import ChatMessage
from driftloop.settings import WorkloadSettings

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _decode(record: dict[str, Any], ws: WorkloadSettings | None) -> str | None:
    dec = Decoder(DecodePolicy(workload=ws), Redactor())
    kind, row, _ = dec.decode(json.dumps(record).encode(), Source("logs", 0, 1, None), NOW)
    assert kind == "interaction"
    return row["workload"]


def _chat(system: str | None, user: str = "hi", **extra: Any) -> dict[str, Any]:
    msgs = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": user}]
    return {"request_id": "r1", "model_id": "m", "messages": msgs, "response": "ok", **extra}


# ------------------------------------------------------------------------------------------ derivation
def test_first_configured_metadata_key_with_a_value_wins() -> None:
    ws = WorkloadSettings(keys=["gen_ai.agent.name", "route"], system_prompt_hash=True, default="misc")
    assert _decode(_chat("sys", metadata={"route": "/faq", "gen_ai.agent.name": "triage"}), ws) == "triage"
    # empty, null, blank and structured values name nothing: the next key is tried
    for empty in ("", "   ", None, {"a": 1}, [1]):
        assert _decode(_chat("sys", metadata={"gen_ai.agent.name": empty, "route": "/faq"}), ws) == "/faq"
    # a scalar is stringified; unknown top-level fields are metadata too (v1 keeps them)
    assert _decode(_chat(None, metadata={"route": 7}), ws) == "7"
    assert _decode(_chat(None, metadata={"route": 7.0}), ws) == "7"
    assert _decode(_chat(None, metadata={"route": True}), ws) == "true"
    assert _decode(_chat(None, route="/top-level"), ws) == "/top-level"
    # capped at the column's 256 characters
    assert _decode(_chat(None, metadata={"route": "x" * 300}), ws) == "x" * 256


def test_system_prompt_hash_then_default() -> None:
    ws = WorkloadSettings(keys=["route"], system_prompt_hash=True, default="misc")
    a, b = _decode(_chat("You are a support bot."), ws), _decode(_chat("You translate to French."), ws)
    assert a == system_prompt_workload("You are a support bot.") and a != b
    assert a is not None and a.startswith("sp-") and len(a) == 3 + 12 and int(a[3:], 16) >= 0
    assert _decode(_chat("You are a support bot.", user="other question"), ws) == a, "the user turn does not count"
    assert _decode(_chat(None), ws) == "misc"  # no system message
    assert _decode({"request_id": "p", "prompt": "plain", "response": "x"}, ws) == "misc"
    assert _decode(_chat("You are a support bot."), WorkloadSettings(default="misc")) == "misc"  # hash off


def test_nothing_configured_leaves_the_workload_null() -> None:
    assert _decode(_chat("sys", metadata={"route": "/faq"}), None) is None
    assert _decode(_chat("sys", metadata={"route": "/faq"}), WorkloadSettings()) is None
    assert _decode(_chat("sys", metadata={"route": "/faq"}), WorkloadSettings(keys=["agent"])) is None
    assert _decode(_chat("sys"), WorkloadSettings(default="")) is None  # "" is no name
    assert workload_of({"route": "a"}, [ChatMessage(role="system", content="s")], None) is None


def test_the_default_settings_derive_nothing() -> None:
    from driftloop.settings import load_settings

    ws = load_settings(None).ingest.workload
    assert (ws.keys, ws.system_prompt_hash, ws.default) == ([], False, None)


@pytest.mark.parametrize("bad", [{"keys": "route"}, {"default": "x" * 257}])
def test_bad_workload_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        WorkloadSettings(**bad)
