"""review queue: review_items (one item per interaction, its slice and claim) and review_cursor (issue 15)

* ``review_items``: the human review queue (``driftloop.monitor.review``). ``request_id`` is unique: an
  interaction is queued once, in one slice (the uniform slice wins). Status pending -> claimed ->
  labelled | skipped; a claim older than ``quality.review.lease_s`` can be taken again.
* ``review_cursor``: how far the uniform sampling pass has read ``interactions``.

Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from driftloop.migrations.coltypes import TS, BigId

revision = "0012_review_queue"
down_revision = "0011_scores"


def upgrade() -> None:
    op.create_table(
        "review_items",
        sa.Column("id", BigId, autoincrement=True),
        sa.Column("request_id", sa.String(256), nullable=False),
        sa.Column("model_id", sa.String(256), nullable=False),
        sa.Column("slice", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("sample_rate", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("claimed_at", TS, nullable=True),
        sa.Column("done_at", TS, nullable=True),
        sa.Column("skip_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_review_items"),
        sa.UniqueConstraint("request_id", name="uq_review_items_request_id"),
        sa.CheckConstraint("status IN ('pending', 'claimed', 'labelled', 'skipped')", name="ck_review_items_status"),
        sa.CheckConstraint(
            "slice IN ('uniform', 'drift', 'low_confidence', 'negative_feedback')", name="ck_review_items_slice"
        ),
    )
    op.create_index("ix_review_items_claim", "review_items", ["status", "slice", "id"])
    op.create_table(
        "review_cursor",
        sa.Column("key", sa.String(32), nullable=False),
        sa.Column("last_interaction_id", BigId, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_review_cursor"),
    )


def downgrade() -> None:
    op.drop_table("review_cursor")
    op.drop_index("ix_review_items_claim", table_name="review_items")
    op.drop_table("review_items")
