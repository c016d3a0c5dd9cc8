"""Positive feedback: one definition, in SQL, for the monitor, the dataset builder and the dashboards.

A request's feedback is *positive* when its latest scored feedback (latest by ``ts``, then ``id``;
feedback without a score is ignored) has ``score >= feedback.positive_threshold``. The definition is
the view ``feedback_latest`` (migration 0009), one row per request with a scored feedback:

    request_id, score, ts, positive  (positive: score >= feedback_settings.positive_threshold)

The threshold lives in the one-row table ``feedback_settings`` because Grafana's panels read the view
and cannot read driftloop's YAML: the daemon writes the configured value there at start and whenever
the monitor or the dataset builder runs (:func:`store_feedback_threshold`), so every reader applies
the same number.

The view is written as SQL that PostgreSQL and SQLite both flatten into the query that uses it
(a NOT EXISTS anti-join rather than ROW_NUMBER(), which PostgreSQL cannot push a join below): a
dashboard's time filter on ``interactions`` still drives an index lookup per request. Alembic does
not model views, so the view is a lightweight :func:`sqlalchemy.table` for queries, not a ``Table``
on the shared metadata (``create_all`` and autogenerate leave it alone; the migration creates it).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    String,
    Table,
    column,
    select,
    table,
)
from sqlalchemy.dialects import postgresql, sqlite

from driftloop.store.models import metadata

FEEDBACK_LATEST_VIEW = "feedback_latest"
DEFAULT_POSITIVE_THRESHOLD = 0.5

# One row (id = 1): the positive threshold the view applies, as last written by the daemon.
feedback_settings = Table(
    "feedback_settings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("positive_threshold", Float, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("id = 1", name="ck_feedback_settings_one_row"),
)

# The view, for queries (created by migration 0009; see the module docstring).
feedback_latest = table(
    FEEDBACK_LATEST_VIEW,
    column("request_id", String(256)),
    column("score", Float),
    column("ts", DateTime(timezone=True)),
    column("positive", Boolean),
)


def stored_feedback_threshold(engine: Engine) -> float | None:
    """The threshold the view applies now (None when the row is missing: then no feedback is positive)."""
    with engine.connect() as c:
        v = c.execute(select(feedback_settings.c.positive_threshold).where(feedback_settings.c.id == 1)).scalar()
    return None if v is None else float(v)


def store_feedback_threshold(engine: Engine, value: float) -> bool:
    """Make the view apply ``value`` (``feedback.positive_threshold``); True when the stored value changed.

    An upsert that writes only when the value differs, so the monitor's and the dataset builder's
    calls on every run cost one read and do not take SQLite's write lock.
    """
    value = float(value)
    if stored_feedback_threshold(engine) == value:
        return False
    dialect = engine.dialect.name
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(feedback_settings)
    stmt = ins.values(id=1, positive_threshold=value, updated_at=datetime.now(UTC))
    stmt = stmt.on_conflict_do_update(
        index_elements=[feedback_settings.c.id],
        set_={"positive_threshold": stmt.excluded.positive_threshold, "updated_at": stmt.excluded.updated_at},
    )
    with engine.begin() as c:
        c.execute(stmt)
    return True
