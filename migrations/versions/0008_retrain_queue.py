"""retrain: retrain_jobs is a queue (one queued/running job per policy; claimed by the leader)

* ``uq_retrain_jobs_active_policy``: a partial unique index on ``policy`` over the rows whose status
  is ``queued`` or ``running``. Enqueueing is an ``INSERT ... ON CONFLICT DO NOTHING`` against it, so
  two processes that enqueue the same policy at once get one job between them (the database decides,
  not a check-then-insert in Python).
* ``requested_by``: who enqueued (``api:alice``, ``cli:host:pid``, ``scheduler:host:pid``).
* ``claimed_at`` and ``heartbeat_at``: when the leader's worker claimed the job (``instance`` is the
  claimer) and when it last reported that the run is alive.

Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_retrain_queue"
down_revision = "0007_reject_ranges_dlq"

ACTIVE = "status IN ('queued', 'running')"


def upgrade() -> None:
    # Rows that would violate the index (several active jobs of one policy, possible before this
    # revision) keep the newest; the others could never finish anyway (their daemon died).
    op.execute(
        "UPDATE retrain_jobs SET status = 'failed', stage = 'done', finished_at = CURRENT_TIMESTAMP, "
        "error = 'abandoned: superseded by a newer job of the same policy (migration 0008)' "
        f"WHERE {ACTIVE} AND id NOT IN (SELECT max(id) FROM retrain_jobs WHERE {ACTIVE} GROUP BY policy)"
    )
    with op.batch_alter_table("retrain_jobs") as t:
        t.add_column(sa.Column("requested_by", sa.String(128), nullable=True))
        t.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
        t.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("uq_retrain_jobs_active_policy", "retrain_jobs", ["policy"], unique=True,
                    postgresql_where=sa.text(ACTIVE), sqlite_where=sa.text(ACTIVE))  # fmt: skip


def downgrade() -> None:
    op.drop_index("uq_retrain_jobs_active_policy", table_name="retrain_jobs")
    with op.batch_alter_table("retrain_jobs") as t:
        t.drop_column("heartbeat_at")
        t.drop_column("claimed_at")
        t.drop_column("requested_by")
