"""The serving app: shared state, the start-up adapter, the Kafka record logger, and ``create_serve_app``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI

from driftloop.client import RecordLogger
from driftloop.records import now_rfc3339
from driftloop.serve.metrics import ServeMetrics
from driftloop.serve.middleware import install_middleware
from driftloop.serve.runtime import ModelRuntime
from driftloop.serve.security import adapter_roots, check_exposure, configured_api_key

if TYPE_CHECKING:
    from driftloop.settings import Settings

log = logging.getLogger("driftloop.serve")


@dataclass
class ServeState:
    """What the endpoints share (``app.state.serve``)."""

    settings: Settings
    runtime: ModelRuntime
    logger: RecordLogger | None
    metrics: ServeMetrics
    api_key: str | None
    gen_pool: ThreadPoolExecutor
    admin_pool: ThreadPoolExecutor
    adapter_roots: list[str] = field(default_factory=list)
    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started_at: str = field(default_factory=now_rfc3339)

    @property
    def model_id(self) -> str:
        return self.settings.serve.model_id

    def close(self, timeout: float = 10.0) -> int:
        """Stop the worker pools and flush the logger; return the number of undelivered records."""
        self.gen_pool.shutdown(wait=False, cancel_futures=True)
        self.admin_pool.shutdown(wait=False, cancel_futures=True)
        return self.logger.close(timeout) if self.logger is not None else 0


def startup_adapter(settings: Settings) -> tuple[str, str] | None:
    """``(name, path)`` of the adapter to load at start: ``serve.adapter``, else ``serving_dir/current``."""
    from driftloop.connectors.abc import safe_name
    from driftloop.connectors.filesystem import BASE_DIR, CURRENT

    s = settings.serve
    if s.adapter:
        p = Path(s.adapter).expanduser()
        return safe_name(p.resolve().name), str(p)
    if s.serving_dir:
        cur = Path(s.serving_dir).expanduser() / CURRENT
        if cur.is_symlink() or cur.exists():
            target = cur.resolve()
            if target.name != BASE_DIR and target.is_dir():
                return target.name, str(target)
    return None


def make_record_logger(settings: Settings) -> RecordLogger:
    """The Kafka record logger of ``driftloop serve`` (topic ``serve.log_topic`` or ``kafka.topics[0]``).

    Records are capped at ``serve.max_log_record_bytes`` (and ``ingest.max_message_bytes``) and text fields at
    ``ingest.max_field_chars``: what ingestion would refuse is truncated here instead.
    """
    k, s = settings.kafka, settings.serve
    return RecordLogger(k.bootstrap_servers, s.log_topic or k.topics[0], buffer_size=s.buffer_size,
                        producer_options=k.producer, create_topic=k.create_topics,
                        topic_partitions=k.topic_partitions, replication_factor=k.replication_factor,
                        name="driftloop-serve-logger",
                        max_record_bytes=min(s.max_log_record_bytes, settings.ingest.max_message_bytes),
                        max_field_chars=settings.ingest.max_field_chars)  # fmt: skip


def _runtime(settings: Settings, given: ModelRuntime | None) -> ModelRuntime:
    """``given``, else the base model of ``serve.base_model``; then the start-up adapter, unless loaded."""
    s = settings.serve
    if given is None:
        if not s.base_model:
            raise ValueError("serve.base_model is not set: point it at a local Hugging Face model directory "
                             "(e.g. from `driftloop models toy DIR`)")  # fmt: skip
        given = ModelRuntime(s.base_model, device=s.device)
    runtime = given
    start = startup_adapter(settings)
    if start and start[0] not in {a.name for a in runtime.adapters()}:
        runtime.load_adapter(*start)
    return runtime


def create_serve_app(settings: Settings, *, model_runtime: ModelRuntime | None = None,
                     record_logger: RecordLogger | None = None) -> FastAPI:  # fmt: skip
    """The serving app: loads the base model (unless ``model_runtime`` is given) and the start-up adapter.

    The record logger starts here (``serve.log_records``); the app's shutdown flushes it (10 s at most).
    Raises ValueError before loading anything when the host is not loopback and no real API key is set.
    """
    from driftloop.serve.routes import adapters, completions, feedback, health

    s = settings.serve
    api_key = configured_api_key(settings)
    check_exposure(settings, api_key)
    runtime = _runtime(settings, model_runtime)
    logger = record_logger if record_logger is not None else (make_record_logger(settings) if s.log_records else None)
    state = ServeState(settings=settings, runtime=runtime, logger=logger, metrics=ServeMetrics(runtime, logger),
                       api_key=api_key, gen_pool=ThreadPoolExecutor(4, thread_name_prefix="serve-gen"),
                       admin_pool=ThreadPoolExecutor(2, thread_name_prefix="serve-admin"),
                       adapter_roots=adapter_roots(settings))  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        lost = await asyncio.to_thread(state.close, 10.0)
        why = f": {logger.last_error or 'broker unreachable: still connecting'}" if lost and logger else ""
        log.info("driftloop serve stopped (%d log record(s) undelivered%s)", lost, why)

    app = FastAPI(title="driftloop serve", lifespan=lifespan)
    app.state.serve = state
    install_middleware(app, state)
    for module in (completions, adapters, feedback, health):
        app.include_router(module.router)
    return app
