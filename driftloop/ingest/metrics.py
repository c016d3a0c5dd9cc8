"""Prometheus metrics of the ingestion pipeline (served by the daemon's /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CONSUMED = Counter("driftloop_ingest_consumed_messages", "Messages consumed from Kafka")
STORED = Counter("driftloop_ingest_stored_records", "Interaction records newly stored")
DUPLICATES = Counter("driftloop_ingest_duplicate_records", "Interaction records skipped as duplicates (request_id)")
MERGED = Counter("driftloop_ingest_merged_records", "Interaction records that filled in a row of the same request_id "
                 "(a call sent in parts, e.g. an OTel span and its log events)")  # fmt: skip
SKIPPED = Counter("driftloop_ingest_skipped_items", "Items of mapped-format messages that are not LLM calls (e.g. an "
                  "HTTP span): neither rows nor rejects")  # fmt: skip
FEEDBACK = Counter("driftloop_ingest_feedback_records", "Feedback rows newly stored")
REJECTS = Counter("driftloop_ingest_rejected_messages", "Messages rejected (a rejected_messages row each)", ["reason"])
DLQ_FAILURES = Counter("driftloop_ingest_dlq_failures", "Rejected messages whose dead-letter copy failed (still kept "
                       "in rejected_messages)", ["reason"])  # fmt: skip
UNPARSEABLE_BATCHES = Counter("driftloop_ingest_unparseable_batches", "Record batches the Kafka client could not "
                              "parse, rejected whole and skipped", ["reason"])  # fmt: skip
BATCHES = Counter("driftloop_ingest_batches", "Batches committed to the database")
DB_RETRIES = Counter("driftloop_ingest_db_retries", "Failed batch writes that were retried")
OFFSET_RESETS = Counter("driftloop_ingest_offset_resets", "Out-of-range offsets reset to the log start")
LAG = Gauge("driftloop_ingest_consumer_lag", "Messages behind the high watermark", ["topic", "partition"])
