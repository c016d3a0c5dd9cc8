"""What real producers, clients and networks send: nothing is lost, nothing crash-loops.

The invariant checked everywhere: every produced offset is either a stored row or covered by a
``rejected_messages`` row (a whole unparseable record batch covers ``source_offset..source_offset_last``),
and the offsets stored with the data add up to what was produced.
Real broker (Tansu), real PostgreSQL, a real librdkafka producer (confluent-kafka).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from driftloop.broker import free_port
from tests.ingest_helpers import ingest_until_idle, read_topic, records, rows, scalar, settings_for

ck = pytest.importorskip("confluent_kafka")


def produce_ck(bootstrap: str, topic: str, msgs: list[dict[str, Any]], **conf: Any) -> None:
    """Produce with librdkafka; every message to partition 0 unless it says otherwise, in order."""
    p = ck.Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20,
                     "message.max.bytes": 60_000_000, **conf})  # fmt: skip
    errors: list[Any] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    for m in msgs:
        p.produce(topic, partition=m.get("partition", 0), value=m.get("value"), key=m.get("key"),
                  headers=m.get("headers"), on_delivery=on_delivery)  # fmt: skip
        p.poll(0)
    assert p.flush(60) == 0, "messages still in librdkafka's queue"
    assert not errors, errors


def covered(url: str) -> tuple[int, int]:
    """(stored interactions, offsets covered by rejected_messages rows)."""
    stored = scalar(url, "select count(*) from interactions")
    rej = scalar(url, "select coalesce(sum(coalesce(source_offset_last, source_offset) - source_offset + 1), 0) "
                      "from rejected_messages")  # fmt: skip
    return int(stored), int(rej)


def offsets_sum(url: str) -> int:
    return int(scalar(url, "select coalesce(sum(next_offset), 0) from consumer_offsets"))


def valid(n: int, seed: int) -> list[dict[str, Any]]:
    return [{"value": v} for v in records(n, seed=seed)]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- (a) a DLQ that refuses a message never loses it ------------------------------------------------
@pytest.mark.parametrize("pipeline", ["process", "thread"])
def test_null_and_binary_header_values_on_a_reject(
    pg_url: str, kafka_bootstrap: str, topics: dict[str, str], pipeline: str
) -> None:
    bad = {"value": b"not json at all", "key": b"k1",
           "headers": [("nullh", None), ("bin", b"\xff\x00\xfe"), ("plain", b"ok")]}  # fmt: skip
    produce_ck(kafka_bootstrap, topics["logs"], [*valid(20, 1), bad, *valid(22, 2)])
    stats = ingest_until_idle(settings_for(pg_url, kafka_bootstrap, topics, pipeline=pipeline))
    assert (stats.consumed, stats.stored, stats.rejected) == (43, 42, 1)
    assert covered(pg_url) == (42, 1)
    assert offsets_sum(pg_url) == 43
    status = rows(pg_url, "select reason, dlq_status, dlq_error from rejected_messages")
    assert status == [("invalid_json", "sent", None)]
    (msg,) = read_topic(kafka_bootstrap, topics["dlq"], expect=1)
    h = dict(msg.headers)
    assert msg.value == b"not json at all" and msg.key == b"k1"
    assert h["bin"] == b"\xff\x00\xfe" and h["plain"] == b"ok" and h["nullh"] == b""
    assert h["dlq.null_headers"] == b"nullh"


def test_2_20_50_mb_messages_rejected_and_recorded_when_the_dlq_refuses_them(
    pg_url: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    sizes = [2, 20, 50]
    msgs: list[dict[str, Any]] = [*valid(5, 3)]
    for i, mb in enumerate(sizes):
        msgs.append({"value": b'{"request_id": "big", "prompt": "' + b"x" * (mb * 1024 * 1024) + b'"}'})
        msgs.extend(valid(5, 10 + i))
    produce_ck(kafka_bootstrap, topics["logs"], msgs)
    before = metric("driftloop_ingest_dlq_failures_total", reason="too_large")
    stats = ingest_until_idle(settings_for(pg_url, kafka_bootstrap, topics), timeout_s=240)
    assert (stats.stored, stats.rejected) == (20, 3)
    assert covered(pg_url) == (20, 3)
    assert offsets_sum(pg_url) == len(msgs)
    got = rows(pg_url, "select raw_size, reason, dlq_status, dlq_error, length(raw) from rejected_messages "
                       "order by source_offset")  # fmt: skip
    assert [r[0] for r in got] == [len(m["value"]) for m in msgs if len(m["value"]) > 1_000_000]
    assert all(r[1] == "oversize" and r[4] == 65_536 for r in got)  # raw kept up to the cap
    # 2 MB fits the DLQ producer's request limit (16 MiB); 20 and 50 MB do not: recorded, counted
    assert [r[2] for r in got] == ["sent", "failed", "failed"]
    assert got[1][3].startswith("too_large:") and got[2][3].startswith("too_large:")
    assert stats.dlq_failures_by_reason == {"too_large": 2}
    assert metric("driftloop_ingest_dlq_failures_total", reason="too_large") == before + 2
    (dlq,) = read_topic(kafka_bootstrap, topics["dlq"], expect=1)
    assert len(dlq.value) == len(msgs[5]["value"])


def test_unreachable_dlq_broker_still_records_every_reject(
    pg_url: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    bad = [{"value": b"{broken"}, {"value": b"[1, 2]"}, {"value": None}]
    produce_ck(kafka_bootstrap, topics["logs"], [*valid(10, 4), *bad, *valid(10, 5)])
    s = settings_for(pg_url, kafka_bootstrap, topics, dlq_timeout_s=3)
    # the dead-letter producer talks to a port where nobody listens
    s = s.model_copy(update={"kafka": s.kafka.model_copy(
        update={"producer": {"bootstrap_servers": [f"127.0.0.1:{free_port()}"]}})})  # fmt: skip
    stats = ingest_until_idle(s, timeout_s=120)
    assert (stats.stored, stats.rejected) == (20, 3)
    assert covered(pg_url) == (20, 3)
    assert offsets_sum(pg_url) == 23
    got = rows(pg_url, "select dlq_status, dlq_error from rejected_messages order by source_offset")
    assert [g[0] for g in got] == ["failed"] * 3
    # the first send found no broker; the next two were not even tried (no minute-long wait per reject)
    assert got[0][1].split(":")[0] in ("missing_topic", "timeout", "broker_error")
    assert all(g[1].startswith("unavailable:") for g in got[1:])
    assert sum(stats.dlq_failures_by_reason.values()) == 3


# -- (b) every codec, from librdkafka --------------------------------------------------------------
def test_every_codec_from_librdkafka_with_keys_headers_and_tombstones(
    pg_url: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    codecs = ["gzip", "snappy", "lz4", "zstd"]
    per_codec, tombstones = 2500, 10
    headers = [("trace", b"\x00\xff\x01"), ("nullh", None), ("ключ", "значение".encode())]
    for i, codec in enumerate(codecs):
        msgs = [{"value": v["value"], "key": f"user-{j % 7}".encode(), "headers": headers, "partition": j % 3}
                for j, v in enumerate(valid(per_codec, 100 + i))]  # fmt: skip
        msgs += [{"value": None, "key": b"gone", "partition": j % 3} for j in range(tombstones)]
        produce_ck(kafka_bootstrap, topics["logs"], msgs, **{"compression.type": codec, "batch.num.messages": 500})
    stats = ingest_until_idle(settings_for(pg_url, kafka_bootstrap, topics), timeout_s=240)
    n = len(codecs) * per_codec
    assert (stats.stored, stats.duplicates, stats.rejected) == (n, 0, len(codecs) * tombstones)
    assert stats.rejected_by_reason == {"invalid_json": len(codecs) * tombstones}
    assert covered(pg_url) == (n, len(codecs) * tombstones)
    assert offsets_sum(pg_url) == n + len(codecs) * tombstones
    assert scalar(pg_url, "select count(distinct request_id) from interactions") == n
    # a tombstone reaches the DLQ as a tombstone (null value), not as an empty message
    dlq = read_topic(kafka_bootstrap, topics["dlq"], expect=len(codecs) * tombstones)
    assert len(dlq) == len(codecs) * tombstones and all(m.value is None for m in dlq)


# -- (c) record batches the client cannot parse ------------------------------------------------------
@pytest.fixture
def crafted() -> Iterator[dict[str, Callable[[bytearray], None] | None]]:
    """Lets a test rewrite the next record batches kafka-python's producer builds (CRC fixed unless asked)."""
    from kafka.record.default_records import DefaultRecordBatchBuilder as B
    from kafka.record.util import calc_crc32c

    orig = B.build
    state: dict[str, Callable[[bytearray], None] | None] = {"mutate": None, "after_crc": None}

    def build(self: Any) -> Any:
        buf = orig(self)
        if state["mutate"] is not None:
            state["mutate"](buf)
            struct.pack_into(">I", buf, B.CRC_OFFSET, calc_crc32c(memoryview(buf)[B.ATTRIBUTES_OFFSET:]))
        if state["after_crc"] is not None:
            state["after_crc"](buf)
        return buf

    B.build = build
    try:
        yield state
    finally:
        B.build = orig


_KEY = "\x01\x02KEY"  # a header key written as UTF-8, then rewritten to bytes that are not UTF-8


def _non_utf8_key(buf: bytearray) -> None:
    i = buf.find(_KEY.encode())
    buf[i : i + 2] = b"\xff\xfe"


def _gzip_flag_on_plain_payload(buf: bytearray) -> None:
    from kafka.record.default_records import DefaultRecordBatchBuilder as B

    (a,) = struct.unpack_from(">h", buf, B.ATTRIBUTES_OFFSET)
    struct.pack_into(">h", buf, B.ATTRIBUTES_OFFSET, (a & ~7) | 1)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("non_utf8_header_key", "bad_header"), ("bad_crc", "corrupt_batch"),
     ("garbage_gzip", "undecodable_batch"), ("missing_codec", "unsupported_codec")],
)  # fmt: skip
def test_unparseable_record_batch_is_rejected_whole_and_skipped(
    pg_url: str, kafka_bootstrap: str, topics: dict[str, str], crafted: dict[str, Any], kind: str, reason: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from driftloop.broker import make_producer

    produce_ck(kafka_bootstrap, topics["logs"], valid(10, 6))
    bad_values = [v["value"] for v in valid(4, 7)]
    if kind == "missing_codec":
        # a real zstd batch from librdkafka, read by a consumer without the zstd module
        produce_ck(kafka_bootstrap, topics["logs"], [{"value": v} for v in bad_values],
                   **{"compression.type": "zstd", "linger.ms": 200})  # fmt: skip
        import kafka.codec

        monkeypatch.setattr(kafka.codec, "has_zstd", lambda: False)
    else:
        if kind == "non_utf8_header_key":
            crafted["mutate"] = _non_utf8_key
        elif kind == "garbage_gzip":
            crafted["mutate"] = _gzip_flag_on_plain_payload
        else:
            crafted["after_crc"] = _non_utf8_key  # any change after the CRC was computed
        p = make_producer(kafka_bootstrap, linger_ms=200, enable_idempotence=False)
        futures = [p.send(topics["logs"], v, partition=0, headers=[(_KEY, b"v")]) for v in bad_values]
        p.flush(30)
        assert [f.get(10).offset for f in futures] == [10, 11, 12, 13]
        crafted["mutate"] = crafted["after_crc"] = None
        p.close()
    produce_ck(kafka_bootstrap, topics["logs"], valid(10, 8))
    unparseable_before = metric("driftloop_ingest_unparseable_batches_total", reason=reason)

    stats = ingest_until_idle(settings_for(pg_url, kafka_bootstrap, topics, pipeline="thread"))

    assert stats.stored == 20 and stats.rejected == 4 and stats.rejected_by_reason == {reason: 4}
    assert covered(pg_url) == (20, 4)
    assert offsets_sum(pg_url) == 24
    got = rows(pg_url, "select source_offset, source_offset_last, reason, error, raw_size, dlq_status "
                       "from rejected_messages")  # fmt: skip
    assert [(g[0], g[1], g[2]) for g in got] == [(10, 13, reason)]
    assert "10..13" in got[0][3] and got[0][4] > 0 and got[0][5] == "sent"
    assert metric("driftloop_ingest_unparseable_batches_total", reason=reason) == unparseable_before + 1
    (dlq,) = read_topic(kafka_bootstrap, topics["dlq"], expect=1)
    h = dict(dlq.headers)
    assert h["dlq.format"] == b"kafka-record-batch" and h["dlq.source.offset.last"] == b"13"
    assert json.loads(h["dlq.source.offset"]) == 10
