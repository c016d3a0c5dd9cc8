"""Alert tables (on driftloop's shared metadata); created by migrations 0003_alerts and 0014 (workload)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    text,
)

from driftloop.store.models import BigId, metadata

OPEN_STATES = ("fired", "acknowledged")
# At most one open alert per rule and group: enforced by a partial unique index (PostgreSQL and SQLite).
OPEN_PREDICATE = "state IN ('fired', 'acknowledged')"

alerts = Table(
    "alerts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("rule", String(128), nullable=False),
    Column("group_key", String(600), nullable=False),
    Column("model_id", String(256), nullable=False),
    Column("segment", String(256), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("state", String(16), nullable=False),  # fired | acknowledged | resolved
    Column("condition", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("value", Float, nullable=True),
    Column("window_id", BigInteger, nullable=True),
    Column("fired_at", DateTime(timezone=True), nullable=False),
    Column("last_evaluated_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    Column("acknowledged_at", DateTime(timezone=True), nullable=True),
    Column("acknowledged_by", String(128), nullable=True),
    Column("notify_count", Integer, nullable=False, default=0),
    Column("last_notified_at", DateTime(timezone=True), nullable=True),
    # the workload of the alert's group ("" when the rule does not group by workload, or for the unnamed one)
    Column("workload", String(256), nullable=False, default="", server_default=text("''")),
    Index("ix_alerts_rule_group_state", "rule", "group_key", "state"),
    Index("ix_alerts_fired_at", "fired_at"),
    Index(
        "uq_alerts_open_rule_group",
        "rule",
        "group_key",
        unique=True,
        postgresql_where=text(OPEN_PREDICATE),
        sqlite_where=text(OPEN_PREDICATE),
    ),
)

alert_notifications = Table(
    "alert_notifications",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("alert_id", BigInteger, ForeignKey("alerts.id", ondelete="CASCADE"), nullable=False),
    Column("channel", String(128), nullable=False),
    Column("event", String(16), nullable=False),  # fired | resolved | reminder
    Column("ok", Boolean, nullable=False),
    Column("error", Text, nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_alert_notifications_alert", "alert_id"),
)
