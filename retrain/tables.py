"""Registry and retrain-job tables (on driftloop's shared metadata).

Created by migration 0005_retrain; the queue's columns and partial unique index by 0008_retrain_queue.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)

from driftloop.store.models import BigId, JsonType, metadata

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE_STATUSES = ("queued", "running")
# At most one active job per policy: enforced by a partial unique index (migration 0008, both dialects).
ACTIVE_PREDICATE = "status IN ('queued', 'running')"
VERSION_STATUSES = ("candidate", "pending_approval", "rejected", "approved", "promoted", "retired", "rolled_back")

retrain_jobs = Table(
    "retrain_jobs",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("policy", String(128), nullable=False),
    Column("model_id", String(256), nullable=False),
    Column("status", String(16), nullable=False),
    Column("trigger", JsonType, nullable=True),
    Column("stage", String(32), nullable=True),  # dataset | training | evaluating | gating | promoting | done
    # server defaults as migration 0005 creates them (rows inserted by plain SQL get them too)
    Column("progress", Float, nullable=False, default=0.0, server_default="0"),
    Column("message", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("logs_path", Text, nullable=True),
    Column("work_dir", Text, nullable=True),
    Column("instance", String(128), nullable=True),  # the daemon that claimed (runs) it
    Column("requested_by", String(128), nullable=True),  # who enqueued it: api:<actor>, cli:<host:pid>, scheduler:...
    Column("pid", Integer, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False, server_default=false()),
    Column("dataset_hash", String(64), nullable=True),
    Column("version_id", BigInteger, nullable=True),
    Column("timings", JsonType, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("claimed_at", DateTime(timezone=True), nullable=True),
    Column("heartbeat_at", DateTime(timezone=True), nullable=True),  # the run is alive (updated while it runs)
    CheckConstraint(
        "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="ck_retrain_jobs_status"
    ),
    Index("ix_retrain_jobs_policy_created", "policy", "created_at"),
    Index("ix_retrain_jobs_status", "status"),
    Index(
        "uq_retrain_jobs_active_policy",
        "policy",
        unique=True,
        postgresql_where=text(ACTIVE_PREDICATE),
        sqlite_where=text(ACTIVE_PREDICATE),
    ),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("family", String(256), nullable=False),
    Column("version", String(64), nullable=False),
    Column("status", String(24), nullable=False),
    Column("base_model", Text, nullable=False),
    Column("adapter_path", Text, nullable=True),  # None: the base model alone
    Column("parent_id", BigInteger, nullable=True),
    Column("job_id", BigInteger, nullable=True),
    Column("policy", String(128), nullable=True),
    Column("dataset_hash", String(64), nullable=True),
    Column("dataset_path", Text, nullable=True),
    Column("config", JsonType, nullable=True),
    Column("metrics", JsonType, nullable=True),
    Column("gate", JsonType, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("family", "version", name="uq_model_versions_family_version"),
    Index("ix_model_versions_family_created", "family", "created_at"),
)

model_aliases = Table(
    "model_aliases",
    metadata,
    Column("family", String(256), primary_key=True),
    Column("alias", String(32), primary_key=True),  # champion | previous
    Column("version_id", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

model_events = Table(
    "model_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("family", String(256), nullable=False),
    Column("version_id", BigInteger, nullable=True),
    Column("action", String(32), nullable=False),
    Column("from_status", String(24), nullable=True),
    Column("to_status", String(24), nullable=True),
    Column("actor", String(128), nullable=False),
    Column("reason", Text, nullable=True),
    Column("details", JsonType, nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_model_events_family_at", "family", "at"),
)
