"""monitor and alerts per workload: one model serving three tasks is watched as three streams (issue 16)

``workload`` (String 256, NOT NULL, default "") on ``monitor_windows`` (part of the window's identity:
``uq_monitor_windows_window`` becomes (model_id, workload, segment, window_kind, window_index)),
``window_metrics``, ``monitor_baselines`` and ``alerts``. "" is the unnamed stream (interactions whose
workload is NULL), so every existing row stays valid as it is: the windows, metrics, baselines and
alerts checked before workloads existed belong to it.

Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_monitor_workload"
down_revision = "0013_workload"

TABLES = ("monitor_windows", "window_metrics", "monitor_baselines", "alerts")
OLD_KEY = ["model_id", "segment", "window_kind", "window_index"]


def upgrade() -> None:
    for t in TABLES:
        with op.batch_alter_table(t) as b:
            b.add_column(sa.Column("workload", sa.String(256), nullable=False, server_default=sa.text("''")))
    with op.batch_alter_table("monitor_windows") as b:
        b.drop_constraint("uq_monitor_windows_window", type_="unique")
        b.create_unique_constraint("uq_monitor_windows_window", ["model_id", "workload", *OLD_KEY[1:]])


def downgrade() -> None:
    # windows of named workloads would collide on the old key: they go (with their results and metrics)
    op.execute("DELETE FROM drift_results WHERE window_id IN (SELECT id FROM monitor_windows WHERE workload <> '')")
    op.execute("DELETE FROM window_metrics WHERE workload <> ''")
    op.execute("DELETE FROM monitor_windows WHERE workload <> ''")
    with op.batch_alter_table("monitor_windows") as b:
        b.drop_constraint("uq_monitor_windows_window", type_="unique")
        b.create_unique_constraint("uq_monitor_windows_window", OLD_KEY)
    for t in reversed(TABLES):
        with op.batch_alter_table(t) as b:
            b.drop_column("workload")
