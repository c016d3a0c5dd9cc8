"""The status page's timeline (driftloop.api.timeline) and its verdict table.

A database is seeded with 40 windows of one model (5 old rows without the group verdict, one window with too
little data, 4 drifted windows, the quality dropping after window 25), one window of a second model with no
metrics at all, two alerts, a retrain job and two promotions. The SVG is checked as XML on SQLite (fast lane)
and rendered by headless Chromium from the real API over PostgreSQL (marker ``browser``), which also saves a
screenshot (``$DRIFTLOOP_SCREENSHOT_DIR/status-timeline.png``; docs/img/status-timeline.png is one).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from driftloop.api.status import render_status
from driftloop.api.timeline import Marker, Point, Timeline, at_slot, load_timelines, render_svg
from driftloop.monitor.alerts.tables import alerts
from driftloop.monitor.tables import monitor_windows, window_metrics
from driftloop.retrain.registry import ModelRegistry
from driftloop.retrain.tables import retrain_jobs
from driftloop.store.db import create_engine_from_url, migrate
from tests.helpers import make_settings

MODEL, OTHER, N = "assistant", "assistant-b", 40
OLD, THIN, DRIFTED, QUALITY_DROP = range(5), 7, (12, 26, 27, 38), 25
SVG = "{http://www.w3.org/2000/svg}"


@dataclass(frozen=True)
class Expected:
    """What the timeline of MODEL must draw."""

    drift_bars: int = N - 1  # every window with a score: all but the thin one
    drifted_bars: int = len(DRIFTED)
    quality_points: int = N - len(OLD) - 1  # old rows and the thin window have no quality metric
    thresholds: int = N - len(OLD) - 1
    alerts: int = 2
    retrains: int = 1
    promotions: int = 2  # the base model v0, then v1


def _window(i: int, end: datetime) -> dict[str, Any]:
    old, thin, drifted = i in OLD, i == THIN, i in DRIFTED
    return {"model_id": MODEL, "segment": "", "window_kind": "count", "window_index": i,
            "window_start": end - timedelta(minutes=10), "window_end": end, "n_records": 10 if thin else 100,
            "ref_kind": "previous", "ref_n": 100, "status": "insufficient_data" if thin else "ok",
            "drift_score": None if thin else (0.1 if old else (5 / 9 if drifted else 1 / 9)),
            "drifted": None if thin else drifted, "n_features": None if thin else 14,
            "n_drifted": None if thin else (6 if drifted else 1),
            "n_groups": None if old or thin else 9, "n_groups_drifted": None if old or thin else (5 if drifted else 1),
            "drift_share": None if old or thin else 0.5, "healthy": None if old or thin else not drifted,
            "created_at": end}  # fmt: skip


def seed(engine: Engine, now: datetime) -> dict[int, int]:
    """The scenario of the module docstring; window index -> window id of MODEL."""
    ends = [now + timedelta(minutes=5) - timedelta(minutes=10 * (N - 1 - i)) for i in range(N)]
    with engine.begin() as c:
        ids = {i: c.execute(insert(monitor_windows).returning(monitor_windows.c.id), _window(i, e)).scalar_one()
               for i, e in enumerate(ends)}  # fmt: skip
        c.execute(insert(monitor_windows), {**_window(0, now), "model_id": OTHER, "n_groups": None, "drift_share": None,
                                            "drift_score": None, "drifted": None})  # fmt: skip
        metrics = [{"window_id": ids[i], "model_id": MODEL, "segment": "", "window_end": ends[i], "name": name,
                    "value": value}
                   for i in range(N) if i not in OLD and i != THIN
                   for name, value in (("quality.feedback_positive_rate", 0.4 if i >= QUALITY_DROP else 0.8),
                                       ("ref.quality.feedback_positive_rate", 0.8 if i != 30 else None))]  # fmt: skip
        c.execute(insert(window_metrics), metrics)
        for rule, i in (("dataset-drift", 12), ("quality-drop", QUALITY_DROP)):
            c.execute(insert(alerts), {"rule": rule, "group_key": rule, "model_id": MODEL, "segment": "",
                                       "severity": "critical", "state": "fired", "condition": "x", "message": rule,
                                       "window_id": ids[i], "fired_at": ends[i] + timedelta(minutes=1),
                                       "last_evaluated_at": now, "notify_count": 1})  # fmt: skip
        c.execute(insert(retrain_jobs), {"policy": "on-quality-drop", "model_id": MODEL, "status": "succeeded",
                                         "progress": 1.0, "created_at": ends[QUALITY_DROP] + timedelta(minutes=2)})  # fmt: skip
    reg = ModelRegistry(engine)
    base = reg.ensure_base(MODEL, "/models/base")  # promoted now: in the newest window (it ends in 5 minutes)
    v1 = reg.register(MODEL, "/models/base", adapter_path=None, parent_id=base.id)
    reg.promote(v1.id, [], actor="driftloop", reason="gate passed")
    return ids


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'status.db'}"
    migrate(url)
    eng = create_engine_from_url(url)
    yield eng
    eng.dispose()


def _svgs(html: str) -> list[ET.Element]:
    return [ET.fromstring(m) for m in re.findall(r"<svg class=\"timeline\".*?</svg>", html, flags=re.S)]


def _count(svg: ET.Element, cls: str) -> int:
    return sum(1 for el in svg.iter() if cls in (el.get("class") or "").split())


def check_timeline(svg: ET.Element, want: Expected) -> None:
    """The SVG of MODEL draws what the seeded database holds."""
    assert _count(svg, "pt-drift") == want.drift_bars
    assert _count(svg, "drifted") == want.drifted_bars
    assert _count(svg, "pt-quality") == want.quality_points
    assert _count(svg, "threshold") == want.thresholds
    assert (_count(svg, "mk-alert"), _count(svg, "mk-retrain"), _count(svg, "mk-promotion")) == (
        want.alerts, want.retrains, want.promotions)  # fmt: skip
    drifted = sorted(int(el.get("data-window", -1)) for el in svg.iter() if "drifted" in (el.get("class") or ""))
    assert drifted == list(DRIFTED)
    ticks = {el.text for el in svg.iter(f"{SVG}text")}
    assert {"0", str(N - 1), "window number"} <= ticks
    # a line breaks where its value is missing: the thin window 7, and window 30 for the reference
    assert (_count(svg, "line-quality"), _count(svg, "line-ref_quality")) == (2, 3)


def test_timeline_and_verdict_table_from_the_database(sqlite_engine: Engine) -> None:
    seed(sqlite_engine, datetime.now(UTC))
    tls = {t.model_id: t for t in load_timelines(sqlite_engine)}
    tl = tls[MODEL]
    assert [p.index for p in tl.points] == list(range(N))
    slots = {m.kind: sorted(x.slot for x in tl.markers if x.kind == m.kind) for m in tl.markers}
    assert slots == {"alert": [12, QUALITY_DROP], "retrain": [QUALITY_DROP + 1], "promotion": [N - 1, N - 1]}
    html = render_status(sqlite_engine, make_settings("sqlite://"))
    svgs = _svgs(html)
    assert len(svgs) == 2  # both models; OTHER has one window and nothing else
    (model_svg,) = [s for s in svgs if MODEL + " (" in (s.get("aria-label") or "")]
    check_timeline(model_svg, Expected())
    (other,) = [s for s in svgs if OTHER in (s.get("aria-label") or "")]
    assert _count(other, "pt-drift") == _count(other, "pt-quality") == _count(other, "threshold") == 0
    # the table shows driftloop's verdict: groups drifted / groups and the threshold it used
    assert '<span class="groups">5/9</span>' in html and '<span class="share">0.50</span>' in html
    assert '<span class="groups">-</span>' in html  # OTHER's window predates the group verdict


def test_each_workload_of_a_model_is_a_stream_of_its_own(sqlite_engine: Engine) -> None:
    """Window indexes repeat per workload: two workloads of one model are two timelines and two table groups."""
    end = datetime.now(UTC)
    with sqlite_engine.begin() as c:
        for wl, bad in (("rag", (1,)), ("agent", (0, 2))):
            for i in range(3):
                row = {**_window(10 + i, end + timedelta(minutes=10 * i)), "window_index": i, "workload": wl,
                       "drifted": i in bad, "drift_score": 0.9 if i in bad else 0.1}  # fmt: skip
                c.execute(insert(monitor_windows), row)
    tls = {t.name: t for t in load_timelines(sqlite_engine)}
    assert sorted(tls) == [f"{MODEL}[agent] (count windows)", f"{MODEL}[rag] (count windows)"]
    assert [p.index for p in tls[f"{MODEL}[rag] (count windows)"].points] == [0, 1, 2]
    html = render_status(sqlite_engine, make_settings("sqlite://"))
    svgs = {s.get("aria-label"): s for s in _svgs(html)}
    assert set(svgs) == set(tls)
    for wl, drifted in (("rag", [1]), ("agent", [0, 2])):
        svg = svgs[f"{MODEL}[{wl}] (count windows)"]
        assert _count(svg, "pt-drift") == 3
        assert sorted(int(el.get("data-window", -1)) for el in svg.iter() if "drifted" in (el.get("class") or "")) == (
            drifted)  # fmt: skip
    streams = re.findall(r'<span class="stream">([^<]*)</span>', html)
    assert streams == [f"{MODEL}[agent]"] * 3 + [f"{MODEL}[rag]"] * 3


def test_render_svg_with_no_one_and_many_windows() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert "no windows checked yet" in render_svg(Timeline("m", "", "count"))
    one = Timeline("m", "seg", "time", [Point(1, 7, t0, t0 + timedelta(hours=1), "ok")])
    svg = ET.fromstring(render_svg(one))
    assert _count(svg, "pt-drift") == 0 and {"7"} <= {el.text for el in svg.iter(f"{SVG}text")}
    pts = [Point(i, i, t0 + timedelta(hours=i), t0 + timedelta(hours=i + 1), "ok", 0.2, 0.5, False, 9, 2, 0.7,
                 None) for i in range(200)]  # fmt: skip
    many = Timeline("m<&>", "", "time", pts, [Marker("alert", 3, "<script>x</script>"), Marker("retrain", 200, "late")])
    text = render_svg(many)
    svg = ET.fromstring(text)  # escaped: still well-formed XML
    assert "<script>" not in text and _count(svg, "pt-drift") == 200 and _count(svg, "mk-retrain") == 1
    assert len([el for el in svg.iter(f"{SVG}text") if el.get("class") == "tick"]) < 30  # labels thinned out


def test_an_event_belongs_to_the_window_it_happened_in() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    pts = [Point(i, i, t0 + timedelta(hours=i), t0 + timedelta(hours=i + 1), "ok") for i in range(3)]
    assert [at_slot(pts, t0 + timedelta(minutes=m)) for m in (0, 60, 61, 179, 180, 181)] == [0, 0, 1, 2, 2, 3]


# ------------------------------------------------------------------------------------------ in a browser
@pytest.mark.browser
def test_status_page_timeline_renders_in_chromium(pg_url: str, tmp_path: Path) -> None:
    from driftloop.api.server import ApiServer
    from tests.test_api_browser import CHROMIUM, chromium, screenshot_dir

    if CHROMIUM is None:
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    eng = create_engine_from_url(pg_url)
    seed(eng, datetime.now(UTC))
    srv = ApiServer(make_settings(pg_url), eng, host="127.0.0.1", port=0)
    base = srv.start()
    try:
        dom = chromium(tmp_path, "--dump-dom", f"{base}/")
        svgs = _svgs(dom)
        assert len(svgs) == 2, dom[:2000]
        (model_svg,) = [s for s in svgs if MODEL + " (" in (s.get("aria-label") or "")]
        check_timeline(model_svg, Expected())
        shot = screenshot_dir(tmp_path) / "status-timeline.png"
        chromium(tmp_path, f"--screenshot={shot}", "--window-size=1100,1400", "--hide-scrollbars", f"{base}/")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        print(f"\nstatus timeline screenshot: {shot}")
    finally:
        srv.stop()
        eng.dispose()
