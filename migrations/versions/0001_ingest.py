"""ingest tables: interactions, feedback, rejected_messages, consumer_offsets

Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from driftloop.migrations.coltypes import TS, BigId, J

revision = "0001_ingest"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "interactions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(256), nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("model_id", sa.String(256), nullable=False),
        sa.Column("model_version", sa.String(256)),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("messages", J),
        sa.Column("response", sa.Text),
        sa.Column("latency_ms", sa.Float),
        sa.Column("tokens_in", sa.Integer),
        sa.Column("tokens_out", sa.Integer),
        sa.Column("finish_reason", sa.String(64)),
        sa.Column("user_hash", sa.String(64)),
        sa.Column("session_id", sa.String(256)),
        sa.Column("reference", sa.Text),
        sa.Column("metadata", J),
        sa.Column("source_topic", sa.String(255), nullable=False),
        sa.Column("source_partition", sa.Integer, nullable=False),
        sa.Column("source_offset", sa.BigInteger, nullable=False),
        sa.Column("ingested_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_interactions"),
        sa.UniqueConstraint("request_id", name="uq_interactions_request_id"),
    )
    op.create_index("ix_interactions_model_ts", "interactions", ["model_id", "ts"])
    op.create_index("ix_interactions_ts", "interactions", ["ts"])

    op.create_table(
        "feedback",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("event_key", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(256), nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("comment", sa.Text),
        sa.Column("correction", sa.Text),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("metadata", J),
        sa.Column("ingested_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
        sa.UniqueConstraint("event_key", name="uq_feedback_event_key"),
    )
    op.create_index("ix_feedback_request_id", "feedback", ["request_id"])
    op.create_index("ix_feedback_ts", "feedback", ["ts"])

    op.create_table(
        "rejected_messages",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("source_topic", sa.String(255), nullable=False),
        sa.Column("source_partition", sa.Integer, nullable=False),
        sa.Column("source_offset", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("raw", sa.LargeBinary),
        sa.Column("raw_size", sa.Integer, nullable=False),
        sa.Column("raw_sha256", sa.String(64), nullable=False),
        sa.Column("dlq_topic", sa.String(255)),
        sa.Column("rejected_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rejected_messages"),
        sa.UniqueConstraint("source_topic", "source_partition", "source_offset", "raw_sha256",
                            name="uq_rejected_messages_source"),
    )
    op.create_index("ix_rejected_messages_rejected_at", "rejected_messages", ["rejected_at"])
    op.create_index("ix_rejected_messages_reason", "rejected_messages", ["reason"])

    op.create_table(
        "consumer_offsets",
        sa.Column("group_id", sa.String(255), nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("group_id", "topic", "partition", name="pk_consumer_offsets"),
    )


def downgrade() -> None:
    op.drop_table("consumer_offsets")
    op.drop_index("ix_rejected_messages_reason", table_name="rejected_messages")
    op.drop_index("ix_rejected_messages_rejected_at", table_name="rejected_messages")
    op.drop_table("rejected_messages")
    op.drop_index("ix_feedback_ts", table_name="feedback")
    op.drop_index("ix_feedback_request_id", table_name="feedback")
    op.drop_table("feedback")
    op.drop_index("ix_interactions_ts", table_name="interactions")
    op.drop_index("ix_interactions_model_ts", table_name="interactions")
    op.drop_table("interactions")
