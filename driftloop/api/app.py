"""The FastAPI application: ``create_app`` builds the app and its shared objects and includes one router per resource.

Routers live in :mod:`driftloop.api.routes` (health, windows, reports, alerts, jobs, retrain, models,
promotions, status, review, and the receiver's ingest routes; the review page in :mod:`driftloop.api.review_page`); what they share is in
:mod:`driftloop.api.deps`, parameter types and documented errors in :mod:`driftloop.api.params`, exception handlers in :mod:`driftloop.api.errors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from driftloop.api.auth import require_admin, require_ingest, require_read
from driftloop.api.deps import ApiDeps, Background
from driftloop.api.errors import install_error_handlers
from driftloop.api.metrics import make_registry
from driftloop.api.review_page import router as review_page_router
from driftloop.api.routes import (
    alerts,
    health,
    ingest,
    jobs,
    models,
    promotions,
    reports,
    retrain,
    review,
    status,
    windows,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from driftloop.settings import Settings

DESCRIPTION = (
    "Drift monitoring, alerts and the retrain loop of a driftloop daemon. Mutating endpoints need "
    "`Authorization: Bearer <token>` with an admin token from `api.tokens`; read endpoints are open unless "
    "`api.read_requires_token`. A route that finds the database unreachable answers 503 with `Retry-After`."
)


def create_app(settings: Settings, engine: Engine, *, instance: str | None = None) -> FastAPI:
    """The API over ``engine`` with ``settings`` (tokens, retrain policies, targets, jobs)."""
    from driftloop.clikit import default_instance
    from driftloop.retrain.registry import ModelRegistry

    d = ApiDeps(settings=settings, engine=engine, instance=instance or default_instance() + ":api",
                read=require_read(settings.api), admin=require_admin(settings.api),
                registry=make_registry(engine), background=Background())  # fmt: skip
    app = FastAPI(title="driftloop", version="1", description=DESCRIPTION)
    app.state.settings = settings
    app.state.engine = engine
    app.state.background = d.background
    reg = ModelRegistry(engine)
    for r in (health.router(d), windows.router(d), reports.router(d), alerts.router(d), jobs.router(d),
              retrain.router(d), models.router(d, reg), promotions.router(d, reg), status.router(d)):  # fmt: skip
        app.include_router(r)
    app.include_router(review.router(d))  # the human review queue, and its page on the status site
    app.include_router(review_page_router())
    if settings.api.receiver.enabled:  # the HTTP front door (docs/receiver.md): produces to Kafka, no state
        from driftloop.api.receiver import Receiver

        app.state.receiver = Receiver(settings)
        app.router.on_shutdown.append(app.state.receiver.close)  # its producer flushes, its threads end
        app.include_router(ingest.router(app.state.receiver, require_ingest(settings.api)))
    install_error_handlers(app)
    return app
