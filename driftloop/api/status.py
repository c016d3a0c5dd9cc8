"""The status page at ``/``: server-rendered HTML, no scripts, no external assets, everything escaped."""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

from sqlalchemy import Engine, func, select

from driftloop.api.timeline import render_timelines, stream_name
from driftloop.settings import Settings

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5rem;color:#1d2330;background:#f7f8fa}
h1{font-size:1.4rem;margin:0 0 .2rem} h2{font-size:1.1rem;margin:1.6rem 0 .5rem}
table{border-collapse:collapse;background:#fff;width:100%;font-size:.9rem}
th,td{border:1px solid #dde1e7;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#eef1f5} .muted{color:#6b7280} .pill{padding:.05rem .4rem;border-radius:.6rem;font-size:.8rem}
.critical{background:#fde2e2;color:#8a1c1c} .warning{background:#fff1d6;color:#7a4b00} .info{background:#e1efff}
.ok{color:#17692e} .bad{color:#a11} pre{margin:0;white-space:pre-wrap;font-size:.8rem}
h3{font-size:.95rem;margin:.8rem 0 .3rem} svg.timeline{max-width:100%;height:auto;border:1px solid #dde1e7}
"""


def _e(v: Any) -> str:
    return escape("" if v is None else str(v))


def _ts(v: datetime | None) -> str:
    return _e(f"{v:%Y-%m-%d %H:%M:%S}" if v else "-")


def _table(headers: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _gate_summary(gate: dict[str, Any] | None) -> str:
    if not gate:
        return '<span class="muted">no gate (base model or manual)</span>'
    primary = gate.get("primary")
    comp = next((c for c in gate.get("comparisons", []) if c.get("metric") == primary and c.get("suite") == "heldout"),
                None)  # fmt: skip
    verdict = "PROMOTE" if gate.get("promote") else "REJECT"
    if comp:
        return _e(f"{verdict}: {primary} {comp['improvement']:+.3f} [{comp['ci_low']:+.3f}, {comp['ci_high']:+.3f}]")
    return _e(f"{verdict} ({primary})")


def _section(engine: Engine, fn: Any) -> str:
    try:
        return str(fn(engine))
    except Exception as e:  # a table not migrated yet must not take the whole page down
        return f'<p class="bad">unavailable: {_e(type(e).__name__)}: {_e(str(e).splitlines()[0][:300])}</p>'


def _models(engine: Engine) -> str:
    from driftloop.retrain.registry import ModelRegistry

    reg = ModelRegistry(engine)
    rows = []
    for fam in reg.families():
        champ = reg.champion(fam)
        pending = [v.version for v in reg.versions(fam) if v.status == "pending_approval"]
        rows.append([
            f"<b>{_e(fam)}</b>",
            f'<b class="champion">{_e(champ.version)}</b> <span class="muted">#{champ.id}</span>' if champ else "-",
            _e(champ.status) if champ else "-",
            _ts(champ.created_at) if champ else "-",
            _gate_summary(champ.gate) if champ else "-",
            _e(", ".join(pending)) or '<span class="muted">none</span>',
        ])  # fmt: skip
    return _table(["model", "champion", "status", "registered", "gate", "waiting for approval"], rows,
                  "no model versions registered yet")  # fmt: skip


def _alerts(engine: Engine) -> str:
    from driftloop.monitor.alerts.tables import OPEN_STATES, alerts

    with engine.connect() as c:
        rows = c.execute(select(alerts).where(alerts.c.state.in_(OPEN_STATES))
                         .order_by(alerts.c.id.desc()).limit(50)).mappings().all()  # fmt: skip
    out = []
    for a in rows:
        win = f'<a href="/reports/{int(a["window_id"])}">window {int(a["window_id"])}</a>' if a["window_id"] else "-"
        out.append([
            f'<span class="pill {_e(a["severity"])}">{_e(a["severity"])}</span>',
            f'<b class="alert-rule">{_e(a["rule"])}</b>', _e(stream_name(a["model_id"], a["workload"], a["segment"])),
            _e(a["state"]), _ts(a["fired_at"]),
            _e(a["message"]), win,
        ])  # fmt: skip
    return _table(["severity", "rule", "model", "state", "fired", "message", "report"], out, "no open alerts")


def _groups(r: Any) -> str:
    """driftloop's verdict counts: drifted groups / groups (old rows without them: ``-``)."""
    return "-" if r["n_groups"] is None else f"{r['n_groups_drifted'] or 0}/{r['n_groups']}"


def _drift_row(r: Any) -> list[str]:
    score = "-" if r["drift_score"] is None else f"{r['drift_score']:.2f}"
    share = "-" if r["drift_share"] is None else f"{r['drift_share']:.2f}"
    verdict = ('<span class="bad">drifted</span>' if r["drifted"] else '<span class="ok">no drift</span>'
               ) if r["drifted"] is not None else '<span class="muted">-</span>'  # fmt: skip
    link = f'<a href="/reports/{int(r["id"])}">report</a>' if r["report_path"] else '<span class="muted">-</span>'
    return [f'<span class="stream">{_e(stream_name(r["model_id"], r["workload"], r["segment"]))}</span>',
            _e(f"{r['window_kind']} #{r['window_index']}"), _ts(r["window_end"]), _e(r["status"]),
            f'<span class="verdict">{verdict}</span>', _e(score), f'<span class="groups">{_e(_groups(r))}</span>',
            f'<span class="share">{_e(share)}</span>', link]  # fmt: skip


def _drift(engine: Engine) -> str:
    """The newest windows (10 per stream: model, workload, segment) with driftloop's verdict: the share of
    signal groups drifted after Benjamini-Hochberg against the threshold (``drift_share``) that verdict used."""
    from driftloop.monitor.tables import monitor_windows as w

    stream = (w.c.model_id, w.c.workload, w.c.segment)
    rank = func.row_number().over(partition_by=stream, order_by=w.c.id.desc()).label("rank")
    sub = select(w, rank).subquery()
    with engine.connect() as c:
        rows = c.execute(select(sub).where(sub.c.rank <= 10)
                         .order_by(sub.c.model_id, sub.c.workload, sub.c.segment, sub.c.id.desc())
                         .limit(200)).mappings().all()  # fmt: skip
    return _table(["model", "window", "ended", "status", "verdict", "drift score", "groups drifted", "threshold",
                   "report"], [_drift_row(r) for r in rows], "no windows checked yet")  # fmt: skip


def _retrain(engine: Engine) -> str:
    from driftloop.retrain.tables import retrain_jobs as r

    with engine.connect() as c:
        rows = c.execute(select(r).order_by(r.c.id.desc()).limit(10)).mappings().all()
    out = []
    for j in rows:
        note = (j["error"] or j["message"] or "").strip().splitlines()
        total = (j["timings"] or {}).get("total_s")
        out.append([_e(j["id"]), _e(j["policy"]), _e(j["status"]), _e(j["stage"] or "-"),
                    _e(f"{100 * (j['progress'] or 0):.0f}%"), _ts(j["created_at"]),
                    _e(f"{total:.1f}s" if isinstance(total, (int, float)) else "-"),
                    _e(note[0][:200] if note else "")])  # fmt: skip
    return _table(["job", "policy", "status", "stage", "progress", "created", "duration", "message"], out,
                  "no retrain jobs yet")  # fmt: skip


def _job_runs(engine: Engine) -> str:
    from driftloop.jobs import job_runs as j

    with engine.connect() as c:
        rows = c.execute(select(j).order_by(j.c.id.desc()).limit(15)).mappings().all()
    out = []
    for r in rows:
        err = (r["error"] or "").strip().splitlines()
        cls = "bad" if r["status"] == "failed" else "ok" if r["status"] == "succeeded" else "muted"
        out.append([_ts(r["started_at"]), _e(r["job"]), f'<span class="{cls}">{_e(r["status"])}</span>',
                    _e("-" if r["duration_s"] is None else f"{r['duration_s']:.2f}s"), _e(r["instance"]),
                    _e((r["result"] or (err[-1] if err else ""))[:200])])  # fmt: skip
    return _table(["started", "job", "status", "duration", "instance", "result"], out, "no job runs yet")


def render_status(engine: Engine, settings: Settings, refresh_s: int = 30) -> str:
    """The whole page; each section shows its own error rather than failing the page."""
    now = datetime.now().astimezone()
    parts = [
        ("Models", _models), ("Open alerts", _alerts), ("Drift and quality by window", render_timelines),
        ("Recent windows", _drift),
        ("Recent retrain jobs", _retrain), ("Recent job runs", _job_runs),
    ]  # fmt: skip
    body = "".join(f"<section><h2>{_e(title)}</h2>{_section(engine, fn)}</section>" for title, fn in parts)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{int(refresh_s)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>driftloop status</title><style>{CSS}</style></head>
<body><h1>driftloop status</h1>
<p class="muted">{_e(f"{now:%Y-%m-%d %H:%M:%S %Z}")} &middot; database {_e(engine.dialect.name)} &middot;
<a href="/docs">API docs</a> &middot; <a href="/openapi.json">OpenAPI</a> &middot; <a href="/metrics">metrics</a>
&middot; refreshes every {int(refresh_s)} s</p>
{body}
</body></html>
"""
