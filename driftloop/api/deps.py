"""What the API routers share: settings, engine, instance, auth dependencies, metrics registry, background threads.

The routers are built per app from an :class:`ApiDeps` (``router(deps)`` in each ``routes`` module), not
declared once at import: the read dependency differs with ``api.read_requires_token`` (open reads do not
declare the bearer scheme), and the published spec must say what this server does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from driftloop.api.auth import Principal

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from sqlalchemy import Engine

    from driftloop.settings import Settings

log = logging.getLogger("driftloop.api")


class Background:
    """Actions started by the API in threads (one at a time per name); ``join`` waits for them (tests, shutdown)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}

    def start(self, name: str, fn: Callable[[], Any]) -> bool:
        """Start ``fn`` in a thread called ``name``; False if one by that name is still running."""
        with self._lock:
            t = self._threads.get(name)
            if t is not None and t.is_alive():
                return False

            def main() -> None:
                try:
                    fn()
                except Exception:
                    log.exception("background action %s failed", name)

            t = threading.Thread(target=main, name=f"driftloop-api-{name}", daemon=True)
            self._threads[name] = t
            t.start()
            return True

    def join(self, timeout: float | None = None) -> None:
        with self._lock:
            threads = list(self._threads.values())
        for t in threads:
            t.join(timeout)


@dataclass(frozen=True)
class ApiDeps:
    """One app's shared objects; ``read``/``admin`` are the FastAPI dependencies of read and mutating routes."""

    settings: Settings
    engine: Engine
    instance: str
    read: Callable[..., Principal]
    admin: Callable[..., Principal]
    registry: CollectorRegistry
    background: Background
