"""scores: every quality signal as a row with its source, and one view that reads them all (issue 15)

* ``scores``: judge, estimator, heuristic and human-review scores (``driftloop.store.scores``);
  ``event_key`` makes writes idempotent, ``content_key`` is a judge's cache key.
* ``quality_scores``: ``feedback`` (as ``source = 'user'``, ``name = 'feedback'``, scored rows only)
  UNION ALL ``scores``. User feedback stays where ingestion writes it, so no existing row moves and
  ``feedback_latest`` (the one definition of positive feedback) is unchanged.

Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from driftloop.migrations.coltypes import TS, BigId, J

revision = "0011_scores"
down_revision = "0010_drift_groups_baselines"

VIEW_SQL = """
CREATE VIEW quality_scores AS
SELECT f.request_id, 'user' AS source, 'feedback' AS name, f.score AS value, f.ts, f.correction
FROM feedback f
WHERE f.score IS NOT NULL
UNION ALL
SELECT s.request_id, s.source, s.name, s.value, s.ts, s.correction
FROM scores s
"""


def upgrade() -> None:
    op.create_table(
        "scores",
        sa.Column("id", BigId, autoincrement=True),
        sa.Column("event_key", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(256), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("content_key", sa.String(64), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("tags", J, nullable=True),
        sa.Column("metadata", J, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_scores"),
        sa.UniqueConstraint("event_key", name="uq_scores_event_key"),
    )
    op.create_index("ix_scores_request_id", "scores", ["request_id"])
    op.create_index("ix_scores_source_content", "scores", ["source", "content_key"])
    if op.get_bind().dialect.name == "postgresql":
        op.create_index("ix_scores_ts", "scores", ["ts"], postgresql_using="brin",
                        postgresql_with={"pages_per_range": 32, "autosummarize": "on"})  # fmt: skip
    else:
        op.create_index("ix_scores_ts", "scores", ["ts"])
    op.execute(VIEW_SQL)


def downgrade() -> None:
    op.execute("DROP VIEW quality_scores")
    op.drop_index("ix_scores_ts", table_name="scores")
    op.drop_index("ix_scores_source_content", table_name="scores")
    op.drop_index("ix_scores_request_id", table_name="scores")
    op.drop_table("scores")
