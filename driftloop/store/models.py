"""Table definitions (SQLAlchemy Core). Alembic migrations in ``migrations/`` create them.

Designed for time-window reads: interactions are indexed by (model_id, ts) and by ts.
JSON columns are JSONB on PostgreSQL and JSON (text) on SQLite.
"""

from __future__ import annotations

import importlib

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

JsonType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments INTEGER PRIMARY KEY, so BigInteger keys become Integer there.
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Storage parameters of the BRIN time indexes, as migration 0006 creates them.
BRIN_TIME_INDEX_WITH = {"pages_per_range": 32, "autosummarize": "on"}

# The modules that define tables on ``metadata``, the only place that lists them: see all_metadata().
TABLE_MODULES = (
    "driftloop.store.models",
    "driftloop.store.feedback",
    "driftloop.store.scores",
    "driftloop.jobs",
    "driftloop.monitor.tables",
    "driftloop.monitor.alerts.tables",
    "driftloop.monitor.review",
    "driftloop.retrain.tables",
)

# Tables in driftloop's database that are not driftloop's: APScheduler creates and owns its job store
# (driftloop.scheduler.JOBSTORE_TABLE). Autogenerate must neither model nor drop them.
FOREIGN_TABLES = frozenset({"apscheduler_jobs"})


def all_metadata() -> MetaData:
    """The shared metadata with every table of the project on it (the migrations' target_metadata).

    The table modules import this one, so they are imported here, lazily, not at module import time.
    """
    for name in TABLE_MODULES:
        importlib.import_module(name)
    return metadata


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic ``include_name`` hook: leave the tables of other owners (FOREIGN_TABLES) out of comparisons."""
    return not (type_ == "table" and name in FOREIGN_TABLES)


interactions = Table(
    "interactions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("request_id", String(256), nullable=False, unique=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("model_id", String(256), nullable=False),
    Column("model_version", String(256), nullable=True),
    Column("prompt", Text, nullable=False),
    Column("messages", JsonType, nullable=True),
    Column("response", Text, nullable=True),
    Column("latency_ms", Float, nullable=True),
    Column("tokens_in", Integer, nullable=True),
    Column("tokens_out", Integer, nullable=True),
    Column("finish_reason", String(64), nullable=True),
    Column("user_hash", String(64), nullable=True),
    Column("session_id", String(256), nullable=True),
    Column("reference", Text, nullable=True),
    Column("metadata", JsonType, nullable=True),
    Column("source_topic", String(255), nullable=False),
    Column("source_partition", Integer, nullable=False),
    Column("source_offset", BigInteger, nullable=False),
    Column("ingested_at", DateTime(timezone=True), nullable=False),
    # the task this record belongs to (settings ingest.workload); NULL: the model's one stream
    Column("workload", String(256), nullable=True),
    Index("ix_interactions_model_ts", "model_id", "ts"),
    Index("ix_interactions_model_workload_ts", "model_id", "workload", "ts"),
    # BRIN on PostgreSQL (migration 0006): rows arrive in time order; a B-tree costs ~1 us per row
    Index("ix_interactions_ts", "ts", postgresql_using="brin", postgresql_with=BRIN_TIME_INDEX_WITH),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    # Deduplication key: the producer's feedback_id, or a hash of the event's content.
    Column("event_key", String(64), nullable=False, unique=True),
    Column("request_id", String(256), nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("score", Float, nullable=True),
    Column("comment", Text, nullable=True),
    Column("correction", Text, nullable=True),
    Column("source", String(16), nullable=False),  # inline | event
    Column("metadata", JsonType, nullable=True),
    Column("ingested_at", DateTime(timezone=True), nullable=False),
    Index("ix_feedback_request_id", "request_id"),
    Index("ix_feedback_ts", "ts", postgresql_using="brin", postgresql_with=BRIN_TIME_INDEX_WITH),
)

rejected_messages = Table(
    "rejected_messages",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("source_topic", String(255), nullable=False),
    Column("source_partition", Integer, nullable=False),
    Column("source_offset", BigInteger, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("error", Text, nullable=False),
    Column("raw", LargeBinary, nullable=True),
    Column("raw_size", Integer, nullable=False),
    Column("raw_sha256", String(64), nullable=False),
    Column("dlq_topic", String(255), nullable=True),
    Column("rejected_at", DateTime(timezone=True), nullable=False),
    # a whole record batch the Kafka client could not parse: offsets source_offset..source_offset_last
    Column("source_offset_last", BigInteger, nullable=True),
    # the dead-letter copy: "sent" or "failed" (then dlq_error says why); the row is the durable record
    Column("dlq_status", String(16), nullable=True),
    Column("dlq_error", Text, nullable=True),
    UniqueConstraint(
        "source_topic", "source_partition", "source_offset", "raw_sha256", name="uq_rejected_messages_source"
    ),
    Index("ix_rejected_messages_rejected_at", "rejected_at"),
    Index("ix_rejected_messages_reason", "reason"),
)

consumer_offsets = Table(
    "consumer_offsets",
    metadata,
    Column("group_id", String(255), primary_key=True),
    Column("topic", String(255), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
