"""ingest: rejected_messages records unparseable batch ranges and the dead-letter outcome

* ``source_offset_last``: a record batch the Kafka client could not parse (bad CRC, a codec that
  fails, a non-UTF-8 header key) is rejected whole as one row for offsets
  ``source_offset..source_offset_last``.
* ``dlq_status`` (``sent``/``failed``) and ``dlq_error``: the row is the durable record of a reject;
  the dead-letter copy is a side path that may fail (too large, missing topic, broker down)
  without stopping ingestion, and its failure is kept here.

Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_reject_ranges_dlq"
down_revision = "0006_brin_time_indexes"


def upgrade() -> None:
    with op.batch_alter_table("rejected_messages") as t:
        t.add_column(sa.Column("source_offset_last", sa.BigInteger(), nullable=True))
        t.add_column(sa.Column("dlq_status", sa.String(16), nullable=True))
        t.add_column(sa.Column("dlq_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rejected_messages") as t:
        t.drop_column("dlq_error")
        t.drop_column("dlq_status")
        t.drop_column("source_offset_last")
