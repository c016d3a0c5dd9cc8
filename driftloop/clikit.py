"""What every command shares at start-up: logging, settings (or exit 2 listing the problems), the start-up
refusals, migrations, and the name a process records as who did something.

A bottom-layer module (it imports only driftloop.settings and driftloop.store), so that the sub-commands in
driftloop.ingest, driftloop.monitor and driftloop.retrain use it without importing the application's root
command line (driftloop.cli), which imports them.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from driftloop.settings import ConfigError, Settings, load_settings, startup_problems

if TYPE_CHECKING:
    from sqlalchemy import Engine

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML settings file (default: $DRIFTLOOP_CONFIG, else built-in defaults)."),
]


def setup_logging(level: str = "INFO") -> None:
    """Structured-enough logging to stderr: time, level, logger, message."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # "skipped: maximum number of running instances" is expected with coalescing; driftloop.jobs warns on overruns
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)


def get_settings(config: Path | None, **overrides: Any) -> Settings:
    """Load settings or exit 2 with every problem listed."""
    try:
        return load_settings(config, **overrides)
    except ConfigError as e:
        typer.echo(f"error: invalid configuration in {e.source}:", err=True)
        for p in e.problems:
            typer.echo(f"  {p}", err=True)
        raise typer.Exit(2) from None


def settings_and_engine(config: Path | None) -> tuple[Settings, Engine]:
    """Settings (or exit 2) and an engine on their database: how a command that reads the database starts."""
    from driftloop.store.db import create_engine_from_url

    s = get_settings(config)
    return s, create_engine_from_url(s.database.url)


def refuse_unsafe(s: Settings, source: object, *, ingest: bool, api_host: str | None) -> None:
    """Exit 2 listing every start-up problem (default salt, placeholder tokens, open reads on a public address)."""
    problems = startup_problems(s, ingest=ingest, api_host=api_host)
    if problems:
        typer.echo(f"error: refusing to start with the configuration in {source}:", err=True)
        for p in problems:
            typer.echo(f"  {p}", err=True)
        raise typer.Exit(2)


def prepare(config: Path | None, log_level: str, migrate: bool, *, ingest: bool | None = True,
            api: bool | None = False, api_host: str | None = None) -> Settings:  # fmt: skip
    """Start-up shared by long-running commands: logging, settings, start-up checks, optional migrations.

    ``ingest``/``api``: whether the command ingests / serves the API (None: as scheduler.ingest / api.enabled
    say), so it refuses exactly what would be unsafe for it, before migrating; ``api_host`` (default api.host)
    is where it binds.
    """
    setup_logging(log_level)
    s = get_settings(config)
    ingests = s.scheduler.ingest if ingest is None else ingest
    serves = s.api.enabled if api is None else api
    refuse_unsafe(s, config or "settings", ingest=ingests, api_host=(api_host or s.api.host) if serves else None)
    if migrate:
        from driftloop.store.db import migrate as do_migrate

        do_migrate(s.database.url)
    return s


def default_instance() -> str:
    """``host:pid``: unique among running processes, readable in logs, ``job_runs`` and ``retrain_jobs``."""
    return f"{socket.gethostname()}:{os.getpid()}"
