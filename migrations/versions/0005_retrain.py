"""retrain: retrain_jobs, model_versions, model_aliases, model_events (the model registry)

Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from driftloop.migrations.coltypes import TS, BigId, J

revision = "0005_retrain"
down_revision = "0004_scheduler"


def upgrade() -> None:
    op.create_table(
        "retrain_jobs",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("policy", sa.String(128), nullable=False),
        sa.Column("model_id", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("trigger", J),
        sa.Column("stage", sa.String(32)),
        sa.Column("progress", sa.Float, nullable=False, server_default="0"),
        sa.Column("message", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("logs_path", sa.Text),
        sa.Column("work_dir", sa.Text),
        sa.Column("instance", sa.String(128)),
        sa.Column("pid", sa.Integer),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("dataset_hash", sa.String(64)),
        sa.Column("version_id", sa.BigInteger),
        sa.Column("timings", J),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.PrimaryKeyConstraint("id", name="pk_retrain_jobs"),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="ck_retrain_jobs_status"
        ),  # fmt: skip
    )
    op.create_index("ix_retrain_jobs_policy_created", "retrain_jobs", ["policy", "created_at"])
    op.create_index("ix_retrain_jobs_status", "retrain_jobs", ["status"])
    op.create_table(
        "model_versions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("family", sa.String(256), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("base_model", sa.Text, nullable=False),
        sa.Column("adapter_path", sa.Text),
        sa.Column("parent_id", sa.BigInteger),
        sa.Column("job_id", sa.BigInteger),
        sa.Column("policy", sa.String(128)),
        sa.Column("dataset_hash", sa.String(64)),
        sa.Column("dataset_path", sa.Text),
        sa.Column("config", J),
        sa.Column("metrics", J),
        sa.Column("gate", J),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_model_versions"),
        sa.UniqueConstraint("family", "version", name="uq_model_versions_family_version"),
    )
    op.create_index("ix_model_versions_family_created", "model_versions", ["family", "created_at"])
    op.create_table(
        "model_aliases",
        sa.Column("family", sa.String(256), nullable=False),
        sa.Column("alias", sa.String(32), nullable=False),
        sa.Column("version_id", sa.BigInteger, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("family", "alias", name="pk_model_aliases"),
    )
    op.create_table(
        "model_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("family", sa.String(256), nullable=False),
        sa.Column("version_id", sa.BigInteger),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("from_status", sa.String(24)),
        sa.Column("to_status", sa.String(24)),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("details", J),
        sa.Column("at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_model_events"),
    )
    op.create_index("ix_model_events_family_at", "model_events", ["family", "at"])


def downgrade() -> None:
    op.drop_index("ix_model_events_family_at", table_name="model_events")
    op.drop_table("model_events")
    op.drop_table("model_aliases")
    op.drop_index("ix_model_versions_family_created", table_name="model_versions")
    op.drop_table("model_versions")
    op.drop_index("ix_retrain_jobs_status", table_name="retrain_jobs")
    op.drop_index("ix_retrain_jobs_policy_created", table_name="retrain_jobs")
    op.drop_table("retrain_jobs")
