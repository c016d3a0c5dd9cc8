"""monitoring tables (windows, drift results)

Revision ID: 0002_monitor
Revises: 0001_ingest
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0002_monitor"
down_revision = "0001_ingest"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
