"""The status page's timeline: per stream (model, workload, segment) and window kind, an inline SVG over the
newest windows.

Drift score per window (bars, red when the window's verdict is drift) against the threshold the verdict used
(``monitor_windows.drift_share``, dashed), the quality signal (``quality.feedback_positive_rate``) and the
reference's (faint), with vertical markers where an alert fired, a retrain run started and a model version
was promoted. Pure string building, every text escaped, no scripts and no external assets, so the page works
offline and in the embedded demo; each point has a ``<title>`` tooltip.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from typing import Any

from sqlalchemy import Connection, Engine, func, select

QUALITY, REF_QUALITY = "quality.feedback_positive_rate", "ref.quality.feedback_positive_rate"
PROMOTING_ACTIONS = ("promoted", "restored")  # model_events actions that change the champion
MARKER_COLORS = {"alert": "#c0262d", "retrain": "#7b3fb5", "promotion": "#17803d"}
W, LEFT, RIGHT = 760, 44, 12
DRIFT_TOP, DRIFT_H, QUAL_TOP, QUAL_H, AXIS_Y = 22, 90, 136, 70, 224
HEIGHT = 244


@dataclass(frozen=True)
class Point:
    """One window as the timeline draws it; any value may be missing (old rows, unchecked windows)."""

    window_id: int
    index: int
    start: datetime
    end: datetime
    status: str
    score: float | None = None
    share: float | None = None
    drifted: bool | None = None
    n_groups: int | None = None
    n_groups_drifted: int | None = None
    quality: float | None = None
    ref_quality: float | None = None


@dataclass(frozen=True)
class Marker:
    """An event at a window: ``slot`` is the position among the points (``len(points)``: after the last)."""

    kind: str  # alert | retrain | promotion
    slot: int
    label: str


@dataclass
class Timeline:
    """The windows of one stream: a window index exists once per workload, so the workload is part of the key."""

    model_id: str
    segment: str
    window_kind: str
    points: list[Point] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    workload: str = ""  # "" is the unnamed workload

    @property
    def name(self) -> str:
        return f"{stream_name(self.model_id, self.workload, self.segment)} ({self.window_kind} windows)"


def stream_name(model_id: str, workload: str, segment: str) -> str:
    """``model[workload]/segment``, as the monitor's logs and CLI summaries name a stream."""
    return f"{model_id}{f'[{workload}]' if workload else ''}{'/' + segment if segment else ''}"


def _e(v: Any) -> str:
    return escape("" if v is None else str(v))


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


# ------------------------------------------------------------------------------------------ reading
def load_timelines(engine: Engine, last: int = 60, max_timelines: int = 12) -> list[Timeline]:
    """The newest ``last`` windows of each stream and kind (at most ``max_timelines``) with their events."""
    from driftloop.monitor.tables import monitor_windows as w

    with engine.connect() as c:
        cols = (w.c.model_id, w.c.workload, w.c.segment, w.c.window_kind)
        keys = c.execute(select(*cols).group_by(*cols).order_by(func.max(w.c.id).desc())
                         .limit(max_timelines)).all()  # fmt: skip
        out = [Timeline(m, seg, kind, workload=wl) for m, wl, seg, kind in sorted(keys)]
        for tl in out:
            tl.points = _points(c, tl, last)
            tl.markers = _markers(c, tl)
    return out


def _points(c: Connection, tl: Timeline, last: int) -> list[Point]:
    from driftloop.monitor.tables import monitor_windows as w
    from driftloop.monitor.tables import window_metrics as m

    rows = c.execute(select(w).where(w.c.model_id == tl.model_id, w.c.workload == tl.workload,
                                     w.c.segment == tl.segment, w.c.window_kind == tl.window_kind)
                     .order_by(w.c.window_index.desc()).limit(last)).mappings().all()[::-1]  # fmt: skip
    ids = [int(r["id"]) for r in rows]
    metrics: dict[tuple[int, str], float | None] = {}
    if ids:
        for wid, name, value in c.execute(select(m.c.window_id, m.c.name, m.c.value)
                                          .where(m.c.window_id.in_(ids), m.c.name.in_((QUALITY, REF_QUALITY)))):  # fmt: skip
            metrics[(int(wid), name)] = value
    return [Point(int(r["id"]), int(r["window_index"]), r["window_start"], r["window_end"], r["status"],
                  r["drift_score"], r["drift_share"], r["drifted"], r["n_groups"], r["n_groups_drifted"],
                  metrics.get((int(r["id"]), QUALITY)), metrics.get((int(r["id"]), REF_QUALITY)))
            for r in rows]  # fmt: skip


def _markers(c: Connection, tl: Timeline) -> list[Marker]:
    from driftloop.monitor.alerts.tables import alerts as a
    from driftloop.retrain.tables import model_events as ev
    from driftloop.retrain.tables import model_versions as mv
    from driftloop.retrain.tables import retrain_jobs as rj

    if not tl.points:
        return []
    # alerts by window id: those of this stream's windows (an alert's own workload is "" when its rule does not
    # group by workload); retrain runs and promotions act on the model, so every workload's timeline shows them
    slot_of = {p.window_id: i for i, p in enumerate(tl.points)}
    since = tl.points[0].start
    out = [Marker("alert", slot_of[int(r.window_id)], f"alert {r.rule} ({r.severity}, {r.state}) fired {r.fired_at:%Y-%m-%d %H:%M}")
           for r in c.execute(select(a.c.window_id, a.c.rule, a.c.severity, a.c.state, a.c.fired_at)
                              .where(a.c.window_id.in_(list(slot_of)), a.c.model_id == tl.model_id,
                                     a.c.segment == tl.segment).order_by(a.c.id))]  # fmt: skip
    for r in c.execute(select(rj.c.id, rj.c.policy, rj.c.status, rj.c.created_at)
                       .where(rj.c.model_id == tl.model_id, rj.c.created_at >= since).order_by(rj.c.id)):  # fmt: skip
        out.append(
            Marker(
                "retrain",
                at_slot(tl.points, r.created_at),
                f"retrain job {r.id} ({r.policy}, {r.status}) started {r.created_at:%Y-%m-%d %H:%M}",
            )
        )
    q = (select(ev.c.action, ev.c.actor, ev.c.at, mv.c.version).select_from(ev.outerjoin(mv, mv.c.id == ev.c.version_id))
         .where(ev.c.family == tl.model_id, ev.c.action.in_(PROMOTING_ACTIONS), ev.c.at >= since).order_by(ev.c.id))  # fmt: skip
    for r in c.execute(q):
        out.append(
            Marker(
                "promotion",
                at_slot(tl.points, r.at),
                f"{r.version or '?'} {r.action} by {r.actor} at {r.at:%Y-%m-%d %H:%M}",
            )
        )
    return out


def at_slot(points: Sequence[Point], t: datetime) -> int:
    """The window an event at ``t`` happened in: the first whose end is at or after ``t`` (after the last
    window: ``len(points)``, drawn at the right edge)."""
    return bisect.bisect_left([p.end for p in points], t)


# ------------------------------------------------------------------------------------------ drawing
def _x(slot: int, slots: int) -> float:
    step = (W - LEFT - RIGHT) / max(slots, 1)
    return LEFT + step * (slot + 0.5)


def _y(v: float, top: int, h: int) -> float:
    return top + h * (1 - min(max(v, 0.0), 1.0))


def _point_tip(p: Point) -> str:
    groups = "-" if p.n_groups is None else f"{p.n_groups_drifted or 0}/{p.n_groups}"
    verdict = "-" if p.drifted is None else ("drift" if p.drifted else "no drift")
    return (
        f"window {p.index} ({p.start:%Y-%m-%d %H:%M} - {p.end:%H:%M}), {p.status}: drift score {_f(p.score)}, "
        f"groups drifted {groups}, threshold {_f(p.share)}, verdict {verdict}; "
        f"feedback positive {_f(p.quality)} (reference {_f(p.ref_quality)})"
    )


def _drift_bars(points: Sequence[Point], slots: int) -> list[str]:
    bw = max((W - LEFT - RIGHT) / max(slots, 1) * 0.7, 1.0)
    out = []
    for i, p in enumerate(points):
        if p.score is None:
            continue
        x, y = _x(i, slots), _y(p.score, DRIFT_TOP, DRIFT_H)
        cls = "pt-drift drifted" if p.drifted else "pt-drift"
        fill = "#d9534f" if p.drifted else "#4a78c2"
        out.append(f'<rect class="{cls}" data-window="{p.index}" x="{x - bw / 2:.1f}" y="{y:.1f}" width="{bw:.1f}" '
                   f'height="{DRIFT_TOP + DRIFT_H - y:.1f}" fill="{fill}"><title>{_e(_point_tip(p))}</title></rect>')  # fmt: skip
    return out


def _threshold(points: Sequence[Point], slots: int) -> list[str]:
    """The drift_share each window's verdict used, as a dashed step line (windows without one are gaps)."""
    out = []
    for i, p in enumerate(points):
        if p.share is None:
            continue
        y, half = _y(p.share, DRIFT_TOP, DRIFT_H), (W - LEFT - RIGHT) / max(slots, 1) / 2
        out.append(f'<line class="threshold" x1="{_x(i, slots) - half:.1f}" x2="{_x(i, slots) + half:.1f}" '
                   f'y1="{y:.1f}" y2="{y:.1f}" stroke="#a11" stroke-dasharray="4 3">'
                   f"<title>threshold (drift_share) {_f(p.share)} at window {p.index}</title></line>")  # fmt: skip
    return out


def _polyline(points: Sequence[Point], slots: int, attr: str, style: str) -> str:
    """Line segments through the known values; a missing value breaks the line."""
    runs: list[list[str]] = [[]]
    for i, p in enumerate(points):
        v = getattr(p, attr)
        if v is None:
            runs.append([])
        else:
            runs[-1].append(f"{_x(i, slots):.1f},{_y(v, QUAL_TOP, QUAL_H):.1f}")
    return "".join(f'<polyline class="line-{attr}" points="{" ".join(r)}" fill="none" {style}/>' for r in runs
                   if len(r) > 1)  # fmt: skip


def _quality(points: Sequence[Point], slots: int) -> list[str]:
    out = [_polyline(points, slots, "ref_quality", 'stroke="#9aa4b2" stroke-width="1.5" stroke-dasharray="2 2"'),
           _polyline(points, slots, "quality", 'stroke="#1f7a8c" stroke-width="2"')]  # fmt: skip
    for i, p in enumerate(points):
        if p.quality is not None:
            out.append(f'<circle class="pt-quality" data-window="{p.index}" cx="{_x(i, slots):.1f}" '
                       f'cy="{_y(p.quality, QUAL_TOP, QUAL_H):.1f}" r="3" fill="#1f7a8c">'
                       f"<title>{_e(_point_tip(p))}</title></circle>")  # fmt: skip
    return out


def _markers_svg(markers: Sequence[Marker], slots: int) -> list[str]:
    out = []
    for k, m in enumerate(markers):
        x = _x(m.slot, slots) + (k % 3 - 1) * 2  # events at one window stay apart
        color = MARKER_COLORS.get(m.kind, "#555")
        out.append(f'<g class="mk-{_e(m.kind)}"><title>{_e(m.label)}</title>'
                   f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{DRIFT_TOP - 6}" y2="{QUAL_TOP + QUAL_H}" stroke="{color}" '
                   f'stroke-width="1.5"/><circle cx="{x:.1f}" cy="{DRIFT_TOP - 8}" r="4" fill="{color}"/></g>')  # fmt: skip
    return out


def _axes(points: Sequence[Point], slots: int) -> list[str]:
    out = [f'<text x="4" y="{DRIFT_TOP + 10}" class="lbl">drift</text>',
           f'<text x="4" y="{QUAL_TOP + 10}" class="lbl">quality</text>']  # fmt: skip
    for top, h in ((DRIFT_TOP, DRIFT_H), (QUAL_TOP, QUAL_H)):
        out.append(f'<rect x="{LEFT}" y="{top}" width="{W - LEFT - RIGHT}" height="{h}" fill="none" stroke="#dde1e7"/>')
        out += [f'<text x="{LEFT - 4}" y="{_y(v, top, h) + 3:.1f}" text-anchor="end" class="tick">{v:g}</text>'
                for v in (0, 0.5, 1)]  # fmt: skip
    every = max(1, -(-len(points) // 15))  # at most ~15 window numbers on the axis
    out += [f'<text x="{_x(i, slots):.1f}" y="{AXIS_Y}" text-anchor="middle" class="tick">{p.index}</text>'
            for i, p in enumerate(points) if i % every == 0 or i == len(points) - 1]  # fmt: skip
    out.append(f'<text x="{W - RIGHT}" y="{AXIS_Y + 16}" text-anchor="end" class="tick">window number</text>')
    return out


def render_svg(tl: Timeline) -> str:
    """One timeline as an inline ``<svg>``; a timeline without windows says so instead."""
    if not tl.points:
        return f'<p class="muted">{_e(tl.name)}: no windows checked yet</p>'
    slots = len(tl.points) + (1 if any(m.slot >= len(tl.points) for m in tl.markers) else 0)
    parts = [*_axes(tl.points, slots), *_threshold(tl.points, slots), *_drift_bars(tl.points, slots),
             *_quality(tl.points, slots), *_markers_svg(tl.markers, slots)]  # fmt: skip
    return (f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {HEIGHT}" width="{W}" '
            f'height="{HEIGHT}" role="img" aria-label="{_e(tl.name)}"><title>{_e(tl.name)}</title>'
            f"<style>.lbl{{font:600 11px sans-serif;fill:#1d2330}}.tick{{font:10px sans-serif;fill:#6b7280}}</style>"
            f'<rect width="{W}" height="{HEIGHT}" fill="#fff"/>{"".join(parts)}</svg>')  # fmt: skip


LEGEND = (
    '<p class="muted legend"><span style="color:#4a78c2">&#9632;</span> drift score '
    '(<span style="color:#d9534f">&#9632;</span> drifted) &middot; <span style="color:#a11">- -</span> threshold '
    '(drift_share) &middot; <span style="color:#1f7a8c">&#9679;</span> feedback positive rate &middot; '
    '<span style="color:#9aa4b2">- -</span> reference &middot; markers: '
    + " &middot; ".join(f'<span style="color:{c}">&#9679;</span> {k}' for k, c in MARKER_COLORS.items())
    + "</p>"
)


def render_timelines(engine: Engine) -> str:
    """The status page section: one titled SVG per stream (``model[workload]/segment``) and kind, the legend once."""
    tls = load_timelines(engine)
    if not tls:
        return '<p class="muted">no windows checked yet</p>'
    return LEGEND + "".join(f'<div class="tl"><h3>{_e(t.name)}</h3>{render_svg(t)}</div>' for t in tls)
