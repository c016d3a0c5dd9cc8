"""Alert evaluation: hysteresis over recent windows, cooldown, deduplication, notification.

The decision logic is pure (``evaluate``/``decide`` over a list of windows or plain per-window metric
dicts) and is shared by the scheduled job and the backtest (``driftloop policies test``).

Hysteresis: a rule fires when its condition held in at least N (``windows``) of the last M
(``of``) windows *with data*. Windows whose status is not ``ok`` (``insufficient_data``, ``error``)
and windows where the condition is unknown (a metric it names is missing) are skipped: they count
neither as true nor as false, and the look-back goes past them. An open alert resolves when the
condition held in none of the last M windows with data; in between the state holds (no flapping).

Besides the configured rules the engine evaluates *implicit* rules that other sections ask for
(:func:`implicit_rules`: a retrain policy's ``trigger.condition``), so every condition over windows
goes through the same hysteresis and leaves the same ``alerts`` rows. Alerts raised by other parts of
driftloop (the post-promotion watch's rollback) go through :func:`fire_alert`, which records and
notifies them as the engine does its own.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple

from sqlalchemy import Connection, Engine, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from driftloop.monitor.alerts.abc import AlertEvent, AlertFired, AlertReminded, AlertResolved, AlertSink
from driftloop.monitor.alerts.sinks import build_sinks
from driftloop.monitor.alerts.tables import OPEN_STATES, alert_notifications, alerts
from driftloop.settings import Settings
from driftloop.settings.alerts import RuleSettings
from driftloop.settings.conditions import Node, ordered_metrics, parse_condition
from driftloop.store.timestamps import utc

log = logging.getLogger("driftloop.alerts")

Decision = Literal["firing", "clear", "hold", "no_data"]


@dataclass(frozen=True)
class WindowPoint:
    """One checked window of one stream (model, workload, segment), with its metrics."""

    window_id: int
    model_id: str
    segment: str
    window_end: datetime
    status: str
    metrics: dict[str, float | None]
    window_index: int | None = None  # the window's number (``monitor_windows.window_index``)
    window_start: datetime | None = None
    workload: str = ""  # "" is the unnamed workload


#: What :func:`evaluate` reads of a window: a :class:`WindowPoint`, or a bare metrics mapping (an ``ok`` window).
#: The window itself is :class:`driftloop.monitor.windows.Window`.
PointLike = WindowPoint | Mapping[str, float | None]


@dataclass(frozen=True)
class Verdict:
    """Result of evaluating a rule over a window history."""

    decision: Decision
    hits: int  # windows among the last ``known`` where the condition held
    known: int  # windows with data looked at (<= M)
    latest: PointLike | None = field(default=None, compare=False)  # newest window with a known result


def _unpack(w: PointLike) -> tuple[str, Mapping[str, float | None]]:
    if isinstance(w, WindowPoint):
        return w.status, w.metrics
    return "ok", w


def evaluate(node: Node, history: Sequence[PointLike], n: int, m: int) -> Verdict:
    """Apply N-of-M hysteresis to ``history`` (oldest first); plain dicts count as ``ok`` windows."""
    known: list[bool] = []
    latest: PointLike | None = None
    for w in reversed(history):
        status, metrics = _unpack(w)
        if status != "ok":
            continue
        v = node.eval(metrics)
        if v is None:
            continue
        if latest is None:
            latest = w
        known.append(v)
        if len(known) == m:
            break
    if not known:
        return Verdict("no_data", 0, 0, None)
    hits = sum(known)
    if hits >= n:
        return Verdict("firing", hits, len(known), latest)
    if hits == 0:
        return Verdict("clear", 0, len(known), latest)
    return Verdict("hold", hits, len(known), latest)


def describe(rule: RuleSettings, node: Node, verdict: Verdict) -> tuple[str, float | None]:
    """Human message and the value of the condition's first metric in the newest window with data."""
    names = ordered_metrics(node)
    metrics = _unpack(verdict.latest)[1] if verdict.latest is not None else {}
    shown = []
    for k in names:
        v = metrics.get(k)
        shown.append(f"{k}={v:.4g}" if v is not None else f"{k}=n/a")
    msg = f"`{rule.condition}` held in {verdict.hits} of the last {verdict.known} window(s) with data; " + (
        f"latest: {', '.join(shown)}"
    )
    return msg, metrics.get(names[0]) if names else None


class Group(NamedTuple):
    """The group a window belongs to under a rule: one alert, and one window history, per group."""

    model_id: str
    workload: str  # "" when the rule does not group by workload
    segment: str  # "" when the rule does not group by segment
    key: str  # alerts.group_key: ``model[workload]/segment``, the parts the rule groups by


GROUP_KEY_CHARS = 600  # alerts.group_key


def group_key(rule: RuleSettings, model_id: str, segment: str, workload: str = "") -> Group:
    """The group of a window of (model, workload, segment) under ``rule.group_by``.

    The key of an unnamed workload and whole-model segment is the model id alone, as before workloads: the
    open alerts of an existing deployment keep their keys. A key longer than the column keeps a hash of the rest.
    """
    seg = segment if "segment" in rule.group_by else ""
    wl = workload if "workload" in rule.group_by else ""
    key = model_id + (f"[{wl}]" if wl else "") + (f"/{seg}" if seg else "")
    if len(key) > GROUP_KEY_CHARS:
        key = key[: GROUP_KEY_CHARS - 17] + "#" + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    return Group(model_id, wl, seg, key)


@dataclass
class Transition:
    """A state change found by replaying history (backtests), in the window where it happened.

    ``first_window`` is the number of the window the alert fired in (for a resolution: the one that
    opened it), so a reader sees where a problem started, not only where it was last seen.
    """

    rule: str
    group: str
    event: str  # fired | resolved
    at: datetime
    message: str
    value: float | None = None
    model_id: str = ""
    segment: str = ""
    window: int | None = None
    window_start: datetime | None = None
    first_window: int | None = None
    workload: str = ""


def backtest(rules: Sequence[RuleSettings], points: Sequence[WindowPoint]) -> list[Transition]:
    """Replay windows in time order through ``rules``; return when each would have fired and resolved."""
    out: list[Transition] = []
    ordered = sorted(points, key=lambda p: (p.window_end, p.window_id))
    for rule in rules:
        out.extend(_replay_rule(rule, ordered))
    return sorted(out, key=lambda t: (t.at, t.rule, t.group))


def _replay_rule(rule: RuleSettings, ordered: Sequence[WindowPoint]) -> list[Transition]:
    """One rule's transitions over ``ordered`` (oldest first), per group."""
    node = parse_condition(rule.condition)
    out: list[Transition] = []
    history: dict[str, list[WindowPoint]] = defaultdict(list)
    opened: dict[str, WindowPoint] = {}  # group -> the window its open alert fired in
    for p in ordered:
        model_id, workload, segment, key = group_key(rule, p.model_id, p.segment, p.workload)
        history[key].append(p)
        v = evaluate(node, history[key], rule.windows, rule.of)
        if v.decision == "firing" and key not in opened:
            msg, value = describe(rule, node, v)
            opened[key] = p
            event, first = "fired", p
        elif v.decision == "clear" and key in opened:
            msg, value = f"`{rule.condition}` held in none of the last {v.known} window(s) with data", None
            event, first = "resolved", opened.pop(key)
        else:
            continue
        out.append(Transition(rule.name, key, event, p.window_end, msg, value, model_id, segment,
                              p.window_index, p.window_start, first.window_index, workload))  # fmt: skip
    return out


TRIGGER_RULE_PREFIX = "retrain.trigger."


def trigger_rule_name(policy: str) -> str:
    """The implicit rule that evaluates retrain policy ``policy``'s ``trigger.condition``."""
    return (TRIGGER_RULE_PREFIX + policy)[:128]


@dataclass(frozen=True)
class ScopedRule:
    """A rule and, for an implicit rule, the one model whose whole-model windows it looks at."""

    rule: RuleSettings
    model_id: str | None = None

    def applies(self, p: WindowPoint) -> bool:
        return self.model_id is None or (p.model_id == self.model_id and p.segment == "")


def implicit_rules(settings: Settings) -> list[ScopedRule]:
    """Rules that other sections ask the engine to evaluate.

    Each enabled retrain policy with a ``trigger.condition`` becomes rule ``retrain.trigger.<policy>``
    over its model's whole-model windows, with the rule defaults (1 of 1 window, no channels: it
    triggers a retrain, it pages nobody). The retrain loop reads its open alert like any other.
    """
    out = []
    r = settings.retrain
    for p in r.policies if r.enabled else []:
        if p.enabled and p.trigger.condition:
            rule = RuleSettings(name=trigger_rule_name(p.name), condition=p.trigger.condition, severity="info",
                                channels=[], cooldown_minutes=0,
                                description=f"trigger.condition of retrain policy {p.name}")  # fmt: skip
            out.append(ScopedRule(rule, p.model_id))
    return out


@dataclass(frozen=True)
class OpenAlert:
    """An alert that fired and has not resolved (``fired`` or ``acknowledged``)."""

    id: int
    rule: str
    model_id: str
    state: str
    message: str
    fired_at: datetime


def open_alerts(engine: Engine, rules: Sequence[str], model_id: str | None = None) -> list[OpenAlert]:
    """Open alerts of ``rules`` (of ``model_id`` if given), oldest first: what fired, per the engine."""
    if not rules:
        return []
    q = select(alerts.c.id, alerts.c.rule, alerts.c.model_id, alerts.c.state, alerts.c.message, alerts.c.fired_at
               ).where(alerts.c.rule.in_(list(rules)), alerts.c.state.in_(OPEN_STATES)).order_by(alerts.c.id)  # fmt: skip
    if model_id is not None:
        q = q.where(alerts.c.model_id == model_id)
    with engine.connect() as conn:
        return [OpenAlert(r.id, r.rule, r.model_id, r.state, r.message, utc(r.fired_at)) for r in conn.execute(q)]


def notify(engine: Engine, sinks: Mapping[str, AlertSink], channels: Sequence[str], ev: AlertEvent) -> None:
    """Send ``ev`` to each of ``channels``; record every outcome. Never raises for a channel."""
    results: list[dict[str, Any]] = []
    for name in channels:
        sink = sinks.get(name)
        ok, err = True, None
        if sink is None:
            ok, err = False, f"channel {name!r} is not configured"
        else:
            try:
                sink.send(ev)
            except Exception as e:  # one failing channel never blocks the others
                ok, err = False, f"{type(e).__name__}: {e}"[:2000]
                log.error("alert channel %s failed for %s: %s", name, ev.rule, err)
        results.append({"alert_id": ev.alert_id, "channel": name, "event": ev.event, "ok": ok, "error": err,
                        "at": datetime.now(UTC)})  # fmt: skip
    with engine.begin() as conn:
        if results:
            conn.execute(insert(alert_notifications), results)
        conn.execute(update(alerts).where(alerts.c.id == ev.alert_id).values(
            notify_count=alerts.c.notify_count + 1, last_notified_at=ev.at))  # fmt: skip


def fire_alert(engine: Engine, sinks: Mapping[str, AlertSink], channels: Sequence[str], *, rule: str,
               model_id: str, group_key: str, severity: str, condition: str, message: str,
               value: float | None = None, now: datetime | None = None) -> AlertFired:  # fmt: skip
    """Open an alert raised outside the rules (e.g. ``retrain.rollback``) and notify ``channels``.

    The row and the notifications are those of a rule's alert, so the API, the status page and the
    dashboards show it alike. ``group_key`` is unique per open alert of ``rule`` (partial unique index).
    """
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        aid = conn.execute(insert(alerts).returning(alerts.c.id), {
            "rule": rule, "group_key": group_key, "model_id": model_id, "segment": "", "severity": severity,
            "state": "fired", "condition": condition, "message": message, "value": value, "fired_at": now,
            "last_evaluated_at": now, "notify_count": 0}).scalar_one()  # fmt: skip
    ev = AlertFired(int(aid), rule, model_id, "", severity, condition, message, value, now)
    notify(engine, sinks, channels, ev)
    return ev


def load_points(engine: Engine, *, since: datetime | None = None, until: datetime | None = None,
                model_id: str | None = None, per_group: int | None = None) -> list[WindowPoint]:  # fmt: skip
    """Checked windows with their metrics, oldest first.

    ``per_group`` keeps only the newest that many windows of each stream (model, workload, segment); the cut is made in
    SQL (``row_number() over (partition by ...)``, PostgreSQL and SQLite >= 3.25), so the cost of a
    scheduled evaluation does not grow with the stored history.
    """
    from driftloop.monitor.tables import monitor_windows as mw
    from driftloop.monitor.tables import window_metrics as wm

    conds = []
    if since is not None:
        conds.append(mw.c.window_end >= since)
    if until is not None:
        conds.append(mw.c.window_end <= until)
    if model_id is not None:
        conds.append(mw.c.model_id == model_id)
    cols = [mw.c.id, mw.c.model_id, mw.c.segment, mw.c.window_end, mw.c.status, mw.c.window_index, mw.c.window_start,
            mw.c.workload]  # fmt: skip
    if per_group is None:
        q = select(*cols)
        if conds:
            q = q.where(and_(*conds))
    else:
        rank = func.row_number().over(
            partition_by=(mw.c.model_id, mw.c.workload, mw.c.segment),
            order_by=(mw.c.window_end.desc(), mw.c.id.desc()),
        )
        inner = select(*cols, rank.label("rank"))
        if conds:
            inner = inner.where(and_(*conds))
        sub = inner.subquery()
        q = select(*(sub.c[c.name] for c in cols)).where(sub.c.rank <= per_group)
    with engine.connect() as conn:
        wins = list(conn.execute(q).all())
        metrics: dict[int, dict[str, float | None]] = defaultdict(dict)
        ids = [w.id for w in wins]
        for off in range(0, len(ids), 1000):
            chunk = ids[off : off + 1000]
            for r in conn.execute(select(wm.c.window_id, wm.c.name, wm.c.value).where(wm.c.window_id.in_(chunk))):
                metrics[r.window_id][r.name] = r.value
    pts = [
        WindowPoint(
            w.id,
            w.model_id,
            w.segment or "",
            utc(w.window_end),
            w.status,
            metrics.get(w.id, {}),
            int(w.window_index),
            utc(w.window_start),
            w.workload or "",
        )
        for w in wins
    ]
    return sorted(pts, key=lambda p: (p.window_end, p.window_id))


class AlertEvaluationJob:
    """Scheduled job: evaluate every rule for every group; fire, remind, resolve, notify.

    State changes are committed first; channels are called outside any transaction (a slow webhook
    never holds the database) and every delivery attempt is recorded in ``alert_notifications``.
    """

    def __init__(self, settings: Settings, engine: Engine, sinks: Mapping[str, AlertSink] | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.sinks = dict(sinks) if sinks is not None else build_sinks(settings.alerts.channels)

    def run_once(self, now: datetime | None = None) -> list[AlertEvent]:
        """Evaluate all rules over the newest windows; return the events (notified or not)."""
        a = self.settings.alerts
        if not a.enabled:
            return []
        now = now or datetime.now(UTC)
        scoped = [ScopedRule(r) for r in a.rules] + implicit_rules(self.settings)
        self._close_orphans(now, [sr.rule.name for sr in scoped])
        if not scoped:
            return []
        # Enough history for N of M even when a few windows lack data or are skipped.
        depth = max(sr.rule.of for sr in scoped) * 3 + 5
        points = load_points(self.engine, per_group=depth)
        events: list[AlertEvent] = []
        for sr in scoped:
            rule = sr.rule
            try:
                node = parse_condition(rule.condition)
            except ValueError:  # validated at load time; guard anyway
                log.exception("rule %s has an invalid condition; skipped", rule.name)
                continue
            groups: dict[Group, list[WindowPoint]] = defaultdict(list)
            for p in points:
                if sr.applies(p):
                    groups[group_key(rule, p.model_id, p.segment, p.workload)].append(p)
            for key, hist in groups.items():
                try:
                    ev = self._evaluate(rule, node, key, hist, now)
                except Exception:  # one rule/group failing never stops the others
                    log.exception("evaluating rule %s for %s failed", rule.name, key.key)
                    continue
                if ev is not None:
                    events.append(ev)
        return events

    def _close_orphans(self, now: datetime, names: list[str]) -> None:
        """Resolve open alerts whose rule is no longer in the policy (without notifying): nothing else would."""
        msg = "closed: its rule is no longer in the alert policy"
        with self.engine.begin() as conn:
            res = conn.execute(
                # other retrain.* alerts (retrain.rollback) are raised by the retrain loop, not by a rule
                update(alerts).where(alerts.c.state.in_(OPEN_STATES), alerts.c.rule.not_in(names),
                                     or_(alerts.c.rule.not_like("retrain.%"),
                                         alerts.c.rule.like(TRIGGER_RULE_PREFIX + "%")))
                .values(state="resolved", resolved_at=now, last_evaluated_at=now, message=msg)
            )  # fmt: skip
        if res.rowcount:
            log.warning("closed %d open alert(s) whose rule is no longer in the policy", res.rowcount)

    def _evaluate(self, rule: RuleSettings, node: Node, key: Group, hist: list[WindowPoint],
                  now: datetime) -> AlertEvent | None:  # fmt: skip
        v = evaluate(node, hist, rule.windows, rule.of)
        try:
            ev, notify = self._transition(rule, node, key, v, now)
        except IntegrityError:  # another evaluator opened the same alert a moment ago: deduplicated
            log.info("alert %s for %s is already open; not fired twice", rule.name, key.key)
            return None
        if ev is not None and notify:
            self._notify(rule, ev)
        return ev

    def _transition(self, rule: RuleSettings, node: Node, key: Group, v: Verdict,
                    now: datetime) -> tuple[AlertEvent | None, bool]:  # fmt: skip
        """Apply the verdict to the stored alert in one transaction; return the event and whether to notify."""
        model_id, workload, segment, gk = key
        cooldown = timedelta(minutes=rule.cooldown_minutes)
        ev: AlertEvent | None = None
        notify = False
        with self.engine.begin() as conn:
            open_row = conn.execute(
                select(alerts).where(alerts.c.rule == rule.name, alerts.c.group_key == gk,
                                     alerts.c.state.in_(OPEN_STATES)).order_by(alerts.c.id.desc())
            ).mappings().first()  # fmt: skip
            if v.decision == "firing":
                msg, value = describe(rule, node, v)
                wid = v.latest.window_id if isinstance(v.latest, WindowPoint) else None
                extra = {"window_end": v.latest.window_end.isoformat()} if isinstance(v.latest, WindowPoint) else {}
                if open_row is None:
                    last_note = self._last_notified(conn, rule.name, gk)
                    aid = conn.execute(
                        insert(alerts).returning(alerts.c.id),
                        {"rule": rule.name, "group_key": gk, "model_id": model_id, "workload": workload,
                         "segment": segment,
                         "severity": rule.severity, "state": "fired", "condition": rule.condition,
                         "message": msg, "value": value, "window_id": wid, "fired_at": now,
                         "last_evaluated_at": now, "notify_count": 0},
                    ).scalar_one()  # fmt: skip
                    ev = AlertFired(aid, rule.name, model_id, segment, rule.severity, rule.condition, msg, value,
                                    now, extra, workload)  # fmt: skip
                    notify = last_note is None or now - utc(last_note) >= cooldown
                    if not notify:
                        log.info("alert %s for %s fired again within its cooldown; not notified", rule.name, gk)
                else:
                    # window_id stays the window the alert first fired in: where the problem started
                    conn.execute(update(alerts).where(alerts.c.id == open_row["id"]).values(
                        last_evaluated_at=now, value=value, message=msg))  # fmt: skip
                    if open_row["state"] != "fired":
                        pass  # acknowledged: no reminders
                    elif open_row["notify_count"] == 0:
                        # It fired within the cooldown of an earlier notification and was kept quiet; once
                        # that cooldown is over, tell the channels it fired (not "still firing": the last
                        # thing they heard may have been a resolution).
                        last_note = self._last_notified(conn, rule.name, gk)
                        if last_note is None or now - utc(last_note) >= cooldown:
                            ev = AlertFired(open_row["id"], rule.name, model_id, segment, rule.severity,
                                            rule.condition, msg, value, now, extra, workload)  # fmt: skip
                            notify = True
                    elif cooldown and now - utc(open_row["last_notified_at"] or open_row["fired_at"]) >= cooldown:
                        ev = AlertReminded(open_row["id"], rule.name, model_id, segment, rule.severity,
                                           rule.condition, msg, value, now, extra, workload)  # fmt: skip
                        notify = True
            elif open_row is not None:
                conn.execute(update(alerts).where(alerts.c.id == open_row["id"]).values(last_evaluated_at=now))
                if v.decision == "clear":
                    msg = f"`{rule.condition}` held in none of the last {v.known} window(s) with data"
                    conn.execute(update(alerts).where(alerts.c.id == open_row["id"]).values(
                        state="resolved", resolved_at=now, message=msg))  # fmt: skip
                    ev = AlertResolved(open_row["id"], rule.name, model_id, segment, rule.severity, rule.condition,
                                       msg, None, now, {}, workload)  # fmt: skip
                    # Tell about the resolution only those who were told about the firing.
                    notify = open_row["notify_count"] > 0
        return ev, notify

    @staticmethod
    def _last_notified(conn: Connection, rule: str, group: str) -> datetime | None:
        """When any alert of this rule and group was last notified (the cooldown runs from there)."""
        return conn.execute(
            select(func.max(alerts.c.last_notified_at)).where(alerts.c.rule == rule, alerts.c.group_key == group)
        ).scalar()

    def _notify(self, rule: RuleSettings, ev: AlertEvent) -> None:
        """Send ``ev`` to each channel of ``rule``; record every outcome. Never raises for a channel."""
        notify(self.engine, self.sinks, rule.channels, ev)


def acknowledge(engine: Engine, alert_id: int, by: str, now: datetime | None = None) -> bool:
    """Mark a fired alert acknowledged: no more reminders, but it still resolves when its condition clears.

    False when there is no *fired* alert with that id (see :func:`alert_state` for why).
    """
    with engine.begin() as conn:
        res = conn.execute(
            update(alerts).where(alerts.c.id == alert_id, alerts.c.state == "fired")
            .values(state="acknowledged", acknowledged_at=now or datetime.now(UTC), acknowledged_by=by[:128])
        )  # fmt: skip
        return bool(res.rowcount)


def alert_state(engine: Engine, alert_id: int) -> str | None:
    """The stored state of an alert, None if there is no such alert."""
    with engine.connect() as conn:
        return conn.execute(select(alerts.c.state).where(alerts.c.id == alert_id)).scalar()
