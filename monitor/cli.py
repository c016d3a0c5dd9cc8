"""CLI: ``driftloop monitor check``, ``driftloop alerts list|ack``, ``driftloop policies test``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from driftloop.cli import ConfigOpt, get_settings, setup_logging

monitor_app = typer.Typer(help="Drift and quality checks.", no_args_is_help=True)
alerts_app = typer.Typer(help="Stored alerts.", no_args_is_help=True)
policies_app = typer.Typer(help="Alert policies: backtest rules against stored history.", no_args_is_help=True)


def _engine(config: Path | None):  # type: ignore[no-untyped-def]
    from driftloop.store.db import create_engine_from_url

    s = get_settings(config)
    return s, create_engine_from_url(s.database.url)


def _when(v: str | None) -> datetime | None:
    if v is None:
        return None
    try:
        t = datetime.fromisoformat(v)
    except ValueError:
        raise typer.BadParameter(f"{v!r} is not an ISO 8601 time (e.g. 2026-11-28T10:00:00Z)") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


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
    from monitor.check import run_check

    s, eng = _engine(config)
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


@alerts_app.command("list")
def alerts_list(
    config: ConfigOpt = None,
    state: Annotated[
        str, typer.Option(help="open (fired or acknowledged), fired, acknowledged, resolved, all.")
    ] = "open",
    limit: Annotated[int, typer.Option(min=1)] = 50,
) -> None:
    """List alerts, newest first."""
    from sqlalchemy import select

    from monitor.alerts.tables import alerts

    _, eng = _engine(config)
    q = select(alerts).order_by(alerts.c.id.desc()).limit(limit)
    if state == "open":
        q = q.where(alerts.c.state.in_(("fired", "acknowledged")))
    elif state != "all":
        q = q.where(alerts.c.state == state)
    with eng.connect() as c:
        rows = list(c.execute(q).mappings())
    if not rows:
        typer.echo(f"no {state} alerts")
        return
    for r in rows:
        typer.echo(f"#{r['id']:<5} {r['state']:<12} {r['severity']:<8} {r['rule']:<24} {r['group_key']:<24} "
                   f"fired {r['fired_at']:%Y-%m-%d %H:%M:%S}  {r['message']}")  # fmt: skip


@alerts_app.command("ack")
def alerts_ack(
    alert_id: Annotated[int, typer.Argument(help="Alert id (see alerts list).")],
    config: ConfigOpt = None,
    by: Annotated[str, typer.Option(help="Who acknowledges.")] = "cli",
) -> None:
    """Acknowledge a fired alert (it still resolves by itself when its condition clears)."""
    from monitor.alerts.engine import acknowledge

    _, eng = _engine(config)
    if not acknowledge(eng, alert_id, by):
        typer.echo(f"error: no fired alert with id {alert_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"alert {alert_id} acknowledged by {by}")


@policies_app.command("test")
def policies_test(
    file: Annotated[Path, typer.Argument(help="Settings/policy YAML whose alerts.rules are replayed.")],
    config: ConfigOpt = None,
    since: Annotated[str | None, typer.Option("--from", help="Start of the history (ISO 8601).")] = None,
    until: Annotated[str | None, typer.Option("--to", help="End of the history (ISO 8601).")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
) -> None:
    """Backtest: replay stored window metrics through the rules in FILE; print when they would fire/resolve."""
    from monitor.alerts.engine import backtest, load_points

    policy = get_settings(file)
    _, eng = _engine(config or file)
    points = load_points(eng, since=_when(since), until=_when(until), model_id=model)
    if not policy.alerts.rules:
        typer.echo(f"{file} has no alerts.rules", err=True)
        raise typer.Exit(2)
    trans = backtest(policy.alerts.rules, points)
    typer.echo(f"replayed {len(points)} window(s) through {len(policy.alerts.rules)} rule(s)")
    for t in trans:
        typer.echo(f"{t.at:%Y-%m-%d %H:%M:%S}  {t.event.upper():<9} {t.rule:<24} {t.group:<20} {t.message}")
    fired = sum(t.event == "fired" for t in trans)
    typer.echo(
        f"{fired} firing(s), {sum(t.event == 'resolved' for t in trans)} resolution(s); nothing was notified or stored"
    )


def register(app: typer.Typer) -> None:
    """Add the monitoring commands to the root CLI."""
    app.add_typer(monitor_app, name="monitor")
    app.add_typer(alerts_app, name="alerts")
    app.add_typer(policies_app, name="policies")
