"""Shared fixtures: a fresh PostgreSQL database per test and a real Kafka-compatible broker (Tansu).

Environment:
  DRIFTLOOP_TEST_PG     admin URL of the PostgreSQL server (default postgresql+psycopg://postgres@127.0.0.1:5432/test)
  DRIFTLOOP_TEST_KAFKA  bootstrap of a running broker; when unset a session-wide Tansu is started here.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from driftloop.broker import LocalTansu, ensure_topics
from driftloop.store.db import migrate

PG_ADMIN = os.environ.get("DRIFTLOOP_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# `driftloop ingest`/`run`/check-config refuse the built-in user-id salt (settings.startup_problems); every
# test, and every driftloop process a test starts (they inherit os.environ), runs with this one instead.
# Tests of the refusal itself remove it (tests/test_settings.py, tests/test_startup_checks.py).
os.environ.setdefault("DRIFTLOOP_PII__USER_ID_SALT", "tests-only-user-id-salt-4f9c2a7e1b")


def _pg_base(url: str) -> str:
    return url.rsplit("/", 1)[0]


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    eng = create_engine(PG_ADMIN)
    try:
        with eng.connect() as c:
            c.execute(text("select 1"))
    except Exception as e:  # pragma: no cover - environment problem, say what to do
        pytest.exit(f"PostgreSQL not reachable at {PG_ADMIN}: {e}. Start it (see .ci/run) or set DRIFTLOOP_TEST_PG.")
    finally:
        eng.dispose()
    return PG_ADMIN


def create_database(admin_url: str) -> str:
    """Create an empty database, return its URL."""
    name = "dl_" + uuid.uuid4().hex[:12]
    eng = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    eng.dispose()
    return f"{_pg_base(admin_url)}/{name}"


def drop_database(admin_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    eng = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    eng.dispose()


@pytest.fixture
def empty_pg_url(pg_admin_url: str) -> Iterator[str]:
    """URL of a new, empty PostgreSQL database (dropped after the test)."""
    url = create_database(pg_admin_url)
    yield url
    drop_database(pg_admin_url, url)


@pytest.fixture
def pg_url(empty_pg_url: str) -> str:
    """URL of a new PostgreSQL database migrated to head."""
    migrate(empty_pg_url)
    return empty_pg_url


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    """URL of a new SQLite database migrated to head."""
    url = f"sqlite:///{tmp_path}/driftloop.db"
    migrate(url)
    return url


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a real Kafka-compatible broker for the whole session."""
    env = os.environ.get("DRIFTLOOP_TEST_KAFKA")
    if env:
        yield env
        return
    broker = LocalTansu().start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def topics(kafka_bootstrap: str) -> dict[str, str]:
    """Fresh, uniquely named input and DLQ topics (3 partitions each)."""
    suffix = uuid.uuid4().hex[:8]
    names = {"logs": f"logs-{suffix}", "dlq": f"dlq-{suffix}"}
    ensure_topics(kafka_bootstrap, names.values(), partitions=3)
    return names
