"""Ingestion against a real PostgreSQL and a real Kafka-compatible broker (Tansu)."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from driftloop.ingest.sample import BAD_MESSAGES
from driftloop.ingest.service import IngestService
from driftloop.ingest.step import ProcessPipeline
from driftloop.store.db import create_engine_from_url, current_revision, downgrade, head_revision, migrate
from tests.ingest_helpers import (
    child_pids,
    ingest_until_idle,
    kill9,
    pid_alive,
    produce_values,
    read_topic,
    records,
    rows,
    scalar,
    settings_for,
    start_ingest_process,
    wait_for,
    write_config,
)


def test_20k_records_stored_exactly_once(pg_url: str, kafka_bootstrap: str, topics: dict[str, str]) -> None:
    values = records(20_000, seed=1)
    # a producer retry: the same record sent twice must be stored once
    values += values[:50]
    assert produce_values(kafka_bootstrap, topics["logs"], values) == 20_050
    stats = ingest_until_idle(settings_for(pg_url, kafka_bootstrap, topics))
    assert stats.consumed == 20_050
    assert stats.duplicates == 50
    assert scalar(pg_url, "select count(*) from interactions") == 20_000
    assert scalar(pg_url, "select count(distinct request_id) from interactions") == 20_000
    # every message's offset is accounted for in the stored offsets
    assert scalar(pg_url, "select sum(next_offset) from consumer_offsets") == 20_050
    # PII never reaches the table
    assert scalar(pg_url, "select count(*) from interactions where prompt like '%@example.com%'") == 0
    assert scalar(pg_url, "select count(*) from interactions where prompt like '%[email]%'") > 0
    assert scalar(pg_url, "select count(*) from interactions where user_hash like 'user-%'") == 0


def test_sigkill_three_times_no_loss_no_duplicates(
    pg_url: str, kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path
) -> None:
    n = 30_000  # enough left after the last kill (12 000+) even at ~45k msgs/s
    values = records(n, seed=2)
    settings = settings_for(pg_url, kafka_bootstrap, topics, batch_size=500, batch_max_ms=200)
    cfg = write_config(tmp_path / "cfg.yaml", settings)
    log = tmp_path / "ingest.log"
    # produce the first half, then the rest while the consumer is being killed
    produce_values(kafka_bootstrap, topics["logs"], values[: n // 2])
    count = lambda: scalar(pg_url, "select count(*) from interactions")  # noqa: E731
    kills = 0
    for i, threshold in enumerate((2_000, 7_000, 12_000)):
        # this run must itself store a batch (a fast previous run may already have passed the threshold)
        start = count()
        threshold = max(threshold, start + 500)
        proc = start_ingest_process(cfg, log)
        try:
            wait_for(lambda s=start: count() > s, 120, f"rows from run {i}", interval=0.05)
            writers = child_pids(proc.pid)  # looked up before the threshold: the kill follows at once
            assert writers, "on PostgreSQL decode + write run in a child process"
            wait_for(lambda t=threshold: count() >= t, 120, f"{threshold} rows (run {i})", interval=0.01)
        finally:
            kill9(proc)
            kills += 1
        # the writer process dies with the consumer: nothing keeps writing behind a restarted consumer
        wait_for(lambda w=writers: not any(pid_alive(p) for p in w), 10, "the writer process to exit")
        if i == 0:
            produce_values(kafka_bootstrap, topics["logs"], values[n // 2 :])
    assert kills == 3
    assert count() < n, "the consumer was killed only after everything was stored; the test proved nothing"
    proc = start_ingest_process(cfg, log, "--stop-when-idle", "3")
    assert proc.wait(180) == 0, log.read_text()[-3000:]
    produced_ids = {json.loads(v)["request_id"] for v in values}
    stored = rows(pg_url, "select request_id from interactions")
    stored_ids = [r[0] for r in stored]
    assert len(stored_ids) == n, "rows missing or duplicated"
    assert set(stored_ids) == produced_ids, "gaps: produced records not stored"
    # no message was stored from two different offsets, and offsets cover the whole topic
    assert scalar(pg_url, "select count(distinct (source_partition, source_offset)) from interactions") == n
    assert scalar(pg_url, "select sum(next_offset) from consumer_offsets") == n


def test_writer_process_killed_is_restarted_without_loss_or_duplicates(
    pg_url: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    """SIGKILL of the decode/write process: the consumer restarts it and re-reads from the DB offsets."""
    n = 12_000
    values = records(n, seed=5)
    produce_values(kafka_bootstrap, topics["logs"], values)
    settings = settings_for(pg_url, kafka_bootstrap, topics, batch_size=500, batch_max_ms=200, pipeline="process")
    svc = IngestService(settings)
    stop = threading.Event()
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["stats"] = svc.run(stop, stop_when_idle_s=3)
        except BaseException as e:  # surfaced below
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    count = lambda: scalar(pg_url, "select count(*) from interactions")  # noqa: E731
    try:
        wait_for(lambda: count() >= 2_000, 120, "the first rows", interval=0.05)
        first = svc.pipeline
        assert isinstance(first, ProcessPipeline) and first._proc is not None
        os.kill(first._proc.pid, signal.SIGKILL)
        wait_for(lambda: svc.stats.writer_restarts >= 1, 30, "the writer to be restarted")
        assert count() < n, "everything was stored before the kill; the test proved nothing"
        t.join(180)
    finally:
        stop.set()
        t.join(30)
    assert "error" not in result, result.get("error")
    assert result["stats"].writer_restarts == 1
    stored = [r[0] for r in rows(pg_url, "select request_id from interactions")]
    assert len(stored) == n and set(stored) == {json.loads(v)["request_id"] for v in values}
    assert scalar(pg_url, "select sum(next_offset) from consumer_offsets") == n


@pytest.mark.parametrize("pipeline", ["process", "thread"])
def test_bad_inputs_go_to_dlq_and_rejected_messages(
    pg_url: str, kafka_bootstrap: str, topics: dict[str, str], pipeline: str
) -> None:
    good = records(30, seed=3)
    bad = dict(BAD_MESSAGES)
    bad["oversize"] = json.dumps({"request_id": "huge", "prompt": "x" * 60_000}).encode()
    bad["field_too_long"] = json.dumps({"request_id": "long", "prompt": "y" * 5_000}).encode()
    bad["unknown_type"] = b'{"type": "rating", "request_id": "r"}'
    bad["wrong_type_metadata"] = b'{"request_id": "m1", "prompt": "hi", "metadata": [1, 2]}'
    values: list[bytes] = []
    for i, v in enumerate(bad.values()):  # interleave: good, bad, good, ...
        values.append(good[i])
        values.append(v)
    values.extend(good[len(bad) :])
    produce_values(kafka_bootstrap, topics["logs"], values)
    s = settings_for(pg_url, kafka_bootstrap, topics, max_message_bytes=50_000, max_field_chars=4_000,
                     pipeline=pipeline)  # fmt: skip
    stats = ingest_until_idle(s)
    assert stats.pipeline == pipeline
    assert stats.rejected == len(bad)
    assert scalar(pg_url, "select count(*) from interactions") == len(good)
    got = dict(rows(pg_url, "select reason, count(*) from rejected_messages group by reason"))
    expected_reasons = {k if k != "wrong_type_metadata" else "wrong_type" for k in bad}
    assert set(got) == expected_reasons
    assert sum(got.values()) == len(bad)
    # raw bytes kept (up to the configured cap) with size and hash
    raw = rows(pg_url, "select raw, raw_size, error from rejected_messages where reason = 'invalid_utf8'")[0]
    assert raw[0] == BAD_MESSAGES["invalid_utf8"] and raw[1] == len(BAD_MESSAGES["invalid_utf8"])
    assert "UTF-8" in raw[2]
    dlq = read_topic(kafka_bootstrap, topics["dlq"], expect=len(bad))
    assert len(dlq) == len(bad)
    by_reason = {dict(m.headers)["dlq.reason"].decode(): m for m in dlq}
    assert set(by_reason) == expected_reasons
    nul = by_reason["nul_byte"]
    assert nul.value == BAD_MESSAGES["nul_byte"]
    h = dict(nul.headers)
    assert h["dlq.source.topic"].decode() == topics["logs"]
    assert int(h["dlq.source.offset"]) >= 0 and b"NUL" in h["dlq.error"]
    assert len(by_reason["oversize"].value) == len(bad["oversize"])


def test_feedback_before_and_after_interaction_is_joined(
    pg_url: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    early = json.dumps({"type": "feedback", "request_id": "req-early", "score": 1, "comment": "mail a@b.co"}).encode()
    late = json.dumps({"type": "feedback", "request_id": "req-late", "score": 0, "correction": "better"}).encode()
    inter = lambda rid: json.dumps({"request_id": rid, "prompt": "p", "response": "r", "model_id": "m"}).encode()  # noqa: E731
    s = settings_for(pg_url, kafka_bootstrap, topics)
    # feedback for a request not seen yet, then (separately ingested) the interactions, then late feedback
    produce_values(kafka_bootstrap, topics["logs"], [early, early])  # a retried send, stored once
    ingest_until_idle(s)
    assert scalar(pg_url, "select count(*) from feedback") == 1
    produce_values(kafka_bootstrap, topics["logs"], [inter("req-early"), inter("req-late")])
    ingest_until_idle(s)
    produce_values(kafka_bootstrap, topics["logs"], [late])
    ingest_until_idle(s)
    joined = dict(
        rows(
            pg_url,
            "select i.request_id, f.score from interactions i join feedback f on f.request_id = i.request_id",
        )
    )
    assert joined == {"req-early": 1.0, "req-late": 0.0}
    assert scalar(pg_url, "select comment from feedback where request_id = 'req-early'") == "mail [email]"
    assert scalar(pg_url, "select correction from feedback where request_id = 'req-late'") == "better"


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_migrations_upgrade_and_downgrade(backend: str, empty_pg_url: str, tmp_path: Path) -> None:
    url = empty_pg_url if backend == "postgresql" else f"sqlite:///{tmp_path}/m.db"
    eng = create_engine_from_url(url)
    assert current_revision(eng) is None
    migrate(url)
    assert current_revision(eng) == head_revision(url)
    with eng.connect() as c:
        tables = set(eng.dialect.get_table_names(c))
    assert {"interactions", "feedback", "rejected_messages", "consumer_offsets"} <= tables
    downgrade(url, "base")
    assert current_revision(eng) is None
    with eng.connect() as c:
        left = set(eng.dialect.get_table_names(c)) - {"alembic_version"}
    assert left == set()
    migrate(url)  # and up again
    assert current_revision(eng) == head_revision(url)
    eng.dispose()


def test_sqlite_embedded_path(sqlite_url: str, kafka_bootstrap: str, topics: dict[str, str]) -> None:
    values = records(3_000, seed=4)
    produce_values(kafka_bootstrap, topics["logs"], values + values[:10] + [BAD_MESSAGES["invalid_json"]])
    stats = ingest_until_idle(settings_for(sqlite_url, kafka_bootstrap, topics, batch_size=1000))
    assert stats.stored == 3_000 and stats.duplicates == 10 and stats.rejected == 1
    assert scalar(sqlite_url, "select count(*) from interactions") == 3_000
    assert scalar(sqlite_url, "select count(*) from rejected_messages") == 1
    assert scalar(sqlite_url, "select sum(next_offset) from consumer_offsets") == 3_011
