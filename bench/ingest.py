"""Ingestion throughput: raw kafka-python consumption vs ``driftloop ingest`` end to end.

Produces N ~1 KB records to a Kafka-compatible broker (a local Tansu unless --bootstrap is given),
then, in the same run and on the same data:

  1. raw:  a kafka-python consumer (poll + json.loads per message, no database);
  2. e2e:  ``driftloop ingest`` with default settings (PII redaction on) into a fresh PostgreSQL
           database, as a separate process, until it is idle.

Both rates are measured from the first message received to the last one processed (raw) or
the last batch committed to the database (e2e), so the group join is excluded from both. The two
measurements alternate ``--repeat`` times (default 3; a fresh database and consumer group each
time) and the medians are compared, because this kind of machine is noisy (±20 % between runs).
Prints msgs/s for every run and the medians, the ratio e2e/raw, CPU time per message of each
process, and the ingest processes' peak RSS (consumer + writer process, summed); the last line
is JSON.

    python bench/ingest.py --records 200000
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
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


def raw_consume(bootstrap: str, topic: str, n: int) -> tuple[float, float]:
    """msgs/s and CPU seconds per message (this process, all threads) of a bare kafka-python loop."""
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
    cpu0 = 0.0
    loads = json.loads
    while got < n:
        for msgs in c.poll(timeout_ms=500).values():
            if first is None:
                first = time.perf_counter()
                cpu0 = time.process_time()
            for msg in msgs:
                loads(msg.value)
            got += len(msgs)
    elapsed = time.perf_counter() - (first or time.perf_counter())
    cpu = time.process_time() - cpu0
    c.close()
    return n / elapsed, cpu / n


def e2e_ingest(bootstrap: str, topic: str, dlq: str, n: int, db_url: str, workdir: Path) -> dict:
    """Run ``driftloop ingest`` with default settings until idle; returns its final counters."""
    cfg = workdir / "bench.yaml"
    stats_path = workdir / "stats.json"
    cfg.write_text(
        yaml.safe_dump(
            {
                "database": {"url": db_url},
                "kafka": {"bootstrap_servers": [bootstrap], "topics": [topic], "dlq_topic": dlq,
                          "group_id": f"bench-e2e-{uuid.uuid4().hex[:6]}"},
                # ingestion refuses the built-in salt; a throwaway one for a throwaway database
                "pii": {"user_id_salt": secrets.token_urlsafe(32)},
            }
        )
    )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "driftloop", "ingest", "--config", str(cfg), "--stop-when-idle", "2",
         "--progress", "0", "--log-level", "WARNING", "--stats-json", str(stats_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"driftloop ingest failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    stats = json.loads(stats_path.read_text())
    if stats["stored"] != n:
        raise SystemExit(f"expected {n} stored records, got {stats['stored']}: {stats}")
    stats["msgs_per_s"] = n / (stats["last_commit_at"] - stats["first_message_at"])
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000, help="messages to produce (default 200000)")
    ap.add_argument("--size", type=int, default=1000, help="approximate JSON bytes per record (default 1000)")
    ap.add_argument("--repeat", type=int, default=3, help="raw/e2e measurement pairs; medians are compared (default 3)")
    ap.add_argument("--bootstrap", help="use this broker instead of starting a local Tansu")
    ap.add_argument("--pg-admin", default=os.environ.get("DRIFTLOOP_TEST_PG",
                    "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
                    help="PostgreSQL URL used to create scratch databases")  # fmt: skip
    ap.add_argument("--raw-gc-tuned", action="store_true",
                    help="give the raw loop the same garbage-collector tuning as driftloop ingest "
                         "(for comparison; the ratio's baseline is a plain kafka-python loop)")  # fmt: skip
    args = ap.parse_args()
    if args.repeat < 1 or args.records < 1:
        ap.error("--records and --repeat must be >= 1")

    from sqlalchemy import create_engine, text

    if args.raw_gc_tuned:
        from driftloop.ingest.step import tune_gc

        tune_gc()

    from driftloop.store.db import migrate

    broker = None
    if not args.bootstrap:
        broker = LocalTansu().start()
    bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
    admin = create_engine(args.pg_admin, isolation_level="AUTOCOMMIT")
    raws: list[float] = []
    raw_cpu: list[float] = []
    runs: list[dict] = []
    try:
        topic, dlq = f"bench-{uuid.uuid4().hex[:6]}", f"bench-dlq-{uuid.uuid4().hex[:6]}"
        ensure_topics(bootstrap, [topic, dlq], partitions=3)
        print(f"producing {args.records} records of ~{args.size} bytes to {topic} ...", file=sys.stderr)
        prod_rate = produce(bootstrap, topic, args.records, args.size)
        print(f"produce: {prod_rate:,.0f} msgs/s", file=sys.stderr)
        for i in range(args.repeat):
            rate, cpu = raw_consume(bootstrap, topic, args.records)
            raws.append(rate)
            raw_cpu.append(cpu)
            dbname = f"dl_bench_{uuid.uuid4().hex[:8]}"
            with admin.connect() as c:
                c.execute(text(f'CREATE DATABASE "{dbname}"'))
            db_url = args.pg_admin.rsplit("/", 1)[0] + "/" + dbname
            try:
                migrate(db_url)
                with tempfile.TemporaryDirectory() as td:
                    st = e2e_ingest(bootstrap, topic, dlq, args.records, db_url, Path(td))
            finally:
                with admin.connect() as c:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
            runs.append(st)
            print(f"run {i + 1}/{args.repeat}: raw {rate:,.0f} msgs/s, e2e {st['msgs_per_s']:,.0f} msgs/s "
                  f"({st['batches']} batches, decode + write in a {st['pipeline']})")  # fmt: skip
    finally:
        if broker:
            broker.stop()
        admin.dispose()
    raw = statistics.median(raws)
    e2e = statistics.median(r["msgs_per_s"] for r in runs)
    rss = max(r["peak_rss_mb"] + r["writer_peak_rss_mb"] for r in runs)
    rss_c = max(r["peak_rss_mb"] for r in runs)
    rss_w = max(r["writer_peak_rss_mb"] for r in runs)
    n = args.records
    # CPU per message includes start-up (imports, group join) for the ingest processes
    c_cpu = statistics.median(r["cpu_s"] for r in runs) / n * 1e6
    w_cpu = statistics.median(r["writer_cpu_s"] for r in runs) / n * 1e6
    print(f"raw kafka-python (poll + json.loads), median:  {raw:,.0f} msgs/s  "
          f"(CPU {statistics.median(raw_cpu) * 1e6:.1f} us/msg)")  # fmt: skip
    print(f"driftloop ingest -> PostgreSQL (e2e), median:  {e2e:,.0f} msgs/s  "
          f"(CPU consumer {c_cpu:.1f} + writer {w_cpu:.1f} us/msg, start-up included)")  # fmt: skip
    ratio = e2e / raw
    print(f"ratio e2e/raw: {ratio:.2f}   ingest peak RSS (consumer + writer): {rss:.0f} MB "
          f"({rss_c:.0f} + {rss_w:.0f})")  # fmt: skip
    print(json.dumps({"raw_msgs_per_s": round(raw), "e2e_msgs_per_s": round(e2e), "ratio": round(ratio, 3),
                      "peak_rss_mb": round(rss, 1), "records": n, "repeat": args.repeat,
                      "raw_runs": [round(x) for x in raws],
                      "e2e_runs": [round(r["msgs_per_s"]) for r in runs]}))  # fmt: skip


if __name__ == "__main__":
    main()
