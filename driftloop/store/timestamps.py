"""Timestamps read back from the database are UTC, even where the driver hands them back naive.

Why one helper: SQLite returns naive datetimes (and raw SQL on it may return ISO strings) for columns
that PostgreSQL returns aware; every reader that compares them with an aware ``now`` needs the same
fix, and five modules had written it again. Naive means UTC because driftloop only ever writes UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc(ts: datetime | str) -> datetime:
    """``ts`` as an aware datetime: an ISO string is parsed, a naive value is taken as UTC, others unchanged."""
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts)
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
