"""Column types the migration scripts share.

Frozen on purpose: applied migrations must keep creating the same columns, so these are the types as
the migrations first wrote them, not imports of the live table definitions (driftloop.store.models),
which may change later.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

# 64-bit ids; INTEGER on SQLite, where only an INTEGER PRIMARY KEY autoincrements.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)
# JSONB on PostgreSQL (indexable, compact), plain JSON elsewhere.
J = sa.JSON().with_variant(JSONB(), "postgresql")
