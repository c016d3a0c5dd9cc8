"""Tumbling windows over stored interactions, and the reference each window is compared with.

Windows are cut per stream: (model, workload, segment). Records of different workloads (``interactions.workload``,
named at ingestion) never share a window, and a window's reference comes from its own model and workload;
NULL is the unnamed workload's stream, written "" here and in the monitoring tables. ``monitor.segment_keys``
segments split each workload further.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import ColumnElement, Connection, func, or_, select

from driftloop.monitor.tables import monitor_baselines, monitor_windows
from driftloop.settings.monitor import MonitorSettings
from driftloop.store.feedback import feedback_latest
from driftloop.store.models import interactions
from driftloop.store.timestamps import utc


@dataclass(frozen=True)
class Window:
    """One window of one stream (model, workload, segment): either a block of ids or a time interval."""

    model_id: str
    segment: str
    kind: str  # count | time
    index: int
    start: datetime
    end: datetime
    ids: tuple[int, ...] = ()  # count windows: the interaction ids, ascending
    workload: str = ""  # "" is the unnamed workload (interactions.workload NULL)

    @property
    def first_id(self) -> int | None:
        return self.ids[0] if self.ids else None

    @property
    def last_id(self) -> int | None:
        return self.ids[-1] if self.ids else None


@dataclass(frozen=True)
class Reference:
    """What a window was compared with (stored next to every result)."""

    kind: str
    ids: tuple[int, ...]
    start: datetime | None
    end: datetime | None

    @property
    def n(self) -> int:
        return len(self.ids)


def segment_of(meta: Any, keys: list[str]) -> str:
    """``k1=v1,k2=v2`` from an interaction's metadata ('' without segment keys)."""
    if not keys:
        return ""
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            meta = {}
    meta = meta if isinstance(meta, dict) else {}
    return ",".join(f"{k}={meta.get(k, '')}" for k in keys)[:256]


def workload_is(col: Any, workload: str) -> ColumnElement[bool]:
    """``col`` names ``workload``; for "" (the unnamed stream) that is NULL or ''."""
    return or_(col.is_(None), col == "") if workload == "" else col == workload


Stream = tuple[str, str]  # (workload, segment) of one model


def _light_rows(conn: Connection, model_id: str, workload: str, since: datetime | None, with_meta: bool) -> list[Any]:
    """(id, ts, workload[, metadata]) of one workload's records at or after ``since``, in event-time order.

    One workload at a time: ``ix_interactions_model_workload_ts`` makes it a range scan from ``since``.
    """
    c = interactions.c
    cols = [c.id, c.ts, c.workload]
    if with_meta:
        cols.append(c.metadata)
    q = select(*cols).where(c.model_id == model_id, workload_is(c.workload, workload))
    if since is not None:
        q = q.where(c.ts >= since)
    return list(conn.execute(q.order_by(c.ts, c.id)).all())


def workloads(conn: Connection, model_id: str) -> list[str]:
    """The workloads ``model_id`` has records of ("" : the unnamed one), sorted.

    A loose index scan over ``ix_interactions_model_workload_ts`` (one probe per workload, recursively the
    smallest workload above the previous one) instead of ``DISTINCT``, which would read every record's entry.
    """
    c = interactions.c
    nxt = interactions.alias("nxt")
    first = select(func.min(c.workload).label("workload")).where(c.model_id == model_id).cte("wl", recursive=True)
    step = (select(func.min(nxt.c.workload)).where(nxt.c.model_id == model_id, nxt.c.workload > first.c.workload)
            .scalar_subquery())  # fmt: skip
    wl = first.union_all(select(step).where(first.c.workload.is_not(None)))
    named = set(conn.execute(select(wl.c.workload).where(wl.c.workload.is_not(None))).scalars())
    unnamed = conn.execute(select(c.id).where(c.model_id == model_id, c.workload.is_(None)).limit(1)).first()
    return sorted({w or "" for w in named} | ({""} if unnamed is not None else set()))


def _stream_rows(conn: Connection, s: MonitorSettings, model_id: str,
                 done: dict[Stream, tuple[int, datetime, int | None]]) -> list[Any]:  # fmt: skip
    """The records that can still form windows of ``model_id``, read per workload from that workload's bound.

    A workload's records are read from the oldest end among its streams' newest checked windows (older
    ones belong to checked windows or arrived too late), a workload without any checked window from its
    first record: a stream is never cut short because another stream was checked further. While every
    stream keeps being checked, each read starts near its newest window, not at the start of the history.

    Segments are computed from the records' metadata, so within one workload the bound is the oldest end of
    the segments that have a checked window: a segment whose records all lie before it and that has no
    checked window yet is not seen (no index can find it without reading the workload's history).
    """
    out: list[Any] = []
    for wl in workloads(conn, model_id):
        ends = [v[1] for (w, _), v in done.items() if w == wl]
        out += _light_rows(conn, model_id, wl, min(ends) if ends else None, bool(s.segment_keys))
    return out


def models(conn: Connection) -> list[str]:
    """Models that have traffic."""
    return [r[0] for r in conn.execute(select(interactions.c.model_id).distinct()).all()]


def _last_checked(conn: Connection, model_id: str, kind: str) -> dict[Stream, tuple[int, datetime, int | None]]:
    """Per (workload, segment): (index, end, last id) of the newest checked window."""
    mw = monitor_windows.c
    newest = (
        select(mw.workload, mw.segment, func.max(mw.window_index).label("idx"))
        .where(mw.model_id == model_id, mw.window_kind == kind)
        .group_by(mw.workload, mw.segment)
        .subquery()
    )
    q = (
        select(mw.workload, mw.segment, mw.window_index, mw.window_end, mw.last_id)
        .join(newest, (newest.c.workload == mw.workload) & (newest.c.segment == mw.segment)
              & (newest.c.idx == mw.window_index))
        .where(mw.model_id == model_id, mw.window_kind == kind)
    )  # fmt: skip
    return {(r[0], r[1]): (int(r[2]), utc(r[3]), r[4]) for r in conn.execute(q).all()}


def due_windows(conn: Connection, s: MonitorSettings, model_id: str, now: datetime | None = None) -> list[Window]:
    """Complete windows of ``model_id`` that have not been checked yet, oldest first."""
    now = now or datetime.now(UTC)
    w = s.window
    done = _last_checked(conn, model_id, w.kind)
    out: list[Window] = []
    if w.kind == "count":
        # Count windows follow event time (ts, then id), not arrival order: records of one
        # stream arrive interleaved across partitions. A record older than the newest checked
        # window of its segment arrived too late and is not re-windowed.
        rows = _stream_rows(conn, s, model_id, done)
        by_seg: dict[Stream, list[tuple[int, datetime]]] = defaultdict(list)
        for r in rows:
            key = (r[2] or "", segment_of(r[3], s.segment_keys) if s.segment_keys else "")
            rts = utc(r[1])
            prev = done.get(key)
            if prev is not None and (rts, int(r[0])) <= (prev[1], prev[2] or 0):
                continue
            by_seg[key].append((int(r[0]), rts))
        for (wl, seg), items in by_seg.items():
            idx = done[(wl, seg)][0] + 1 if (wl, seg) in done else 0
            for k in range(0, len(items) - w.size + 1, w.size):
                block = items[k : k + w.size]
                ts = [t for _, t in block]
                out.append(Window(model_id, seg, "count", idx, min(ts), max(ts), tuple(i for i, _ in block), wl))
                idx += 1
    else:
        length = timedelta(minutes=w.minutes)
        secs = length.total_seconds()
        rows = _stream_rows(conn, s, model_id, done)  # rows of checked windows are not read again
        horizon = now - timedelta(seconds=w.grace_s)
        by_key: dict[tuple[str, str, int], list[int]] = defaultdict(list)
        for r in rows:
            rts = utc(r[1])
            idx = math.floor(rts.timestamp() / secs)
            key = (r[2] or "", segment_of(r[3], s.segment_keys) if s.segment_keys else "")
            if key in done and idx <= done[key][0]:
                continue
            by_key[(*key, idx)].append(int(r[0]))
        for (wl, seg, idx), ids in sorted(by_key.items(), key=lambda kv: kv[0][2]):
            start = datetime.fromtimestamp(idx * secs, tz=UTC)
            end = start + length
            if end > horizon:
                continue
            out.append(Window(model_id, seg, "time", idx, start, end, tuple(sorted(ids)), wl))
    out.sort(key=lambda x: (x.start, x.index))
    return out[: s.max_windows_per_run]


def _take(conn: Connection, q: Any, keys: list[str], segment: str, n: int) -> list[Any]:
    """The first ``n`` rows of ``q`` in ``segment``, streamed: a long history is never read whole."""
    if not keys:
        return list(conn.execute(q.limit(n)).all())
    out: list[Any] = []
    res = conn.execute(q.execution_options(yield_per=5000))
    try:
        for r in res:
            if segment_of(r[2], keys) == segment:
                out.append(r)
                if len(out) >= n:
                    break
    finally:
        res.close()
    return out


def reference_for(conn: Connection, s: MonitorSettings, win: Window) -> Reference:
    """The reference records for ``win`` according to ``s.reference``, from the window's model and workload."""
    ref = s.reference
    c = interactions.c
    base = select(c.id, c.ts, c.metadata).where(c.model_id == win.model_id, workload_is(c.workload, win.workload))
    before = (c.ts < win.start) | ((c.ts == win.start) & (c.id < (win.first_id or 0)))
    if ref.kind == "last_healthy":
        rows = _healthy_rows(conn, s, win)
    elif ref.kind == "previous":
        if win.kind == "count":
            q = base.where(before).order_by(c.ts.desc(), c.id.desc())
            rows = _take(conn, q, s.segment_keys, win.segment, ref.windows * s.window.size)
        else:
            span = timedelta(minutes=s.window.minutes * ref.windows)
            q = base.where(c.ts >= win.start - span, c.ts < win.start).order_by(c.id)
            rows = [r for r in conn.execute(q).all() if segment_of(r[2], s.segment_keys) == win.segment]
    elif ref.kind == "pinned":
        q = base.where(c.ts >= ref.start, c.ts < ref.end).order_by(c.id)
        rows = [r for r in conn.execute(q).all() if segment_of(r[2], s.segment_keys) == win.segment]
    elif ref.kind == "after_version":
        q = base.where(c.model_version == ref.model_version).order_by(c.id)
        rows = _take(conn, q, s.segment_keys, win.segment, ref.records)
    else:  # after_promotion: the first records of the version serving the window, before the window
        version = conn.execute(select(c.model_version).where(c.id == win.last_id)).scalar() if win.last_id else None
        q = base.where(c.model_version == version, before).order_by(c.ts, c.id)
        rows = _take(conn, q, s.segment_keys, win.segment, ref.records) if version is not None else []
    ids = tuple(sorted(int(r[0]) for r in rows))
    ts = [utc(r[1]) for r in rows]
    return Reference(ref.kind, ids, min(ts) if ts else None, max(ts) if ts else None)


def window_rows(conn: Connection, s: MonitorSettings, model_id: str, segment: str, kind: str, start: datetime,
                end: datetime, first_id: int | None, last_id: int | None,
                workload: str | None = None) -> list[Any]:  # fmt: skip
    """(id, ts, metadata) of the records of a stored window, rebuilt from its bounds.

    A count window holds the records between its first and last (ts, id); a time window those in
    [start, end). A record that arrived after the window was checked but falls inside its bounds is
    included: the rebuilt window can be a little larger than the checked one, never smaller.
    ``workload`` is the window's (``monitor_windows.workload``; None: any workload, for callers that
    predate workloads).
    """
    c = interactions.c
    q = select(c.id, c.ts, c.metadata).where(c.model_id == model_id)
    if workload is not None:
        q = q.where(workload_is(c.workload, workload))
    if kind == "count":
        lo, hi = (start, first_id or 0), (end, last_id or 0)
        q = q.where((c.ts > lo[0]) | ((c.ts == lo[0]) & (c.id >= lo[1])),
                    (c.ts < hi[0]) | ((c.ts == hi[0]) & (c.id <= hi[1])))  # fmt: skip
    else:
        q = q.where(c.ts >= start, c.ts < end)
    rows = conn.execute(q.order_by(c.ts, c.id)).all()
    return [r for r in rows if segment_of(r[2], s.segment_keys) == segment] if s.segment_keys else list(rows)


def _healthy_rows(conn: Connection, s: MonitorSettings, win: Window) -> list[Any]:
    """Records of the newest ``reference.windows`` healthy windows before ``win`` (see ReferenceSettings).

    After ``driftloop monitor repin`` only windows from the pinned one on count, and those of them that
    were checked before the pin count as healthy whatever their flag: the user declared them normal.
    """
    mw, mb = monitor_windows.c, monitor_baselines.c
    pin = conn.execute(
        select(mb.from_window_index, mb.pinned_at)
        .where(mb.model_id == win.model_id, mb.workload == win.workload, mb.segment == win.segment,
               mb.window_kind == win.kind)
        .order_by(mb.id.desc()).limit(1)
    ).first()  # fmt: skip
    ok = mw.healthy.is_(True)
    q = select(mw.window_start, mw.window_end, mw.first_id, mw.last_id).where(
        mw.model_id == win.model_id, mw.workload == win.workload, mw.segment == win.segment,
        mw.window_kind == win.kind, mw.window_index < win.index)  # fmt: skip
    q = q.where(mw.window_index >= pin[0], ok | (mw.created_at < pin[1])) if pin is not None else q.where(ok)
    wins = conn.execute(q.order_by(mw.window_index.desc()).limit(s.reference.windows)).all()
    rows: list[Any] = []
    for w in wins:
        rows += window_rows(conn, s, win.model_id, win.segment, win.kind, utc(w[0]), utc(w[1]), w[2], w[3],
                            win.workload)
    return rows


def stored_window(conn: Connection, s: MonitorSettings, model_id: str, index: int, segment: str = "",
                  workload: str = "") -> Window | None:  # fmt: skip
    """A window that was checked already, rebuilt from its stored bounds (None when there is none)."""
    mw = monitor_windows.c
    r = conn.execute(
        select(mw.window_kind, mw.window_start, mw.window_end, mw.first_id, mw.last_id).where(
            mw.model_id == model_id, mw.workload == workload, mw.segment == segment,
            mw.window_kind == s.window.kind, mw.window_index == index)
    ).first()  # fmt: skip
    if r is None:
        return None
    rows = window_rows(conn, s, model_id, segment, r[0], utc(r[1]), utc(r[2]), r[3], r[4], workload)
    return Window(model_id, segment, r[0], index, utc(r[1]), utc(r[2]), tuple(int(x[0]) for x in rows), workload)


def _frame_query(ids: tuple[int, ...]) -> Any:
    """Interactions with their latest scored feedback and whether it is positive (the feedback_latest view)."""
    i, fl = interactions.c, feedback_latest.c
    cols = [i.id, i.ts, i.model_version, i.prompt, i.response, i.latency_ms, i.tokens_in, i.tokens_out,
            i.finish_reason, i.reference, fl.score.label("feedback_score"), fl.positive.label("feedback_positive")]  # fmt: skip
    j = interactions.outerjoin(feedback_latest, fl.request_id == i.request_id)
    return select(*cols).select_from(j).where(i.id.in_(ids))


FRAME_COLUMNS = ["id", "ts", "model_version", "prompt", "response", "latency_ms", "tokens_in", "tokens_out",
                 "finish_reason", "reference", "feedback_score", "feedback_positive"]  # fmt: skip


def load_frame(conn: Connection, ids: tuple[int, ...], chunk: int = 5000) -> pd.DataFrame:
    """Interactions with their latest feedback score and ``feedback_positive`` (True/False, None without
    feedback) for the given ids, as the view ``feedback_latest`` defines them (driftloop.store.feedback)."""
    parts = [pd.read_sql_query(_frame_query(ids[k : k + chunk]), conn) for k in range(0, len(ids), chunk)]
    if not parts:
        return pd.DataFrame(columns=FRAME_COLUMNS)
    return pd.concat(parts, ignore_index=True).sort_values("id").reset_index(drop=True)


def load_window_frame(conn: Connection, ids: tuple[int, ...]) -> pd.DataFrame:
    """:func:`load_frame` in a canonical order: by prompt and response content (a hash), not by id.

    The drift tests that train a classifier (text drift, embedding drift) split and shuffle rows with a
    fixed seed, so their result depends on row order; ordered by content, the same records give the same
    verdict however they were re-sent (other request ids, other insertion order).
    """
    from driftloop.monitor.features import content_keys

    df = load_frame(conn, ids)
    if df.empty:
        return df
    order = np.lexsort((df["id"].to_numpy(), content_keys(df)))
    return df.iloc[order].reset_index(drop=True)
