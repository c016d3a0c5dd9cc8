"""CLI: ``driftloop monitor check``, ``driftloop alerts list|ack``, ``driftloop policies test``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from driftloop.clikit import ConfigOpt, settings_and_engine, setup_logging
from driftloop.store.timestamps import utc

monitor_app = typer.Typer(help="Drift and quality checks.", no_args_is_help=True)


def _when(v: str | None) -> datetime | None:
    if v is None:
        return None
    try:
        t = datetime.fromisoformat(v)
    except ValueError:
        raise typer.BadParameter(f"{v!r} is not an ISO 8601 time (e.g. 2026-11-28T10:00:00Z)") from None
    return utc(t)


@monitor_app.command("check")
def check(
    model: Annotated[str, typer.Option("--model", "-m", help="Model id to check.")],
    config: ConfigOpt = None,
    window: Annotated[
        int | None, typer.Option(help="Window index (default: the newest complete unchecked one).")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Do not store the result.")] = False,
) -> None:
    """Run one drift/quality check now and print which features drifted, by how much, and the report path."""
    setup_logging("WARNING")
    from driftloop.monitor.check import run_check

    s, eng = settings_and_engine(config)
    try:
        res = run_check(eng, s, model, window_index=window, persist=not dry_run)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if res is None:
        typer.echo(f"no complete unchecked window for model {model!r} (window: {s.monitor.window.kind}, "
                   f"size {s.monitor.window.size}); has it had traffic?")  # fmt: skip
        raise typer.Exit(1)
    typer.echo(res.summary())


def register(app: typer.Typer) -> None:
    """Add the monitoring commands to the root CLI."""
    app.add_typer(monitor_app, name="monitor")
    from driftloop.monitor.alerts.cli import register as register_alerts

    register_alerts(app)
