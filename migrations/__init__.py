"""Alembic migrations for driftloop (run with ``driftloop db upgrade``)."""
