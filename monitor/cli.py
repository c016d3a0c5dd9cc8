"""CLI: ``driftloop monitor check|show|repin|embeddings``, ``driftloop alerts list|ack``, ``driftloop policies test``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from driftloop.clikit import ConfigOpt, settings_and_engine, setup_logging
from driftloop.store.timestamps import utc

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine, RowMapping

    from driftloop.settings import Settings

monitor_app = typer.Typer(help="Drift and quality checks.", no_args_is_help=True)


def _when(v: str | None) -> datetime | None:
    if v is None:
        return None
    try:
        t = datetime.fromisoformat(v)
    except ValueError:
        raise typer.BadParameter(f"{v!r} is not an ISO 8601 time (e.g. 2026-11-28T10:00:00Z)") from None
    return utc(t)


SegmentOpt = Annotated[str, typer.Option("--segment", help="Segment (k1=v1,...; default: the whole model).")]
# A window index exists once per (workload, segment) stream, so every command that names a window names its
# workload too; the default is the unnamed stream (records without a workload), as stored ('' in the tables).
WorkloadOpt = Annotated[str, typer.Option("--workload", help="Workload of the stream (default: the unnamed stream, "
                                          "records without a workload).")]  # fmt: skip


@monitor_app.command("check")
def check(
    model: Annotated[str, typer.Option("--model", "-m", help="Model id to check.")],
    config: ConfigOpt = None,
    window: Annotated[
        int | None, typer.Option(help="Window number (default: the newest complete unchecked one).")
    ] = None,
    segment: SegmentOpt = "",
    workload: WorkloadOpt = "",
    all_due: Annotated[bool, typer.Option("--all", help="Check every due window of the model, oldest first.")] = False,
    dry_run: Annotated[
        bool, typer.Option(help="Do not store the result (also re-inspects an already checked --window).")
    ] = False,
) -> None:
    """Run a drift/quality check now and print which features drifted, by how much, and the report path."""
    setup_logging("WARNING")
    if all_due and window is not None:
        raise typer.BadParameter("--all checks every due window; leave out --window", param_hint="--all")
    s, eng = settings_and_engine(config)
    try:
        if all_due:
            _check_all(eng, s, model, dry_run)
        else:
            _check_one(eng, s, model, window, segment, workload, dry_run)
    finally:
        eng.dispose()


def _check_one(eng: Engine, s: Settings, model: str, window: int | None, segment: str, workload: str,
               dry_run: bool) -> None:  # fmt: skip
    """Check ``--window`` of the stream ``workload``/``segment``, else the model's newest due window (any stream)."""
    from driftloop.monitor.check import run_check

    stored = _stored_window(eng, s, model, window, segment, workload) if window is not None else None
    try:
        res = run_check(eng, s, model, window_index=window, persist=not dry_run, segment=segment,
                        workload=workload)  # fmt: skip
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if res is None:
        typer.echo(f"no complete unchecked window for model {model!r} (window: {s.monitor.window.kind}, "
                   f"size {s.monitor.window.size}); has it had traffic?")  # fmt: skip
        raise typer.Exit(1)
    if stored is not None:
        typer.echo(f"note: window #{window} was already checked (monitor_windows.id {stored['id']}, "
                   f"{_ts(stored['created_at'])}); checked again without storing (see: driftloop monitor show)")  # fmt: skip
    typer.echo(res.summary())


def _check_all(eng: Engine, s: Settings, model: str, dry_run: bool) -> None:
    """Every due window of ``model`` in order, one line each: ``[k/n] #index ... verdict``."""
    from driftloop.monitor.check import WindowChecker
    from driftloop.monitor.windows import due_windows

    with eng.connect() as conn:
        wins = due_windows(conn, s.monitor.model_copy(update={"max_windows_per_run": 10**9}), model)
    if not wins:
        typer.echo(f"no complete unchecked window for model {model!r}; nothing to do")
        raise typer.Exit(1)
    checker = WindowChecker(s, eng)
    for k, w in enumerate(wins, start=1):
        head, verdict = checker.check(w, persist=not dry_run).summary().splitlines()[:2]
        typer.echo(f"[{k}/{len(wins)}] {head}: {verdict.strip()}")
    typer.echo(f"checked {len(wins)} window(s) of {model!r}" + (" (dry run: nothing stored)" if dry_run else ""))


@monitor_app.command("show")
def show(
    model: Annotated[str, typer.Option("--model", "-m", help="Model id.")],
    config: ConfigOpt = None,
    window: Annotated[int | None, typer.Option(help="Window number (default: the newest checked one).")] = None,
    segment: Annotated[str | None, typer.Option("--segment", help="Only this segment ('' = whole model).")] = None,
    workload: WorkloadOpt = "",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line (for scripts).")] = False,
) -> None:
    """Print a stored window: its reference, verdict, per-feature results and metrics."""
    s, eng = settings_and_engine(config)
    try:
        with eng.connect() as conn:
            rows = _show_rows(conn, s, model, window, segment, workload)
            if not rows:
                which = f"window #{window}" if window is not None else "checked window"
                stream = f"workload {workload!r}" if workload else "the unnamed workload"
                others = _workloads(conn, s, model) - {workload}
                hint = f"; stored workloads: {', '.join(map(repr, sorted(others)))} (--workload)" if others else ""
                typer.echo(f"error: no {which} of model {model!r}, {stream} ({s.monitor.window.kind} windows) is "
                           f"stored{hint}; see `driftloop monitor check`", err=True)  # fmt: skip
                raise typer.Exit(2)
            for w in rows:
                feats, metrics = _details(conn, int(w["id"]))
                (_print_json if as_json else _print_text)(w, feats, metrics)
    finally:
        eng.dispose()


@monitor_app.command("repin")
def repin(
    model: Annotated[str, typer.Option("--model", "-m", help="Model id.")],
    from_window: Annotated[int, typer.Option("--from-window", min=0, help="First window of the new baseline.")],
    config: ConfigOpt = None,
    segment: SegmentOpt = "",
    workload: WorkloadOpt = "",
    note: Annotated[str | None, typer.Option(help="Why (stored with the baseline).")] = None,
    by: Annotated[str | None, typer.Option(help="Who re-pins (default: the OS user).")] = None,
) -> None:
    """Re-pin the baseline: a last_healthy reference is taken from window N on (older windows are ignored)."""
    import getpass

    from sqlalchemy import insert

    from driftloop.monitor.tables import monitor_baselines

    s, eng = settings_and_engine(config)
    kind = s.monitor.window.kind
    who = (by or getpass.getuser())[:128]
    try:
        known = _stored_window(eng, s, model, from_window, segment, workload)
        with eng.begin() as conn:
            bid = conn.execute(insert(monitor_baselines).returning(monitor_baselines.c.id), {
                "model_id": model, "workload": workload, "segment": segment, "window_kind": kind, "from_window_index": from_window,
                "pinned_at": datetime.now(UTC), "pinned_by": who, "note": note}).scalar_one()  # fmt: skip
    finally:
        eng.dispose()
    seg = (f" workload {workload!r}" if workload else "") + (f" segment {segment!r}" if segment else "")
    typer.echo(f"re-pinned {model!r}{seg} ({kind} windows): a last_healthy reference now starts at window "
               f"#{from_window} (baseline {bid}, by {who})")  # fmt: skip
    if known is None:
        typer.echo(f"note: window #{from_window} is not checked yet; the baseline applies once it is")


@monitor_app.command("embeddings")
def embeddings(
    config: ConfigOpt = None,
    runtime: Annotated[
        str | None, typer.Option(help="auto, onnx or sentence-transformers (default: monitor.embeddings.runtime).")
    ] = None,
) -> None:
    """Prepare the embedding model (export MiniLM to ONNX once, e.g. in an image build) and test it.

    Prints one JSON object: the runtime that will run, the ONNX file and its export check, and the time
    to embed the probe sentences.
    """
    import time

    from driftloop.monitor.embeddings import PROBES, load_embedder, model_path

    setup_logging("WARNING")
    from driftloop.clikit import get_settings

    e = get_settings(config).monitor.embeddings
    rt = runtime or e.runtime
    if rt not in ("auto", "onnx", "sentence-transformers"):
        raise typer.BadParameter(f"{rt!r}: use auto, onnx or sentence-transformers", param_hint="--runtime")
    t = time.perf_counter()
    try:
        emb = load_embedder(e.model_path, rt, e.cache_dir)
    except Exception as err:
        typer.echo(f"error: the embedding model cannot be loaded with runtime {rt!r}: {err}", err=True)
        raise typer.Exit(1) from None
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    vecs = emb.encode(list(PROBES), e.max_tokens)
    out: dict[str, Any] = {"runtime": emb.runtime, "model": model_path(e.model_path), "dim": int(vecs.shape[1]),
                           "load_s": round(load_s, 2), "probe_s": round(time.perf_counter() - t, 3)}  # fmt: skip
    onnx_file = getattr(emb, "onnx_file", None)
    if onnx_file is not None:
        out["onnx_file"] = str(onnx_file)
        out["export"] = json.loads((onnx_file.parent / "export.json").read_text())
    typer.echo(json.dumps(out))


def register(app: typer.Typer) -> None:
    """Add the monitoring commands to the root CLI."""
    app.add_typer(monitor_app, name="monitor")
    from driftloop.monitor.alerts.cli import register as register_alerts

    register_alerts(app)


# -- reading stored windows ----------------------------------------------------------------------
def _ts(v: datetime | None) -> str:
    return "-" if v is None else f"{utc(v):%Y-%m-%d %H:%M:%S}Z"


def _iso(v: datetime | None) -> str | None:
    return None if v is None else utc(v).isoformat().replace("+00:00", "Z")


def _stream(model: str, workload: str, segment: str) -> str:
    """``model[workload]/segment``, as the monitor's logs and summaries name a stream."""
    return f"{model}{f'[{workload}]' if workload else ''}{'/' + segment if segment else ''}"


def _stored_window(eng: Engine, s: Settings, model: str, index: int | None, segment: str,
                   workload: str) -> RowMapping | None:  # fmt: skip
    """The stored row of window ``index`` of the stream ``model``/``workload``/``segment`` (None if not checked)."""
    from sqlalchemy import select

    from driftloop.monitor.tables import monitor_windows as mw

    with eng.connect() as conn:
        return conn.execute(select(mw).where(mw.c.model_id == model, mw.c.workload == workload,
                                             mw.c.segment == segment,
                                             mw.c.window_kind == s.monitor.window.kind,
                                             mw.c.window_index == index)).mappings().first()  # fmt: skip


def _show_rows(conn: Connection, s: Settings, model: str, window: int | None, segment: str | None,
               workload: str) -> list[RowMapping]:  # fmt: skip
    """Window ``window`` of ``workload`` (every segment, or ``segment``), else its newest checked window."""
    from sqlalchemy import select

    from driftloop.monitor.tables import monitor_windows as mw

    q = select(mw).where(mw.c.model_id == model, mw.c.workload == workload,
                         mw.c.window_kind == s.monitor.window.kind)  # fmt: skip
    if segment is not None:
        q = q.where(mw.c.segment == segment)
    if window is not None:
        return list(conn.execute(q.where(mw.c.window_index == window).order_by(mw.c.segment)).mappings())
    return list(conn.execute(q.order_by(mw.c.window_end.desc(), mw.c.id.desc()).limit(1)).mappings())


def _workloads(conn: Connection, s: Settings, model: str) -> set[str]:
    """The workloads of ``model`` with stored windows (to point at the right ``--workload``)."""
    from sqlalchemy import select

    from driftloop.monitor.tables import monitor_windows as mw

    q = select(mw.c.workload).where(mw.c.model_id == model, mw.c.window_kind == s.monitor.window.kind).distinct()
    return set(conn.execute(q).scalars())


def _details(conn: Connection, wid: int) -> tuple[list[RowMapping], dict[str, float | None]]:
    from sqlalchemy import select

    from driftloop.monitor.tables import drift_results as dr
    from driftloop.monitor.tables import window_metrics as wm

    feats = list(conn.execute(select(dr).where(dr.c.window_id == wid)
                              .order_by(dr.c.feature_group, dr.c.feature)).mappings())  # fmt: skip
    metrics = {r.name: r.value for r in conn.execute(select(wm.c.name, wm.c.value).where(wm.c.window_id == wid))}
    return feats, metrics


def _dash(v: Any, fmt: str = "") -> str:
    """A stored value as text; NULL (older rows, or not applicable) is ``-``."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return format(v, fmt) if fmt else str(v)


def _print_text(w: RowMapping, feats: Sequence[RowMapping], metrics: Mapping[str, float | None]) -> None:
    typer.echo(f"{_stream(w['model_id'], w['workload'], w['segment'])} window #{w['window_index']} [{_ts(w['window_start'])} .. "
               f"{_ts(w['window_end'])}] n={w['n_records']} status {w['status']}"
               + (f" ({w['error']})" if w["error"] else "") + f", checked {_ts(w['created_at'])}")  # fmt: skip
    typer.echo(f"  reference: {w['ref_kind']} n={w['ref_n']} [{_ts(w['ref_start'])} .. {_ts(w['ref_end'])}]")
    verdict = "-" if w["drifted"] is None else ("DRIFT" if w["drifted"] else "no drift")
    typer.echo(f"  verdict: {verdict}, score {_dash(w['drift_score'], '.2f')}, groups drifted "
               f"{_dash(w['n_groups_drifted'])}/{_dash(w['n_groups'])} (threshold drift_share "
               f"{_dash(w['drift_share'], '.2f')}), features drifted {_dash(w['n_drifted'])}/{_dash(w['n_features'])}, "
               f"healthy {_dash(w['healthy'])}")  # fmt: skip
    if feats:
        typer.echo(f"  {'GROUP':<18} {'FEATURE':<22} {'METHOD':<30} {'STATISTIC':>10} {'THRESHOLD':>10} "
                   f"{'P':>9} {'P_ADJ':>9} DRIFTED")  # fmt: skip
    for f in feats:
        typer.echo(f"  {_dash(f['feature_group']):<18} {f['feature']:<22} {f['method']:<30} "
                   f"{_dash(f['statistic'], '.4g'):>10} {_dash(f['threshold'], '.4g'):>10} "
                   f"{_dash(f['p_value'], '.3g'):>9} {_dash(f['p_adjusted'], '.3g'):>9} "
                   f"{'DRIFT' if f['drifted'] else '-'}")  # fmt: skip
    quality = {k: v for k, v in metrics.items() if k.startswith(("quality.", "ref.quality."))}
    for k in sorted(quality):
        typer.echo(f"  {k:<40} {_dash(quality[k], '.4g')}")
    if w["report_path"]:
        typer.echo(f"  report: {w['report_path']}")


def _print_json(w: RowMapping, feats: Sequence[RowMapping], metrics: Mapping[str, float | None]) -> None:
    """One object per line: the window, then each feature, then each metric; each names its window."""
    key = {"model": w["model_id"], "workload": w["workload"], "segment": w["segment"], "window": w["window_index"],
           "window_start": _iso(w["window_start"]), "window_end": _iso(w["window_end"])}  # fmt: skip
    skip = {"id", "model_id", "workload", "segment", "window_index", "window_start", "window_end"}
    head = {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in w.items() if k not in skip}
    typer.echo(json.dumps({"type": "window", **key, **head}))
    for f in feats:
        row = {k: v for k, v in f.items() if k not in ("id", "window_id")}
        typer.echo(json.dumps({"type": "feature", **key, **row}))
    for name in sorted(metrics):
        typer.echo(json.dumps({"type": "metric", **key, "name": name, "value": metrics[name]}))
