"""Storage: SQLAlchemy models, engine creation, migrations and batch writers."""

from driftloop.store.db import create_engine_from_url, current_revision, migrate
from driftloop.store.models import metadata

__all__ = ["create_engine_from_url", "current_revision", "metadata", "migrate"]
