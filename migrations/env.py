"""Alembic environment: runs migrations on the URL set by driftloop.store.db.alembic_config.

target_metadata is every table of the project (driftloop.store.models.all_metadata), so autogenerate
(``alembic revision --autogenerate``, ``alembic check``) compares all of them; tables owned by others
(APScheduler's job store) are left out by include_name. tests/test_migrations_match_tables.py checks
that a database migrated to head matches the table definitions.
"""

from __future__ import annotations

from typing import Any

from alembic import context

from driftloop.store.db import create_engine_from_url
from driftloop.store.models import all_metadata, include_name

config = context.config
target_metadata = all_metadata()
# what autogenerate compares besides tables, columns, indexes and constraints
COMPARE: dict[str, Any] = {"compare_type": True, "compare_server_default": True, "include_name": include_name}


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        **COMPARE,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url
    # The engine as driftloop makes it (SQLite pragmas, first-connect dialect setup, which
    # autogenerate's reflection needs), disposed at the end: no connection outlives the migration.
    engine = create_engine_from_url(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            **COMPARE,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
