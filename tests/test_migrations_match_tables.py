"""Migrations and table definitions agree (issue 13).

* every ``Table(...)`` of the project is on the metadata that migrations/env.py targets;
* on a database upgraded to head, Alembic's autogenerate comparison finds nothing to do, through
  ``compare_metadata`` and through ``alembic check`` (which runs migrations/env.py itself);
* what Alembic does not compare (index methods and storage parameters, partial-index predicates,
  CHECK constraints) is compared here by reflecting a migrated database against a database made
  by ``metadata.create_all`` on the same server, so the server normalizes both sides alike.

Each runs on PostgreSQL and on SQLite.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from sqlalchemy import ClauseElement, Engine, Table, inspect
from sqlalchemy.types import TypeEngine

from driftloop.scheduler import JOBSTORE_TABLE
from driftloop.store.db import create_engine_from_url, migrate
from driftloop.store.models import FOREIGN_TABLES, TABLE_MODULES, all_metadata, include_name
from tests.conftest import create_database, drop_database

ROOT = Path(__file__).resolve().parent.parent
# import name -> folder (pyproject maps the design card's top-level folders into driftloop)
PACKAGES = {"driftloop": "driftloop", "driftloop.monitor": "monitor", "driftloop.retrain": "retrain",
            "driftloop.connectors": "connectors"}
BACKENDS = ["postgresql", "sqlite"]


def _url(backend: str, empty_pg_url: str, tmp_path: Path, name: str = "m") -> str:
    return empty_pg_url if backend == "postgresql" else f"sqlite:///{tmp_path}/{name}.db"


@pytest.fixture
def engine_at_head(request: pytest.FixtureRequest, empty_pg_url: str, tmp_path: Path) -> Iterator[Engine]:
    url = _url(request.param, empty_pg_url, tmp_path)
    migrate(url)
    eng = create_engine_from_url(url)
    yield eng
    eng.dispose()


def _calls(func: str) -> Iterator[tuple[str, ast.Call]]:
    """``(module, call)`` for every call of a function named ``func`` in the project's packages."""
    for name, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder)
            if (ROOT / folder / rel.parts[0]).is_symlink():
                continue  # driftloop/monitor -> ../monitor: read once, under its own folder
            module = ".".join((name, *rel.with_suffix("").parts))
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == func:
                    yield module, node


def _table_calls() -> dict[str, set[str]]:
    """``{module: {table names}}`` for every ``Table("name", ...)`` call."""
    found: dict[str, set[str]] = {}
    for module, call in _calls("Table"):
        first = call.args[0] if call.args else None
        assert isinstance(first, ast.Constant) and isinstance(first.value, str), (
            f"{module}: Table() without a literal name"
        )
        found.setdefault(module, set()).add(first.value)
    return found


@pytest.mark.source  # scans the source folders for Table(...) calls
def test_all_metadata_has_every_table() -> None:
    md = all_metadata()
    calls = _table_calls()
    # one shared MetaData; every module that defines tables is imported by all_metadata()
    assert [module for module, _ in _calls("MetaData")] == ["driftloop.store.models"]
    assert set(calls) == set(TABLE_MODULES)
    assert set(md.tables) == set().union(*calls.values())
    assert len(md.tables) >= 14  # migrations 0001-0007: 14 tables
    for module in TABLE_MODULES:
        for value in vars(importlib.import_module(module)).values():
            if isinstance(value, Table):
                assert value.metadata is md, f"{module}.{value.name} is on another MetaData"
    # APScheduler's job store is not ours, and autogenerate leaves it alone
    assert JOBSTORE_TABLE in FOREIGN_TABLES and not FOREIGN_TABLES & set(md.tables)


@pytest.mark.parametrize("engine_at_head", BACKENDS, indirect=True)
def test_compare_metadata_empty_after_upgrade(engine_at_head: Engine) -> None:
    """What ``alembic revision --autogenerate`` would write for a database at head: nothing.

    No difference is filtered: with the table definitions matching migrations 0001-0007 there is no
    dialect noise left on PostgreSQL or SQLite (types, nullability and server defaults compared).
    """
    with engine_at_head.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True, "include_name": include_name}
        )
        diff = compare_metadata(ctx, all_metadata())
    assert diff == []


CHECK = (
    "import sys; from alembic import command; from driftloop.store.db import alembic_config; "
    "command.check(alembic_config(sys.argv[1]))"
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_alembic_check_through_env_py(backend: str, empty_pg_url: str, tmp_path: Path) -> None:
    """``alembic check`` (autogenerate through migrations/env.py, writing nothing) passes at head,
    also with APScheduler's job-store table present as in a deployed database.

    In a fresh interpreter: here the test process has already imported every table module, which
    would hide an env.py that imports only some of them.
    """
    url = _url(backend, empty_pg_url, tmp_path)
    migrate(url)
    eng = create_engine_from_url(url)
    try:
        SQLAlchemyJobStore(engine=eng, tablename=JOBSTORE_TABLE).jobs_t.create(eng)
    finally:
        eng.dispose()
    # command.check raises AutogenerateDiffsDetected on any difference
    proc = subprocess.run([sys.executable, "-c", CHECK, url], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "No new upgrade operations detected" in proc.stdout + proc.stderr


def _plain(value: Any, dialect: Any) -> Any:
    """A reflected value made comparable: types compiled for the dialect, SQL text as a string."""
    if isinstance(value, TypeEngine):
        return value.compile(dialect=dialect)
    if isinstance(value, ClauseElement):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v, dialect) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, dialect) for v in value]
    return value


def _schema(eng: Engine) -> dict[str, Any]:
    insp = inspect(eng)
    out: dict[str, Any] = {}
    for table in sorted(set(insp.get_table_names()) - {"alembic_version"}):
        by_name = lambda items: {i["name"]: i for i in items}  # noqa: E731
        out[table] = _plain(
            {
                "columns": by_name(insp.get_columns(table)),
                "pk": insp.get_pk_constraint(table),
                "fks": sorted((fk for fk in insp.get_foreign_keys(table)), key=lambda fk: fk["constrained_columns"]),
                "unique": by_name(insp.get_unique_constraints(table)),
                "indexes": by_name(insp.get_indexes(table)),
                "checks": by_name(insp.get_check_constraints(table)),
            },
            eng.dialect,
        )
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_reflected_schema_matches_create_all(
    backend: str, empty_pg_url: str, pg_admin_url: str, tmp_path: Path
) -> None:
    """Everything reflection sees, including what compare_metadata skips (BRIN method and storage
    parameters, partial-index predicates, CHECK constraints), is the same in a database built by
    the migrations as in one built from the table definitions."""
    migrated_url = _url(backend, empty_pg_url, tmp_path, "migrated")
    created_url = create_database(pg_admin_url) if backend == "postgresql" else f"sqlite:///{tmp_path}/created.db"
    migrate(migrated_url)
    migrated, created = create_engine_from_url(migrated_url), create_engine_from_url(created_url)
    try:
        all_metadata().create_all(created)
        got, want = _schema(migrated), _schema(created)
        assert set(got) == set(all_metadata().tables)
        for table in sorted(want):
            assert got[table] == want[table], table
    finally:
        migrated.dispose()
        created.dispose()
        if backend == "postgresql":
            drop_database(pg_admin_url, created_url)
