"""Storage: SQLAlchemy models, engine creation and migrations (the ingestion writer is driftloop.ingest.writer)."""

from driftloop.store.db import create_engine_from_url, current_revision, migrate
from driftloop.store.models import metadata

__all__ = ["create_engine_from_url", "current_revision", "metadata", "migrate"]
