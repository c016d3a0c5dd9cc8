"""Alert evaluation: hysteresis over recent windows, cooldown, deduplication, notification.

The decision logic is pure (``decide`` over a list of per-window metric dicts) and is shared by
the scheduled job and the backtest (``driftloop policies test``).

Hysteresis: a rule fires when its condition held in at least N (``windows``) of the last M
(``of``) windows *with data* — windows whose status is not ``ok`` and comparisons on missing
metrics are unknown and skipped. A fired alert resolves when the condition held in none of the
last M windows with data. In between, the state holds (no flapping).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Engine, and_, insert, select, update

from driftloop.settings import Settings
from monitor.alerts.abc import AlertEvent, AlertFired, AlertReminded, AlertResolved, AlertSink
from monitor.alerts.config import RuleSettings
from monitor.alerts.grammar import Node, parse_condition
from monitor.alerts.sinks import build_sinks
from monitor.alerts.tables import alert_notifications, alerts

log = logging.getLogger("driftloop.alerts")

Decision = Literal["firing", "clear", "hold", "no_data"]


@dataclass(frozen=True)
class WindowPoint:
    """One checked window of one group, with its metrics."""

    window_id: int
    model_id: str
    segment: str
    window_end: datetime
    status: str
    metrics: dict[str, float | None]


def decide(node: Node, points: list[WindowPoint], n: int, m: int) -> tuple[Decision, int, int]:
    """Decision over the newest ``m`` windows with data: (decision, true count, known count)."""
    known: list[bool] = []
    for p in reversed(points):
        if p.status != "ok":
            continue
        v = node.eval(p.metrics)
        if v is None:
            continue
        known.append(v)
        if len(known) == m:
            break
    if not known:
        return "no_data", 0, 0
    hits = sum(known)
    if hits >= n:
        return "firing", hits, len(known)
    if hits == 0:
        return "clear", 0, len(known)
    return "hold", hits, len(known)


def describe(rule: RuleSettings, node: Node, latest: WindowPoint, hits: int, known: int) -> tuple[str, float | None]:
    """Human message and the value of the condition's first metric in the newest window."""
    names = sorted(node.metrics())
    vals = ", ".join(f"{k}={latest.metrics.get(k):.4g}" if latest.metrics.get(k) is not None else f"{k}=n/a"
                     for k in names)  # fmt: skip
    msg = f"`{rule.condition}` held in {hits} of the last {known} window(s); latest window: {vals}"
    return msg, latest.metrics.get(names[0]) if names else None


@dataclass
class Transition:
    """A state change found by replaying history (backtests)."""

    rule: str
    group: str
    event: str  # fired | resolved
    at: datetime
    message: str


def backtest(rules: list[RuleSettings], points: list[WindowPoint]) -> list[Transition]:
    """Replay windows in time order through ``rules``; return when each would fire and resolve."""
    out: list[Transition] = []
    ordered = sorted(points, key=lambda p: (p.window_end, p.window_id))
    for rule in rules:
        node = parse_condition(rule.condition)
        history: dict[tuple[str, str], list[WindowPoint]] = defaultdict(list)
        firing: dict[tuple[str, str], bool] = defaultdict(bool)
        for p in ordered:
            key = _group(rule, p.model_id, p.segment)
            history[key].append(p)
            d, hits, known = decide(node, history[key], rule.windows, rule.of)
            if d == "firing" and not firing[key]:
                msg, _ = describe(rule, node, p, hits, known)
                out.append(Transition(rule.name, "/".join(key).rstrip("/"), "fired", p.window_end, msg))
                firing[key] = True
            elif d == "clear" and firing[key]:
                out.append(Transition(rule.name, "/".join(key).rstrip("/"), "resolved", p.window_end,
                                      f"held in none of the last {known} window(s)"))  # fmt: skip
                firing[key] = False
    return sorted(out, key=lambda t: t.at)


def _group(rule: RuleSettings, model_id: str, segment: str) -> tuple[str, str]:
    return (model_id, segment if "segment" in rule.group_by else "")


def load_points(engine: Engine, *, since: datetime | None = None, until: datetime | None = None,
                model_id: str | None = None, per_group: int | None = None) -> list[WindowPoint]:  # fmt: skip
    """Checked windows with their metrics, oldest first."""
    from monitor.tables import monitor_windows as mw
    from monitor.tables import window_metrics as wm

    q = select(mw.c.id, mw.c.model_id, mw.c.segment, mw.c.window_end, mw.c.status)
    conds = []
    if since is not None:
        conds.append(mw.c.window_end >= since)
    if until is not None:
        conds.append(mw.c.window_end <= until)
    if model_id is not None:
        conds.append(mw.c.model_id == model_id)
    if conds:
        q = q.where(and_(*conds))
    q = q.order_by(mw.c.window_end.desc(), mw.c.id.desc())
    with engine.connect() as conn:
        wins = list(conn.execute(q).all())
        if per_group is not None:
            count: dict[tuple[str, str], int] = defaultdict(int)
            kept = []
            for w in wins:
                k = (w.model_id, w.segment)
                if count[k] < per_group:
                    kept.append(w)
                    count[k] += 1
            wins = kept
        metrics: dict[int, dict[str, float | None]] = defaultdict(dict)
        ids = [w.id for w in wins]
        for off in range(0, len(ids), 1000):
            chunk = ids[off : off + 1000]
            for r in conn.execute(select(wm.c.window_id, wm.c.name, wm.c.value).where(wm.c.window_id.in_(chunk))):
                metrics[r.window_id][r.name] = r.value
    pts = [
        WindowPoint(w.id, w.model_id, w.segment, _aware(w.window_end), w.status, metrics.get(w.id, {})) for w in wins
    ]
    return sorted(pts, key=lambda p: (p.window_end, p.window_id))


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


class AlertEvaluationJob:
    """Scheduled job: evaluate every rule for every group; fire, remind, resolve, notify."""

    def __init__(self, settings: Settings, engine: Engine, sinks: dict[str, AlertSink] | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.sinks = sinks if sinks is not None else build_sinks(settings.alerts.channels)

    def run_once(self, now: datetime | None = None) -> list[AlertEvent]:
        a = self.settings.alerts
        if not a.enabled or not a.rules:
            return []
        now = now or datetime.now(UTC)
        depth = max(r.of for r in a.rules) * 3 + 5
        points = load_points(self.engine, per_group=depth)
        events: list[AlertEvent] = []
        for rule in a.rules:
            node = parse_condition(rule.condition)
            groups: dict[tuple[str, str], list[WindowPoint]] = defaultdict(list)
            for p in points:
                groups[_group(rule, p.model_id, p.segment)].append(p)
            for key, hist in groups.items():
                try:
                    ev = self._evaluate(rule, node, key, hist, now)
                except Exception:
                    log.exception("evaluating rule %s for %s failed", rule.name, key)
                    continue
                if ev is not None:
                    events.append(ev)
        return events

    def _evaluate(self, rule: RuleSettings, node: Node, key: tuple[str, str], hist: list[WindowPoint],
                  now: datetime) -> AlertEvent | None:  # fmt: skip
        decision, hits, known = decide(node, hist, rule.windows, rule.of)
        gk = "/".join(key)
        latest = hist[-1]
        cooldown = timedelta(minutes=rule.cooldown_minutes)
        with self.engine.begin() as conn:
            open_row = conn.execute(
                select(alerts).where(alerts.c.rule == rule.name, alerts.c.group_key == gk,
                                     alerts.c.state.in_(("fired", "acknowledged"))).order_by(alerts.c.id.desc())
            ).mappings().first()  # fmt: skip
            if decision == "firing":
                msg, value = describe(rule, node, latest, hits, known)
                if open_row is None:
                    last_note = conn.execute(
                        select(alerts.c.last_notified_at).where(alerts.c.rule == rule.name, alerts.c.group_key == gk)
                        .order_by(alerts.c.id.desc())
                    ).scalar()  # fmt: skip
                    aid = conn.execute(
                        insert(alerts).returning(alerts.c.id),
                        {"rule": rule.name, "group_key": gk, "model_id": key[0], "segment": key[1],
                         "severity": rule.severity, "state": "fired", "condition": rule.condition, "message": msg,
                         "value": value, "window_id": latest.window_id, "fired_at": now, "last_evaluated_at": now,
                         "notify_count": 0},
                    ).scalar_one()  # fmt: skip
                    ev: AlertEvent = AlertFired(aid, rule.name, key[0], key[1], rule.severity, rule.condition, msg,
                                                value, now)  # fmt: skip
                    if last_note is not None and now - _aware(last_note) < cooldown:
                        log.info("alert %s fired again within its cooldown; not notifying", rule.name)
                        return ev
                    self._notify(conn, rule, ev)
                    return ev
                conn.execute(update(alerts).where(alerts.c.id == open_row["id"]).values(
                    last_evaluated_at=now, value=value, message=msg, window_id=latest.window_id))  # fmt: skip
                last = open_row["last_notified_at"]
                if open_row["state"] == "fired" and (last is None or now - _aware(last) >= cooldown) and cooldown:
                    ev = AlertReminded(open_row["id"], rule.name, key[0], key[1], rule.severity, rule.condition, msg,
                                       value, now)  # fmt: skip
                    self._notify(conn, rule, ev)
                    return ev
                return None
            if open_row is not None:
                conn.execute(update(alerts).where(alerts.c.id == open_row["id"]).values(last_evaluated_at=now))
                if decision == "clear":
                    msg = f"`{rule.condition}` held in none of the last {known} window(s)"
                    conn.execute(update(alerts).where(alerts.c.id == open_row["id"]).values(
                        state="resolved", resolved_at=now, message=msg))  # fmt: skip
                    ev = AlertResolved(open_row["id"], rule.name, key[0], key[1], rule.severity, rule.condition, msg,
                                       None, now)  # fmt: skip
                    self._notify(conn, rule, ev)
                    return ev
        return None

    def _notify(self, conn: Any, rule: RuleSettings, ev: AlertEvent) -> None:
        for name in rule.channels:
            sink = self.sinks.get(name)
            ok, err = True, None
            if sink is None:
                ok, err = False, f"channel {name!r} is not configured"
            else:
                try:
                    sink.send(ev)
                except Exception as e:  # one failing channel never blocks the others
                    ok, err = False, str(e)[:2000]
                    log.error("alert channel %s failed for %s: %s", name, rule.name, err)
            conn.execute(insert(alert_notifications), {"alert_id": ev.alert_id, "channel": name, "event": ev.event,
                                                       "ok": ok, "error": err, "at": ev.at})  # fmt: skip
        conn.execute(update(alerts).where(alerts.c.id == ev.alert_id).values(
            notify_count=alerts.c.notify_count + 1, last_notified_at=ev.at))  # fmt: skip


def acknowledge(engine: Engine, alert_id: int, by: str) -> bool:
    """Mark an open alert acknowledged (it still resolves when its condition clears)."""
    with engine.begin() as conn:
        res = conn.execute(
            update(alerts).where(alerts.c.id == alert_id, alerts.c.state == "fired")
            .values(state="acknowledged", acknowledged_at=datetime.now(UTC), acknowledged_by=by[:128])
        )  # fmt: skip
        return bool(res.rowcount)
