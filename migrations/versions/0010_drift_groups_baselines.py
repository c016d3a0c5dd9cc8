"""monitor: one verdict over feature groups, healthy windows, baselines re-pinned by a user (issue 14)

* ``drift_results.feature_group``: the signal a feature belongs to (``response_length`` holds
  response_chars, response_tokens and tokens_out); the verdict counts groups, not columns;
* ``monitor_windows``: ``n_groups`` / ``n_groups_drifted`` (the verdict's counts), ``drift_share``
  (the threshold the verdict used), ``healthy`` (ok, not drifted, no quality drop and no open alert of
  the model when it was checked: a ``last_healthy`` reference is taken from such windows only);
* ``monitor_baselines``: a user re-pinned the baseline of a model (and segment) from a window on;
  a ``last_healthy`` reference starts there, whatever was healthy before.

Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_drift_groups_baselines"
down_revision = "0009_feedback_positive"


def upgrade() -> None:
    with op.batch_alter_table("drift_results") as b:
        b.add_column(sa.Column("feature_group", sa.String(64), nullable=True))
    with op.batch_alter_table("monitor_windows") as b:
        b.add_column(sa.Column("n_groups", sa.Integer(), nullable=True))
        b.add_column(sa.Column("n_groups_drifted", sa.Integer(), nullable=True))
        b.add_column(sa.Column("drift_share", sa.Float(), nullable=True))
        b.add_column(sa.Column("healthy", sa.Boolean(), nullable=True))
    op.create_table(
        "monitor_baselines",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True),
        sa.Column("model_id", sa.String(256), nullable=False),
        sa.Column("segment", sa.String(256), nullable=False),
        sa.Column("window_kind", sa.String(8), nullable=False),
        sa.Column("from_window_index", sa.BigInteger(), nullable=False),
        sa.Column("pinned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pinned_by", sa.String(128), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_monitor_baselines"),
    )
    op.create_index("ix_monitor_baselines_model", "monitor_baselines", ["model_id", "segment", "window_kind"])


def downgrade() -> None:
    op.drop_index("ix_monitor_baselines_model", table_name="monitor_baselines")
    op.drop_table("monitor_baselines")
    with op.batch_alter_table("monitor_windows") as b:
        for c in ("healthy", "drift_share", "n_groups_drifted", "n_groups"):
            b.drop_column(c)
    with op.batch_alter_table("drift_results") as b:
        b.drop_column("feature_group")
