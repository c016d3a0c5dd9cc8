"""Shared fixtures and the markers that say what each test needs.

Environment:
  DRIFTLOOP_TEST_PG     admin URL of the PostgreSQL server (default postgresql+psycopg://postgres@127.0.0.1:5432/test)
  DRIFTLOOP_TEST_KAFKA  bootstrap of a running broker; when unset a session-wide Tansu is started here.
  CI                    when true (.ci/run sets it), a missing service fails its tests instead of skipping them.

Markers come from fixture use, so they cannot lie: a test that asks (directly or through another fixture)
for ``pg_admin_url``/``empty_pg_url``/``pg_url`` is marked ``postgres``, one that asks for
``kafka_bootstrap``/``topics`` is marked ``kafka``. Tests that reach a service another way (a private
PostgreSQL or Tansu of their own) carry the marker explicitly. ``make check`` deselects both.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy import create_engine, text

from driftloop.broker import LocalTansu, ensure_topics, tansu_binary
from driftloop.store.db import migrate

PG_ADMIN = os.environ.get("DRIFTLOOP_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# `driftloop ingest`/`run`/check-config refuse the built-in user-id salt (settings.startup_problems); every
# test, and every driftloop process a test starts (they inherit os.environ), runs with this one instead.
# Tests of the refusal itself remove it (tests/test_settings.py, tests/test_startup_checks.py).
os.environ.setdefault("DRIFTLOOP_PII__USER_ID_SALT", "tests-only-user-id-salt-4f9c2a7e1b")
# the embedding model's ONNX export (monitor/embeddings.py) is made once per test session, in a fresh
# folder: a run proves the export works instead of reusing one a developer's earlier run left in ~/.cache
os.environ.setdefault("DRIFTLOOP_CACHE_DIR", tempfile.mkdtemp(prefix="driftloop-test-cache-"))
# One intra-op thread for torch (and onnxruntime, numpy's BLAS) in the tests and the processes they start: the
# test models are tiny, and the suite runs beside brokers, writer processes and training subprocesses on 2
# cores, where OpenMP's spinning threads made a toy model's build 7.7x slower (387 s vs 50 s, measured on a
# loaded machine). Set before anything imports torch; a developer's OMP_NUM_THREADS wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

# marker -> the fixtures that provide that service; a test using any of them gets the marker
SERVICE_FIXTURES: dict[str, frozenset[str]] = {
    "postgres": frozenset({"pg_admin_url", "empty_pg_url", "pg_url"}),
    "kafka": frozenset({"kafka_bootstrap", "topics"}),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with the services its fixtures (their whole closure) need."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in SERVICE_FIXTURES.items():
            if used & fixtures and not item.get_closest_marker(marker):
                item.add_marker(marker)


def in_ci() -> bool:
    """CI (``CI=true``, as .ci/run sets it) has started every service, so a missing one is a failure."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def service_missing(reason: str) -> NoReturn:
    """Skip the test that needs an absent service; in CI fail it, so a broken setup is never a green run."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a missing service is an error, not a skip)", pytrace=False)
    pytest.skip(reason)


def require_marker(request: pytest.FixtureRequest, marker: str) -> None:
    """Keep markers honest when a fixture is reached by ``request.getfixturevalue`` (invisible at collection)."""
    if isinstance(request.node, pytest.Item) and request.node.get_closest_marker(marker) is None:
        pytest.fail(f"{request.node.nodeid} uses {request.fixturename} but is not marked {marker}: mark it "
                    f"(e.g. pytest.param(..., marks=pytest.mark.{marker}))", pytrace=False)  # fmt: skip


def _pg_base(url: str) -> str:
    return url.rsplit("/", 1)[0]


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """Admin URL of a reachable PostgreSQL server; probed once (a skip or failure is cached for the session)."""
    eng = create_engine(PG_ADMIN, connect_args={"connect_timeout": 3} if "psycopg" in PG_ADMIN else {})
    try:
        with eng.connect() as c:
            c.execute(text("select 1"))
    except Exception as e:
        service_missing(f"PostgreSQL not reachable at {PG_ADMIN} ({type(e).__name__}); start it (see .ci/run) "
                        "or set DRIFTLOOP_TEST_PG")  # fmt: skip
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
def empty_pg_url(pg_admin_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a new, empty PostgreSQL database (dropped after the test)."""
    require_marker(request, "postgres")
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


def _reachable(bootstrap: str) -> bool:
    """Whether every ``host:port`` of a bootstrap list accepts a TCP connection within 3 s."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=3).close()
        except (OSError, ValueError):
            return False
    return True


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a real Kafka-compatible broker for the whole session.

    ``DRIFTLOOP_TEST_KAFKA`` names a running one (probed once); unset, a Tansu is started for the session.
    """
    env = os.environ.get("DRIFTLOOP_TEST_KAFKA")
    if env:
        if not _reachable(env):
            service_missing(f"Kafka-compatible broker not reachable at DRIFTLOOP_TEST_KAFKA={env}")
        yield env
        return
    try:
        tansu_binary()
    except RuntimeError as e:
        service_missing(f"no broker: DRIFTLOOP_TEST_KAFKA is unset and none can be started ({e})")
    broker = LocalTansu().start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def topics(kafka_bootstrap: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """Fresh, uniquely named input and DLQ topics (3 partitions each)."""
    require_marker(request, "kafka")
    suffix = uuid.uuid4().hex[:8]
    names = {"logs": f"logs-{suffix}", "dlq": f"dlq-{suffix}"}
    ensure_topics(kafka_bootstrap, names.values(), partitions=3)
    return names


@pytest.fixture(scope="session")
def toy_base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GPT-2 of retrain.toy trained on domain A, built once for the whole session (CPU, seconds).

    Every test that needs a base model (trainer, evaluation, serving, the retrain loop) shares it; a test
    must not write into it (train adapters or copies elsewhere).
    """
    from driftloop.retrain.toy import build_base_model  # torch: imported only when a test needs the model

    return Path(build_base_model(tmp_path_factory.mktemp("toy") / "base", "A", n=1500, epochs=3))
