"""scheduler: job_runs (one row per job run; APScheduler creates its own apscheduler_jobs table)

Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from driftloop.migrations.coltypes import TS, BigId

revision = "0004_scheduler"
down_revision = "0003_alerts"


def upgrade() -> None:
    op.create_table(
        "job_runs",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("job", sa.String(64), nullable=False),
        sa.Column("instance", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS),
        sa.Column("duration_s", sa.Float),
        sa.Column("result", sa.Text),
        sa.Column("error", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_job_runs"),
        sa.CheckConstraint("status IN ('running', 'succeeded', 'failed', 'skipped')", name="ck_job_runs_status"),
    )
    op.create_index("ix_job_runs_job_started", "job_runs", ["job", "started_at"])
    op.create_index("ix_job_runs_started", "job_runs", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_job_runs_started", table_name="job_runs")
    op.drop_index("ix_job_runs_job_started", table_name="job_runs")
    op.drop_table("job_runs")
    # The job store belongs to APScheduler (created on first start); base means nothing of ours is left.
    op.execute("DROP TABLE IF EXISTS apscheduler_jobs")
