"""Helpers for ingestion integration tests (real broker, real database)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import create_engine, text

from driftloop.ingest.produce import produce
from driftloop.ingest.sample import sample_records
from driftloop.ingest.service import IngestService, IngestStats
from driftloop.settings import Settings
from tests.helpers import make_settings


def settings_for(db_url: str, bootstrap: str, topics: dict[str, str], **ingest: Any) -> Settings:
    """Ingestion settings: :func:`tests.helpers.make_settings` with the ``ingest`` section as keywords."""
    return make_settings(db_url, bootstrap=bootstrap, topics=topics, ingest=ingest)


def write_config(path: Path, settings: Settings) -> Path:
    data = settings.model_dump(mode="json", include={"database", "kafka", "ingest", "pii"})
    path.write_text(yaml.safe_dump(data))
    return path


def records(n: int, seed: int = 0, **kw: Any) -> list[bytes]:
    return [json.dumps(r).encode() for r in sample_records(n, seed=seed, **kw)]


def ingest_until_idle(settings: Settings, idle_s: float = 2.0, timeout_s: float = 120.0) -> IngestStats:
    """Run the service in this process until it is idle with no lag."""
    stop = threading.Event()
    timer = threading.Timer(timeout_s, stop.set)
    timer.start()
    try:
        return IngestService(settings).run(stop, stop_when_idle_s=idle_s)
    finally:
        timer.cancel()


def scalar(url: str, sql: str, **params: Any) -> Any:
    eng = create_engine(url)
    try:
        with eng.connect() as c:
            return c.execute(text(sql), params).scalar()
    finally:
        eng.dispose()


def rows(url: str, sql: str, **params: Any) -> list[Any]:
    eng = create_engine(url)
    try:
        with eng.connect() as c:
            return list(c.execute(text(sql), params).all())
    finally:
        eng.dispose()


def read_topic(bootstrap: str, topic: str, expect: int, timeout_s: float = 30.0) -> list[Any]:
    """Read ``expect`` messages (or what arrives before the timeout) from the start of ``topic``."""
    from kafka import KafkaConsumer

    c = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        allow_auto_create_topics=False,
    )
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expect and time.monotonic() < deadline:
            for msgs in c.poll(timeout_ms=500).values():
                out.extend(msgs)
    finally:
        c.close()
    return out


def start_ingest_process(config: Path, log_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    logf = open(log_path, "ab")  # noqa: SIM115 - owned by the child
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "driftloop", "ingest", "--config", str(config), "--progress", "1", *extra],
        stdout=logf,
        stderr=subprocess.STDOUT,
        env=env,
    )


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(name))
    return out


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill9(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def wait_for(pred: Any, timeout_s: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def produce_values(bootstrap: str, topic: str, values: Iterable[bytes]) -> int:
    return produce(bootstrap, topic, values, progress=False)
