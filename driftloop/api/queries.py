"""The reads the list and get routes share: a newest-first page with optional equality filters, and one
row or 404.

One place for paging (``ORDER BY id DESC LIMIT/OFFSET``) and for the 404 that names where to list the
objects, so every resource pages and reports a missing id the same way.
"""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Engine, Select, select

from driftloop.api.params import not_found


def newest_page(cols: Sequence[Any], id_col: ColumnElement[Any], limit: int, offset: int,
                *filters: tuple[ColumnElement[Any], object]) -> Select[Any]:  # fmt: skip
    """``SELECT cols`` newest first, one page; ``col = value`` for each filter whose value was given."""
    q = select(*cols).order_by(id_col.desc()).limit(limit).offset(offset)
    for col, value in filters:
        if value is not None:
            q = q.where(col == value)
    return q


def fetch_rows(engine: Engine, q: Select[Any]) -> list[dict[str, Any]]:
    with engine.connect() as c:
        return [dict(r) for r in c.execute(q).mappings()]


def fetch_one(engine: Engine, q: Select[Any], missing: str) -> dict[str, Any]:
    """The first row of ``q``; a 404 with ``missing`` (what is missing and where to list them) if none."""
    with engine.connect() as c:
        r = c.execute(q).mappings().first()
    if r is None:
        raise not_found(missing)
    return dict(r)
