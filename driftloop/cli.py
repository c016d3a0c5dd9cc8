"""The ``driftloop`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from driftloop import daemon_cli, dashboards, demo, serve
from driftloop.api import cli as api_cli
from driftloop.clikit import ConfigOpt, get_settings, refuse_unsafe
from driftloop.ingest import cli as ingest_cli
from driftloop.monitor import cli as monitor_cli
from driftloop.retrain import cli as retrain_cli
from driftloop.retrain import estimator_cli

app = typer.Typer(
    help="driftloop: ingest production LLM logs, detect drift, alert, retrain and promote.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema: upgrade, downgrade, current revision.", no_args_is_help=True)
app.add_typer(db_app, name="db")


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


# Every sub-command group registers itself; they import driftloop.clikit, never this module, so importing
# them here is no cycle.
for _group in (ingest_cli, monitor_cli, daemon_cli, demo, retrain_cli, estimator_cli, dashboards, api_cli, serve):
    _group.register(app)


def main() -> None:
    """Console-script entry point."""
    app()

