"""monitoring tables: monitor_windows, drift_results, window_metrics

Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from driftloop.migrations.coltypes import TS, BigId

revision = "0002_monitor"
down_revision = "0001_ingest"


def upgrade() -> None:
    op.create_table(
        "monitor_windows",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("model_id", sa.String(256), nullable=False),
        sa.Column("segment", sa.String(256), nullable=False),
        sa.Column("window_kind", sa.String(8), nullable=False),
        sa.Column("window_index", sa.BigInteger, nullable=False),
        sa.Column("window_start", TS, nullable=False),
        sa.Column("window_end", TS, nullable=False),
        sa.Column("first_id", sa.BigInteger),
        sa.Column("last_id", sa.BigInteger),
        sa.Column("n_records", sa.Integer, nullable=False),
        sa.Column("ref_kind", sa.String(32), nullable=False),
        sa.Column("ref_start", TS),
        sa.Column("ref_end", TS),
        sa.Column("ref_n", sa.Integer, nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("drift_score", sa.Float),
        sa.Column("drifted", sa.Boolean),
        sa.Column("n_features", sa.Integer),
        sa.Column("n_drifted", sa.Integer),
        sa.Column("report_path", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("duration_s", sa.Float),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_monitor_windows"),
        sa.UniqueConstraint("model_id", "segment", "window_kind", "window_index", name="uq_monitor_windows_window"),
    )
    op.create_index("ix_monitor_windows_model_end", "monitor_windows", ["model_id", "window_end"])
    op.create_table(
        "drift_results",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("window_id", sa.BigInteger, sa.ForeignKey("monitor_windows.id", ondelete="CASCADE"), nullable=False),
        sa.Column("feature", sa.String(128), nullable=False),
        sa.Column("feature_type", sa.String(16), nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("statistic", sa.Float),
        sa.Column("threshold", sa.Float),
        sa.Column("p_value", sa.Float),
        sa.Column("p_adjusted", sa.Float),
        sa.Column("drifted", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_drift_results"),
    )
    op.create_index("ix_drift_results_window", "drift_results", ["window_id"])
    op.create_table(
        "window_metrics",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("window_id", sa.BigInteger, sa.ForeignKey("monitor_windows.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model_id", sa.String(256), nullable=False),
        sa.Column("segment", sa.String(256), nullable=False),
        sa.Column("window_end", TS, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("value", sa.Float),
        sa.PrimaryKeyConstraint("id", name="pk_window_metrics"),
    )
    op.create_index("ix_window_metrics_model_name_end", "window_metrics", ["model_id", "name", "window_end"])
    op.create_index("ix_window_metrics_window", "window_metrics", ["window_id"])


def downgrade() -> None:
    op.drop_table("window_metrics")
    op.drop_table("drift_results")
    op.drop_table("monitor_windows")
