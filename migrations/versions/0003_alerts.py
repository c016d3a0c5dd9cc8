"""alert tables: alerts, alert_notifications

Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from driftloop.migrations.coltypes import TS, BigId

revision = "0003_alerts"
down_revision = "0002_monitor"

OPEN_PREDICATE = "state IN ('fired', 'acknowledged')"


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("group_key", sa.String(600), nullable=False),
        sa.Column("model_id", sa.String(256), nullable=False),
        sa.Column("segment", sa.String(256), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("condition", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("window_id", sa.BigInteger),
        sa.Column("fired_at", TS, nullable=False),
        sa.Column("last_evaluated_at", TS, nullable=False),
        sa.Column("resolved_at", TS),
        sa.Column("acknowledged_at", TS),
        sa.Column("acknowledged_by", sa.String(128)),
        sa.Column("notify_count", sa.Integer, nullable=False),
        sa.Column("last_notified_at", TS),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
    )
    op.create_index("ix_alerts_rule_group_state", "alerts", ["rule", "group_key", "state"])
    op.create_index("ix_alerts_fired_at", "alerts", ["fired_at"])
    # Deduplication: at most one open (fired or acknowledged) alert per rule and group.
    op.create_index(
        "uq_alerts_open_rule_group",
        "alerts",
        ["rule", "group_key"],
        unique=True,
        postgresql_where=sa.text(OPEN_PREDICATE),
        sqlite_where=sa.text(OPEN_PREDICATE),
    )
    op.create_table(
        "alert_notifications",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.BigInteger, sa.ForeignKey("alerts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("channel", sa.String(128), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alert_notifications"),
    )
    op.create_index("ix_alert_notifications_alert", "alert_notifications", ["alert_id"])


def downgrade() -> None:
    op.drop_index("ix_alert_notifications_alert", table_name="alert_notifications")
    op.drop_table("alert_notifications")
    op.drop_index("uq_alerts_open_rule_group", table_name="alerts")
    op.drop_index("ix_alerts_fired_at", table_name="alerts")
    op.drop_index("ix_alerts_rule_group_state", table_name="alerts")
    op.drop_table("alerts")
