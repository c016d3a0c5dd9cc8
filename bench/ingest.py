"""Ingestion throughput: raw kafka-python consumption vs ``driftloop ingest`` end to end.

Produces N ~1 KB records to a Kafka-compatible broker (a local Tansu unless --bootstrap is given),
then, in the same run and on the same data:

  1. raw:  a kafka-python consumer (poll + json.loads per message, no database);
  2. e2e:  ``driftloop ingest`` with default settings (PII redaction on) into a fresh PostgreSQL
           database, as a separate process, until it is idle.

Both rates are measured from the first message received to the last one processed (raw) or
the last batch committed to the database (e2e), so the group join is excluded from both. Prints
msgs/s for both, the ratio e2e/raw and the ingest process's peak RSS; the last line is JSON.

    python bench/ingest.py --records 200000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from driftloop.broker import LocalTansu, ensure_topics, make_producer
from driftloop.ingest.sample import sample_records


def produce(bootstrap: str, topic: str, n: int, size: int) -> float:
    prod = make_producer(bootstrap)
    t0 = time.perf_counter()
    for i, rec in enumerate(sample_records(n, seed=42, size_bytes=size)):
        prod.send(topic, json.dumps(rec).encode())
        if i and i % 50_000 == 0:
            print(f"  produced {i}", file=sys.stderr)
    prod.flush()
    prod.close()
    return n / (time.perf_counter() - t0)


def raw_consume(bootstrap: str, topic: str, n: int) -> float:
    from kafka import KafkaConsumer

    c = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-raw-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=10_000,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        max_poll_interval_ms=10000,
        allow_auto_create_topics=False,
    )
    got = 0
    first = None
    loads = json.loads
    while got < n:
        for msgs in c.poll(timeout_ms=500).values():
            if first is None:
                first = time.perf_counter()
            for msg in msgs:
                loads(msg.value)
            got += len(msgs)
    elapsed = time.perf_counter() - (first or time.perf_counter())
    c.close()
    return n / elapsed


def e2e_ingest(bootstrap: str, topic: str, dlq: str, n: int, db_url: str, workdir: Path) -> tuple[float, float, dict]:
    cfg = workdir / "bench.yaml"
    stats_path = workdir / "stats.json"
    cfg.write_text(
        yaml.safe_dump(
            {
                "database": {"url": db_url},
                "kafka": {"bootstrap_servers": [bootstrap], "topics": [topic], "dlq_topic": dlq,
                          "group_id": f"bench-e2e-{uuid.uuid4().hex[:6]}"},
            }
        )
    )  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(
        [sys.executable, "-m", "driftloop", "ingest", "--config", str(cfg), "--stop-when-idle", "2",
         "--progress", "0", "--log-level", "WARNING", "--stats-json", str(stats_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"driftloop ingest failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    stats = json.loads(stats_path.read_text())
    if stats["stored"] != n:
        raise SystemExit(f"expected {n} stored records, got {stats['stored']}: {stats}")
    elapsed = stats["last_commit_at"] - stats["first_message_at"]
    return n / elapsed, max(peak_kb, before) / 1024, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000, help="messages to produce (default 200000)")
    ap.add_argument("--size", type=int, default=1000, help="approximate JSON bytes per record (default 1000)")
    ap.add_argument("--bootstrap", help="use this broker instead of starting a local Tansu")
    ap.add_argument("--pg-admin", default=os.environ.get("DRIFTLOOP_TEST_PG",
                    "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
                    help="PostgreSQL URL used to create a scratch database")  # fmt: skip
    args = ap.parse_args()

    from sqlalchemy import create_engine, text

    from driftloop.store.db import migrate

    broker = None
    if not args.bootstrap:
        broker = LocalTansu().start()
    bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
    dbname = f"dl_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.pg_admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{dbname}"'))
    db_url = args.pg_admin.rsplit("/", 1)[0] + "/" + dbname
    try:
        migrate(db_url)
        topic, dlq = f"bench-{uuid.uuid4().hex[:6]}", f"bench-dlq-{uuid.uuid4().hex[:6]}"
        ensure_topics(bootstrap, [topic, dlq], partitions=3)
        print(f"producing {args.records} records of ~{args.size} bytes to {topic} ...", file=sys.stderr)
        prod_rate = produce(bootstrap, topic, args.records, args.size)
        print(f"produce: {prod_rate:,.0f} msgs/s", file=sys.stderr)
        raw = raw_consume(bootstrap, topic, args.records)
        print(f"raw kafka-python (poll + json.loads):  {raw:,.0f} msgs/s")
        with tempfile.TemporaryDirectory() as td:
            e2e, rss, stats = e2e_ingest(bootstrap, topic, dlq, args.records, db_url, Path(td))
        print(f"driftloop ingest -> PostgreSQL (e2e):   {e2e:,.0f} msgs/s  ({stats['batches']} batches)")
        ratio = e2e / raw
        print(f"ratio e2e/raw: {ratio:.2f}   ingest peak RSS: {rss:.0f} MB")
        print(json.dumps({"raw_msgs_per_s": round(raw), "e2e_msgs_per_s": round(e2e), "ratio": round(ratio, 3),
                          "peak_rss_mb": round(rss, 1), "records": args.records}))  # fmt: skip
    finally:
        if broker:
            broker.stop()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
