"""feedback: one SQL definition of positive feedback (the view feedback_latest and its threshold row)

* ``feedback_settings``: one row (``id = 1``) holding ``positive_threshold``, seeded with 0.5 (the
  default of ``feedback.positive_threshold``); the daemon overwrites it with the configured value at
  start and whenever the monitor or the dataset builder runs.
* ``feedback_latest``: per request, its latest scored feedback (latest by ``ts``, then ``id``) and
  ``positive`` = ``score >= positive_threshold``. The monitor, the dataset builder and the Grafana
  panels all read ``positive`` from here.

The view is a NOT EXISTS anti-join, not ROW_NUMBER() OVER (PARTITION BY request_id ...): PostgreSQL and
SQLite flatten it into the query that joins it, so a join from a time-filtered ``interactions`` looks
feedback up by ``request_id`` (index) instead of ranking the whole feedback table first
(bench/feedback_view.py measures both). The threshold is an uncorrelated scalar subquery (evaluated
once); without the row ``positive`` is NULL, never silently true or false.

Create Date: 2026-11-29
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0009_feedback_positive"
down_revision = "0008_retrain_queue"

DEFAULT_POSITIVE_THRESHOLD = 0.5

# The same text on PostgreSQL and SQLite (bench/feedback_view.py runs it too).
VIEW_SQL = """
CREATE VIEW feedback_latest AS
SELECT f.request_id, f.score, f.ts,
       f.score >= (SELECT s.positive_threshold FROM feedback_settings s WHERE s.id = 1) AS positive
FROM feedback f
WHERE f.score IS NOT NULL
  AND NOT EXISTS (
    SELECT 1 FROM feedback n
    WHERE n.request_id = f.request_id AND n.score IS NOT NULL
      AND (n.ts > f.ts OR (n.ts = f.ts AND n.id > f.id))
  )
"""


def upgrade() -> None:
    settings = op.create_table(
        "feedback_settings",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("positive_threshold", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_feedback_settings_one_row"),
        sa.PrimaryKeyConstraint("id", name="pk_feedback_settings"),
    )
    op.bulk_insert(settings, [{"id": 1, "positive_threshold": DEFAULT_POSITIVE_THRESHOLD,
                               "updated_at": datetime.now(UTC)}])  # fmt: skip
    op.execute(VIEW_SQL)


def downgrade() -> None:
    op.execute("DROP VIEW feedback_latest")
    op.drop_table("feedback_settings")
