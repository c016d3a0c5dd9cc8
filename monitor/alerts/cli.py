"""CLI: ``driftloop alerts list|ack`` and ``driftloop policies test`` (backtest a policy on stored history).

Wire into the root app with ``monitor.alerts.cli.register(app)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from driftloop.clikit import ConfigOpt, get_settings
from driftloop.store.timestamps import utc

alerts_app = typer.Typer(help="Stored alerts: list and acknowledge.", no_args_is_help=True)
policies_app = typer.Typer(help="Alert policies: backtest rules against stored window metrics.", no_args_is_help=True)

STATES = ("open", "fired", "acknowledged", "resolved", "all")
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per line (for scripts).")]


def _engine(config: Path | None, *tables: str) -> Any:
    """Engine of the configured database; exits 2 with a clear message if it is unreachable or lacks ``tables``."""
    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from driftloop.store.db import create_engine_from_url

    s = get_settings(config)
    shown = make_url(s.database.url).render_as_string(hide_password=True)
    eng = create_engine_from_url(s.database.url)
    try:
        insp = inspect(eng)
        missing = [t for t in tables if not insp.has_table(t)]
    except SQLAlchemyError as e:
        eng.dispose()
        cause = getattr(e, "orig", None) or e
        typer.echo(f"error: cannot reach the database {shown}: {type(cause).__name__}: {cause}", err=True)
        raise typer.Exit(2) from None
    if missing:
        eng.dispose()
        typer.echo(f"error: the database {shown} has no table(s) {', '.join(missing)}; run `driftloop db upgrade`",
                   err=True)  # fmt: skip
        raise typer.Exit(2)
    return eng


def parse_time(v: str | None, option: str) -> datetime | None:
    """ISO 8601 (``Z`` allowed); naive times are UTC. Raises typer.BadParameter naming the option."""
    if v is None:
        return None
    try:
        t = datetime.fromisoformat(v.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{v!r} is not an ISO 8601 time (e.g. 2026-11-28T10:00:00Z or 2026-11-28)", param_hint=option
        ) from None
    return utc(t)


def _ts(v: datetime | None) -> str:
    return "-" if v is None else f"{v.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"


def _iso(v: datetime | None) -> str | None:
    return None if v is None else v.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _num(n: int | None) -> str:
    return "#?" if n is None else f"#{n}"


def _echo_json(obj: Mapping[str, Any]) -> None:
    typer.echo(json.dumps(obj, default=str))


def _alert_rows(eng: Any, state: str, model: str | None, limit: int) -> list[Any]:
    """Alerts (newest first) with the number, start and end of the window each first fired in."""
    from sqlalchemy import select

    from driftloop.monitor.alerts.tables import alerts
    from driftloop.monitor.tables import monitor_windows as mw

    cols = [mw.c.window_index, mw.c.window_start, mw.c.window_end]
    q = (select(alerts, *cols).select_from(alerts.outerjoin(mw, mw.c.id == alerts.c.window_id))
         .order_by(alerts.c.id.desc()).limit(limit))  # fmt: skip
    if state == "open":
        q = q.where(alerts.c.state.in_(("fired", "acknowledged")))
    elif state != "all":
        q = q.where(alerts.c.state == state)
    if model is not None:
        q = q.where(alerts.c.model_id == model)
    try:
        with eng.connect() as c:
            return list(c.execute(q).mappings())
    finally:
        eng.dispose()


def _alert_json(r: Mapping[str, Any]) -> dict[str, Any]:
    return {"model": r["model_id"], "workload": r["workload"], "segment": r["segment"], "window": r["window_index"],
            "window_start": _iso(utc(r["window_start"]) if r["window_start"] else None),
            "window_end": _iso(utc(r["window_end"]) if r["window_end"] else None), "rule": r["rule"],
            "state": r["state"], "id": r["id"], "severity": r["severity"], "message": r["message"],
            "fired_at": _iso(utc(r["fired_at"])), "resolved_at": _iso(utc(r["resolved_at"]) if r["resolved_at"] else None)}  # fmt: skip


@alerts_app.command("list")
def alerts_list(
    config: ConfigOpt = None,
    state: Annotated[
        str, typer.Option("--state", help="open (fired or acknowledged), fired, acknowledged, resolved or all.")
    ] = "open",
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only alerts of this model.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many, newest first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List stored alerts, newest first, each with the window (#number) it first fired in."""
    if state not in STATES:
        raise typer.BadParameter(f"must be one of {', '.join(STATES)} (got {state!r})", param_hint="--state")
    rows = _alert_rows(_engine(config, "alerts"), state, model, limit)
    if as_json:
        for r in rows:
            _echo_json(_alert_json(r))
        return
    if not rows:
        typer.echo(f"no {'' if state == 'all' else state + ' '}alerts" + (f" for model {model!r}" if model else ""))
        return
    typer.echo(f"{'ID':<6} {'STATE':<12} {'SEVERITY':<8} {'RULE':<24} {'GROUP':<24} {'WINDOW':<7} {'FIRED':<20} "
               f"{'RESOLVED':<20} MESSAGE")  # fmt: skip
    for r in rows:
        ack = f" (ack by {r['acknowledged_by']})" if r["acknowledged_by"] else ""
        win = "-" if r["window_index"] is None else f"#{r['window_index']}"
        typer.echo(
            f"{r['id']:<6} {r['state']:<12} {r['severity']:<8} {r['rule']:<24} {r['group_key']:<24} {win:<7} "
            f"{_ts(r['fired_at']):<20} {_ts(r['resolved_at']):<20} {r['message']}{ack}"
        )


@alerts_app.command("ack")
def alerts_ack(
    alert_id: Annotated[int, typer.Argument(help="Alert id (see: driftloop alerts list).")],
    config: ConfigOpt = None,
    by: Annotated[str, typer.Option("--by", help="Who acknowledges (stored with the alert).")] = "cli",
) -> None:
    """Acknowledge a fired alert: no more reminders; it still resolves when its condition clears."""
    from driftloop.monitor.alerts.engine import acknowledge, alert_state

    eng = _engine(config, "alerts")
    try:
        done = acknowledge(eng, alert_id, by)
        state = None if done else alert_state(eng, alert_id)
    finally:
        eng.dispose()
    if not done:
        why = "not found" if state is None else f"is already {state}; only fired alerts can be acknowledged"
        typer.echo(f"error: alert {alert_id} {why}", err=True)
        raise typer.Exit(1)
    typer.echo(f"alert {alert_id} acknowledged by {by}")


@policies_app.command("test")
def policies_test(
    file: Annotated[Path, typer.Argument(help="Policy/settings YAML whose alerts.rules are replayed.")],
    config: ConfigOpt = None,
    since: Annotated[str | None, typer.Option("--from", help="Start of the history, ISO 8601 (window_end >=).")] = None,
    until: Annotated[str | None, typer.Option("--to", help="End of the history, ISO 8601 (window_end <=).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only this model.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Backtest: replay stored window metrics through the rules of FILE and print when each alert would have
    fired and resolved. Nothing is notified or written.

    The database is the one of --config if given, else the one in FILE (else the default).
    """
    from driftloop.monitor.alerts.engine import backtest, load_points

    t_from, t_to = parse_time(since, "--from"), parse_time(until, "--to")
    if t_from and t_to and t_from > t_to:
        raise typer.BadParameter(f"--from ({since}) is after --to ({until})", param_hint="--from")
    policy = get_settings(file)
    if not policy.alerts.rules:
        typer.echo(f"error: {file} has no alerts.rules to test", err=True)
        raise typer.Exit(2)
    eng = _engine(config or file, "monitor_windows", "window_metrics")
    try:
        points = load_points(eng, since=t_from, until=t_to, model_id=model)
    finally:
        eng.dispose()
    transitions = backtest(policy.alerts.rules, points)
    if as_json:
        for t in transitions:
            _echo_json(_transition_json(t))
        return
    usable = sum(p.status == "ok" for p in points)
    typer.echo(
        f"replaying {len(points)} window(s) ({usable} with data) of {len({p.model_id for p in points})} model(s) "
        f"through {len(policy.alerts.rules)} rule(s) of {file}"
    )
    for t in transitions:
        since = "" if t.event == "fired" else f" (fired in {_num(t.first_window)})"
        typer.echo(f"{_ts(t.at)}  {t.event.upper():<9} {_num(t.window):<7} {t.rule:<24} {t.group:<24} "
                   f"[{_ts(t.window_start)} .. {_ts(t.at)}]{since} {t.message}")  # fmt: skip
    _first_fired_table([r.name for r in policy.alerts.rules], transitions)
    fired = sum(t.event == "fired" for t in transitions)
    resolved = sum(t.event == "resolved" for t in transitions)
    still = fired - resolved
    typer.echo(
        f"{fired} firing(s), {resolved} resolution(s), {still} still firing at the end; nothing was notified or stored"
    )


def _transition_json(t: Any) -> dict[str, Any]:
    return {"model": t.model_id, "workload": t.workload, "segment": t.segment, "window": t.window, "window_start": _iso(t.window_start),
            "window_end": _iso(t.at), "rule": t.rule, "state": t.event, "group": t.group,
            "first_window": t.first_window, "value": t.value, "message": t.message}  # fmt: skip


def _first_fired_table(rules: Sequence[str], transitions: Sequence[Any]) -> None:
    """Per rule and group: the first window it would have fired in and how often it fired."""
    first: dict[tuple[str, str], Any] = {}
    count: dict[tuple[str, str], int] = {}
    for t in transitions:
        if t.event == "fired":
            first.setdefault((t.rule, t.group), t)
            count[(t.rule, t.group)] = count.get((t.rule, t.group), 0) + 1
    typer.echo("first window each rule would have fired in:")
    typer.echo(f"  {'RULE':<24} {'GROUP':<24} {'FIRST':<7} {'WINDOW END':<20} FIRINGS")
    for rule in rules:
        keys = sorted(k for k in first if k[0] == rule)
        if not keys:
            typer.echo(f"  {rule:<24} {'-':<24} never")
        for k in keys:
            t = first[k]
            typer.echo(f"  {rule:<24} {k[1]:<24} {_num(t.window):<7} {_ts(t.at):<20} {count[k]}")


def register(app: typer.Typer) -> None:
    """Add ``alerts`` and ``policies`` to the root CLI (replacing same-named groups registered earlier)."""
    app.registered_groups[:] = [g for g in app.registered_groups if g.name not in ("alerts", "policies")]
    app.add_typer(alerts_app, name="alerts")
    app.add_typer(policies_app, name="policies")
