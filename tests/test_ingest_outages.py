"""Outages: the database stopped mid-stream, the broker restarted (memory storage: topics emptied)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from driftloop.broker import LocalTansu, ensure_topics
from driftloop.ingest.service import IngestService
from driftloop.store.db import migrate
from tests.conftest import service_missing
from tests.ingest_helpers import produce_values, records, scalar, settings_for, wait_for
from tests.pg_private import PrivatePostgres

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]  # private PostgreSQL/Tansu servers of their own too


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    try:
        pg = PrivatePostgres()
    except (FileNotFoundError, OSError) as e:  # pragma: no cover - no server binaries
        service_missing(f"cannot run a private PostgreSQL: {e}")
    pg.start()
    try:
        yield pg
    finally:
        pg.destroy()


def test_postgres_down_10s_mid_stream_loses_nothing(
    private_pg: PrivatePostgres, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    url = private_pg.url
    migrate(url)
    n = 20_000
    values = records(n, seed=5)
    settings = settings_for(url, kafka_bootstrap, topics, batch_size=500, batch_max_ms=100,
                            db_retry_initial_s=0.2, db_retry_max_s=2.0)  # fmt: skip
    svc = IngestService(settings)
    stop = threading.Event()
    t = threading.Thread(target=svc.run, args=(stop,), kwargs={"progress_every_s": 2.0}, daemon=True)
    produce_values(kafka_bootstrap, topics["logs"], values[: n // 2])
    t.start()
    try:
        wait_for(lambda: svc.stats.stored >= 2_000, 60, "the first rows")
        private_pg.stop()
        stopped_at = time.monotonic()
        # traffic keeps arriving while the database is down
        produce_values(kafka_bootstrap, topics["logs"], values[n // 2 :])
        time.sleep(max(0.0, 10 - (time.monotonic() - stopped_at)))
        retries_during_outage = svc.stats.db_retries
        private_pg.start()
        wait_for(lambda: svc.stats.stored + svc.stats.duplicates >= n - 0 and svc.stats.consumed >= n, 120,
                 "catch-up after the outage")  # fmt: skip
    finally:
        stop.set()
        t.join(60)
    assert retries_during_outage > 0, "the outage was not noticed"
    assert scalar(url, "select count(*) from interactions") == n
    assert scalar(url, "select count(distinct request_id) from interactions") == n
    assert scalar(url, "select sum(next_offset) from consumer_offsets") == n


def test_broker_restart_consumer_reconnects_and_carries_on(pg_url: str) -> None:
    broker = LocalTansu().start()
    try:
        topics = {"logs": "logs-restart", "dlq": "dlq-restart"}
        ensure_topics(broker.bootstrap, topics.values())
        settings = settings_for(pg_url, broker.bootstrap, topics, batch_size=200, batch_max_ms=100)
        svc = IngestService(settings)
        stop = threading.Event()
        t = threading.Thread(target=svc.run, args=(stop,), daemon=True)
        produce_values(broker.bootstrap, topics["logs"], records(1_000, seed=6))
        t.start()
        try:
            wait_for(lambda: svc.stats.stored >= 1_000, 60, "first 1000 rows")
            broker.restart()  # memory storage: every topic is gone; stored offsets are now beyond the log end
            ensure_topics(broker.bootstrap, topics.values())
            after = records(500, seed=7)
            wait_for(lambda: _try_produce(broker.bootstrap, topics["logs"], after), 60, "producing after restart")
            wait_for(lambda: svc.stats.stored >= 1_500, 120, "rows produced after the restart")
        finally:
            stop.set()
            t.join(60)
        assert not t.is_alive()
        assert scalar(pg_url, "select count(*) from interactions") == 1_500
        assert svc.stats.offset_resets >= 1, "the out-of-range offsets were not reported"
    finally:
        broker.stop()


def _try_produce(bootstrap: str, topic: str, values: list[bytes]) -> bool:
    try:
        produce_values(bootstrap, topic, values)
        return True
    except Exception:
        return False
