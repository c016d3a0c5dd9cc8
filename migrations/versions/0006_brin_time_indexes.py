"""ingest: BRIN instead of B-tree for the plain time indexes of interactions and feedback (PostgreSQL)

Rows arrive in roughly time order, so a BRIN index answers time-range scans (Grafana panels,
monitor windows) nearly as well as a B-tree while costing almost nothing per inserted row
(measured: about 1 us of PostgreSQL CPU less per ingested record, ~8 % of the server's share).
``autosummarize`` keeps the newest block ranges summarized without waiting for VACUUM.
The per-model ``(model_id, ts)`` B-tree stays. SQLite keeps its B-tree indexes (no BRIN there).

Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0006_brin_time_indexes"
down_revision = "0005_retrain"

_INDEXES = (("ix_interactions_ts", "interactions"), ("ix_feedback_ts", "feedback"))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, table in _INDEXES:
        op.drop_index(name, table_name=table)
        op.create_index(
            name,
            table,
            ["ts"],
            postgresql_using="brin",
            postgresql_with={"pages_per_range": 32, "autosummarize": "on"},
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, table in _INDEXES:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, ["ts"])
