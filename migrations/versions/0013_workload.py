"""interactions.workload: the task a record belongs to, so one model serving three tasks is watched as three streams (issue 16)

Derived at ingestion from a configurable attribute or metadata key (e.g. the OTel ``gen_ai.agent.name``,
a route) or a hash of the system prompt; NULL when nothing names it. Existing rows keep NULL (one
stream per model, as before).

Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_workload"
down_revision = "0012_review_queue"


def upgrade() -> None:
    op.add_column("interactions", sa.Column("workload", sa.String(256), nullable=True))
    op.create_index("ix_interactions_model_workload_ts", "interactions", ["model_id", "workload", "ts"])


def downgrade() -> None:
    op.drop_index("ix_interactions_model_workload_ts", table_name="interactions")
    op.drop_column("interactions", "workload")
