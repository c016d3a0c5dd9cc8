"""The ``driftloop`` command line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from driftloop.settings import ConfigError, Settings, load_settings, startup_problems

app = typer.Typer(
    help="driftloop: ingest production LLM logs, detect drift, alert, retrain and promote.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema: upgrade, downgrade, current revision.", no_args_is_help=True)
app.add_typer(db_app, name="db")

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


@app.command("check-config")
def check_config(file: Annotated[Path, typer.Argument(help="YAML settings/policy file to validate.")]) -> None:
    """Validate a settings file; print every problem with its path; exit 2 on error.

    Also what `driftloop run` would refuse at start (salt, tokens, open reads), with this shell's environment.
    """
    s = get_settings(file)
    refuse_unsafe(s, file, ingest=True, api_host=s.api.host if s.api.enabled else None)
    typer.echo(
        f"{file}: OK (database {s.database.url.split('://', 1)[0]}, "
        f"{len(s.kafka.topics)} input topic(s), DLQ {s.kafka.dlq_topic})"
    )


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None, revision: str = typer.Option("head", help="Target revision.")) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from driftloop.store.db import migrate

    s = get_settings(config)
    migrate(s.database.url, revision)
    typer.echo(f"database upgraded to {revision}")


@db_app.command("downgrade")
def db_downgrade(
    config: ConfigOpt = None, revision: str = typer.Option(..., help="Target revision, e.g. base.")
) -> None:
    """Revert migrations down to REVISION (use 'base' to drop everything driftloop created)."""
    from driftloop.store.db import downgrade

    s = get_settings(config)
    downgrade(s.database.url, revision)
    typer.echo(f"database downgraded to {revision}")


@db_app.command("current")
def db_current(config: ConfigOpt = None) -> None:
    """Print the database's revision and the newest one this code knows."""
    from driftloop.store.db import create_engine_from_url, current_revision, head_revision

    s = get_settings(config)
    cur = current_revision(create_engine_from_url(s.database.url))
    head = head_revision(s.database.url)
    typer.echo(f"current: {cur or '<empty>'}  head: {head}" + ("" if cur == head else "  (run: driftloop db upgrade)"))


def _register_optional() -> None:
    """Sub-commands that live in the other packages."""
    import importlib

    for mod, name in [
        ("driftloop.ingest.cli", None),
        ("driftloop.monitor.cli", None),
        ("driftloop.daemon_cli", None),
        ("driftloop.demo", None),
        ("driftloop.retrain.cli", None),
        ("driftloop.dashboards", None),
        ("driftloop.api.cli", None),
        ("driftloop.serve", None),
    ]:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        m.register(app)
        del name


_register_optional()


def main() -> None:
    """Console-script entry point."""
    app()

