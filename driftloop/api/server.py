"""Run the API with uvicorn in a background thread (what ``driftloop run`` does)."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn
from sqlalchemy import Engine

from driftloop.settings import Settings, api_problems

log = logging.getLogger("driftloop.api")


class ApiServer:
    """uvicorn serving :func:`~driftloop.api.app.create_app` in the thread ``driftloop-api``.

    Refuses (ValueError) placeholder tokens and open reads on a non-loopback address, whoever starts it:
    the CLI checks first, this catches an embedding that did not.
    """

    def __init__(self, settings: Settings, engine: Engine, *, host: str | None = None, port: int | None = None,
                 instance: str | None = None) -> None:  # fmt: skip
        from driftloop.api.app import create_app

        problems = api_problems(settings.api, host or settings.api.host)
        if problems:
            raise ValueError("refusing to serve the API: " + "; ".join(problems))
        self.app = create_app(settings, engine, instance=instance)
        self.config = uvicorn.Config(self.app, host=host or settings.api.host,
                                     port=settings.api.port if port is None else port, log_level="warning",
                                     access_log=False, lifespan="off")  # fmt: skip
        self.server = uvicorn.Server(self.config)
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` as bound (the real port when 0 was asked for)."""
        port = self.config.port
        for s in getattr(self.server, "servers", []) or []:
            for sock in s.sockets:
                port = sock.getsockname()[1]
                break
        host = self.config.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    def start(self, timeout_s: float = 15.0) -> str:
        """Start serving; returns the URL. Raises RuntimeError when it could not bind (e.g. the port is taken)."""
        self.thread = threading.Thread(target=self.server.run, name="driftloop-api", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(
                    f"the API server could not start on {self.config.host}:{self.config.port} "
                    "(port in use? see the error above); change api.port or set api.enabled: false"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the API server did not start within {timeout_s:g}s")
            time.sleep(0.05)
        return self.url

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop accepting requests, finish those in flight (up to ``timeout_s``), and wait for the thread."""
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout_s)
            if self.thread.is_alive():
                self.server.force_exit = True
                self.thread.join(2.0)
