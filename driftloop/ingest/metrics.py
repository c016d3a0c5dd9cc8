"""Prometheus metrics of the ingestion pipeline (served by the daemon's /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CONSUMED = Counter("driftloop_ingest_consumed_messages", "Messages consumed from Kafka")
STORED = Counter("driftloop_ingest_stored_records", "Interaction records newly stored")
DUPLICATES = Counter("driftloop_ingest_duplicate_records", "Interaction records skipped as duplicates (request_id)")
FEEDBACK = Counter("driftloop_ingest_feedback_records", "Feedback rows newly stored")
REJECTS = Counter("driftloop_ingest_rejected_messages", "Messages sent to the dead-letter topic", ["reason"])
BATCHES = Counter("driftloop_ingest_batches", "Batches committed to the database")
DB_RETRIES = Counter("driftloop_ingest_db_retries", "Failed batch writes that were retried")
OFFSET_RESETS = Counter("driftloop_ingest_offset_resets", "Out-of-range offsets reset to the log start")
LAG = Gauge("driftloop_ingest_consumer_lag", "Messages behind the high watermark", ["topic", "partition"])
