"""The daemon's HTTP API: health, Prometheus metrics, read/mutate endpoints and the status page.

``create_app(settings, engine)`` builds the FastAPI application; :class:`~driftloop.api.server.ApiServer`
runs it with uvicorn in a thread of ``driftloop run``; ``driftloop api serve`` runs it alone.
"""

from __future__ import annotations

from driftloop.api.app import create_app

__all__ = ["create_app"]
