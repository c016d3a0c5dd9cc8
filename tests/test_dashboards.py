"""Grafana dashboards: pinned schema, provisioning, every panel's SQL on a real database, and the push command.

The panel test builds one realistic database (AlpacaEval drift scenario checked by the monitor, alerts, rejects,
consumer offsets, scheduled job runs, a retrain job, registry promotion and rollback) and runs every query of
every dashboard (panels, panels in rows, annotations, variables) as Grafana would expand it, for model = All
and for one model. A new panel is covered without touching this file: the expectations are per panel type.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest
import typer
import yaml
from sqlalchemy import create_engine, insert, text, update
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from driftloop.dashboards import (
    PANEL_TYPES,
    DashboardError,
    datasource_payload,
    iter_panels,
    lint,
    load_dashboards,
    load_schema,
    push,
    register,
    validate_dir,
)
from driftloop.settings import load_settings
from tests.grafana_macros import ALL, MacroError, TimeRange, Variable, dashboard_variables, expand
from tests.grafana_recorder import GrafanaRecorder
from tests.helpers import make_settings

ROOT = Path(__file__).resolve().parents[1]
DASH_DIR = ROOT / "dashboards"
FILES = sorted(DASH_DIR.glob("*.json"))
MODEL, OTHER = "assistant", "assistant-b"
WINDOW = 100


def _dash(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------ static checks
def test_schema_is_draft_2020_12_and_the_four_dashboards_exist() -> None:
    schema = load_schema(DASH_DIR)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "title" not in schema, "Grafana's provisioner would take a file with a title for a dashboard"
    uids = {_dash(f)["uid"] for f in FILES}
    assert {"driftloop-drift", "driftloop-quality", "driftloop-ingestion", "driftloop-lifecycle"} <= uids


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_dashboard_matches_schema_and_rules(path: Path) -> None:
    d = _dash(path)
    assert lint(d, load_schema(DASH_DIR)) == []
    assert d["schemaVersion"] in (39, 40)
    panels = list(iter_panels(d["panels"]))
    assert all(p["type"] in PANEL_TYPES for p in panels)
    assert len({p["id"] for p in panels}) == len(panels)
    # alerts and promotions are annotations on every dashboard
    sqls = [a["target"]["rawSql"] for a in d["annotations"]["list"] if "target" in a]
    assert any("FROM alerts" in s for s in sqls) and any("FROM model_events" in s for s in sqls)
    assert all("$__timeFilter(" in s for s in sqls)


def test_validate_dir_reports_nothing_for_the_repository() -> None:
    assert validate_dir(DASH_DIR) == {f: [] for f in FILES}


def test_lint_finds_what_the_schema_cannot() -> None:
    d = copy.deepcopy(_dash(DASH_DIR / "drift.json"))
    a, b = d["panels"][0], d["panels"][1]
    b["id"] = a["id"]  # duplicate id
    b["gridPos"] = dict(a["gridPos"])  # overlap
    d["panels"][2]["type"] = "grafana-worldmap-panel"  # a plugin, not core
    d["panels"][3]["targets"][0]["rawSql"] = "SELECT 1 AS x FROM monitor_windows WHERE model_id = '$model' AND $nope"
    d["panels"][4]["gridPos"]["x"] = 20  # x + w > 24
    d["panels"][5]["datasource"] = {"type": "grafana-postgresql-datasource", "uid": "other"}
    problems = "\n".join(lint(d, load_schema(DASH_DIR)))
    for want in ("ids must be unique", "overlaps", "not a core Grafana panel type", "quotes a multi-value",
                 "$nope is not a variable", "> 24", "expected 'driftloop-pg'"):  # fmt: skip
        assert want in problems, problems
    workload = [v for v in d["templating"]["list"] if v["name"] == "workload"]
    del d["templating"]["list"][0]  # the model variable
    assert any("templating" in p for p in lint(d, load_schema(DASH_DIR)))
    d["templating"]["list"] = workload  # the workload variable alone is not enough either
    assert any("templating" in p for p in lint(d, load_schema(DASH_DIR)))
    d = copy.deepcopy(_dash(DASH_DIR / "drift.json"))
    d["templating"]["list"] = [v for v in d["templating"]["list"] if v["name"] != "workload"]
    assert any("templating" in p for p in lint(d, load_schema(DASH_DIR)))


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_provisioning_matches_docker_compose() -> None:
    graf = _compose()["services"]["grafana"]
    mounts = {}
    for v in graf["volumes"]:
        host, container, *_ = v.split(":")
        if host.startswith("./"):
            mounts[container] = (ROOT / host[2:]).resolve()

    def host_path(container_path: str) -> Path:
        for c, h in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if container_path == c or container_path.startswith(c + "/"):
                return h / container_path[len(c) :].lstrip("/")
        raise AssertionError(f"{container_path} is not mounted into the grafana container")

    prov = host_path("/etc/grafana/provisioning")
    assert prov == (DASH_DIR / "provisioning").resolve()
    ds = yaml.safe_load((prov / "datasources/driftloop.yaml").read_text())["datasources"]
    (pg,) = [d for d in ds if d["uid"] == "driftloop-pg"]
    env = _compose()["services"]["postgres"]["environment"]
    assert pg["type"] == "grafana-postgresql-datasource" and pg["url"] == "postgres:5432"
    assert pg["user"] == env["POSTGRES_USER"] and pg["jsonData"]["database"] == env["POSTGRES_DB"]
    var = pg["secureJsonData"]["password"].lstrip("$").strip("{}")
    assert var in graf["environment"], f"compose must pass {var} to grafana"
    # every dashboard file has exactly one provider; nothing else that ends in .json is under a provider
    covered: list[Path] = []
    for f in (prov / "dashboards").glob("*.yaml"):
        for p in yaml.safe_load(f.read_text())["providers"]:
            target = host_path(p["options"]["path"])
            assert target.exists(), f"provider {p['name']}: {p['options']['path']} -> {target} does not exist"
            covered += [target] if target.is_file() else list(target.rglob("*.json"))
    assert sorted(covered) == sorted(f.resolve() for f in FILES)


def test_macro_expansion_follows_grafana() -> None:
    tr = TimeRange(datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC), datetime(2026, 3, 1, 16, 0, 0, 250000, tzinfo=UTC))
    v = {
        "model": Variable("model", ALL, multi=True, include_all=True, options=["a", "o'b"]),
        "one": Variable("one", ["a"], multi=True, include_all=True),
        "api_url": Variable("api_url", "http://h:8600"),
    }
    assert expand("$__timeFilter(ts)", tr) == "ts BETWEEN '2026-03-01T10:00:00Z' AND '2026-03-01T16:00:00.25Z'"
    assert expand("$__timeFrom() $__timeTo()", tr) == "'2026-03-01T10:00:00Z' '2026-03-01T16:00:00.25Z'"
    assert expand("$__timeGroup(ts, '5m')", tr) == "floor(extract(epoch from ts)/300)*300"
    assert expand("$__timeGroup(ts, 1h, NULL) AS t", tr) == "floor(extract(epoch from ts)/3600)*3600 AS t"
    assert expand("$__timeGroupAlias(ts, $__interval)", tr) == 'floor(extract(epoch from ts)/60)*60 AS "time"'
    # pre-5.3 compatibility: a $__timeGroup followed by a comma gets the alias
    assert expand("$__timeGroup(ts,'5m'), x", tr) == 'floor(extract(epoch from ts)/300)*300 AS "time", x'
    assert expand("$__unixEpochFilter(e)", tr) == "e >= 1772359200 AND e <= 1772380800"
    assert expand("$__unixEpochGroupAlias(e, '1d')", tr) == 'floor((e)/86400)*86400 AS "time"'
    assert expand("$__interval $__interval_ms", tr) == "1m 60000"
    assert expand("$__interval", TimeRange(tr.start, tr.start + timedelta(days=30))) == "30m"
    assert expand("IN ($model)", tr, v) == "IN ('a','o''b')"
    assert expand("IN (${model})", tr, v) == expand("IN ([[model]])", tr, v) == "IN ('a','o''b')"
    assert expand("IN (${model:sqlstring}) ${model:csv} ${model:pipe}", tr, v) == "IN ('a','o''b') a,o'b a|o'b"
    assert expand("IN ($one)", tr, v) == "IN ('a')"
    assert expand("'$api_url/reports/' || id", tr, v) == "'http://h:8600/reports/' || id"
    custom_all = {"model": Variable("model", ALL, multi=True, include_all=True, all_value="SELECT 1")}
    assert expand("IN ($model)", tr, custom_all) == "IN (SELECT 1)"
    for bad, why in [("m = '$model'", "quotes a multi-value"), ("$__nope(x)", "unknown macro"),
                     ("x = $unknown", "unexpanded"), ("${other:json}", "unexpanded"),
                     ("$__timeGroup(ts)", "needs time column and interval"),
                     ("$__timeGroup(ts, 5 minutes)", "error parsing interval")]:  # fmt: skip
        with pytest.raises(MacroError, match=why):
            expand(bad, tr, v)


# ------------------------------------------------------------------------------------------ the database
@dataclass
class Scenario:
    url: str
    time_range: TimeRange
    models: list[str]


def _rejects(now: datetime) -> list[dict[str, Any]]:
    """Bad messages through the real decoder, as the ingestion service records them."""
    import hashlib

    from driftloop.ingest.decode import DecodePolicy, Decoder, InvalidMessage, Source
    from driftloop.ingest.redact import Redactor

    dec = Decoder(DecodePolicy(), Redactor())
    bad = [b"{not json", b"\xff\xfe\x00", b'{"request_id": "x"}', b"[1, 2]", json.dumps({"prompt": 3}).encode()]
    out = []
    for i, raw in enumerate(bad):
        with pytest.raises(InvalidMessage) as e:
            dec.decode(raw, Source("logs", i % 2, 5000 + i, None))
        out.append({"source_topic": "logs", "source_partition": i % 2, "source_offset": 5000 + i,
                    "reason": e.value.reason, "error": e.value.detail[:4000], "raw": raw, "raw_size": len(raw),
                    "raw_sha256": hashlib.sha256(raw).hexdigest(), "dlq_topic": "logs-dlq" if i % 3 else None,
                    "rejected_at": now - timedelta(minutes=10 * i),
                    # one dead-letter copy refused (recorded, not lost), one whole unparseable record batch
                    "dlq_status": "failed" if i == 1 else ("sent" if i % 3 else None),
                    "dlq_error": "too_large: MessageSizeTooLargeError" if i == 1 else None,
                    "source_offset_last": 5000 + i + 9 if i == 2 else None})  # fmt: skip
    assert len({r["reason"] for r in out}) >= 2, out
    return out


def _registry(eng: Any, tmp: Path, now: datetime) -> None:
    """A succeeded retrain that the gate promotes, a failed one, then a rollback."""
    from driftloop.connectors.filesystem import FilesystemPromotionTarget
    from driftloop.retrain.gate import ExampleScore, decide
    from driftloop.retrain.registry import ModelRegistry
    from driftloop.retrain.tables import retrain_jobs
    from driftloop.settings.connectors import TargetSettings
    from driftloop.settings.retrain import GateSettings

    rng = random.Random(5)
    champ = [ExampleScore(nll=40.0 + rng.random(), n_tokens=20, rouge_l=0.30 + 0.05 * rng.random(),
                          bleu=10 + rng.random()) for _ in range(30)]  # fmt: skip
    cand = [ExampleScore(nll=c.nll * 0.6, n_tokens=20, rouge_l=(c.rouge_l or 0) + 0.2, bleu=(c.bleu or 0) + 8)
            for c in champ]  # fmt: skip
    gate = decide({"heldout": (champ, cand)}, GateSettings(n_bootstrap=200)).to_dict()
    assert gate["promote"], gate["reasons"]
    with eng.begin() as c:
        ok_job, failed_job = (
            c.execute(insert(retrain_jobs).returning(retrain_jobs.c.id), row).scalar_one()
            for row in (
                {"policy": "nightly", "model_id": MODEL, "status": "succeeded", "stage": "done", "progress": 1.0,
                 "trigger": {"kind": "alert", "alerts": ["quality-drop"]}, "message": "promoted v1",
                 "timings": {"dataset_s": 1.5, "train_eval_s": 42.0, "total_s": 45.1, "worker_load_s": 2.0},
                 "created_at": now - timedelta(hours=2), "started_at": now - timedelta(hours=2),
                 "finished_at": now - timedelta(hours=2) + timedelta(seconds=45)},
                {"policy": "nightly", "model_id": MODEL, "status": "failed", "stage": "training", "progress": 0.4,
                 "trigger": {"kind": "manual"}, "error": "training subprocess exited with -9",
                 "timings": {"dataset_s": 1.2}, "created_at": now - timedelta(hours=1),
                 "started_at": now - timedelta(hours=1), "finished_at": now - timedelta(minutes=58)},
            )
        )  # fmt: skip
    reg = ModelRegistry(eng)
    base = reg.ensure_base(MODEL, "/models/base")
    adapter = tmp / "adapter-v1"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    v1 = reg.register(MODEL, "/models/base", adapter_path=str(adapter), parent_id=base.id, job_id=ok_job,
                      policy="nightly", dataset_hash="abc123", gate=gate)  # fmt: skip
    with eng.begin() as c:
        c.execute(update(retrain_jobs).where(retrain_jobs.c.id == ok_job).values(version_id=v1.id))
    fs = FilesystemPromotionTarget(TargetSettings(name="serving", type="filesystem", path=str(tmp / "serving")))
    reg.promote(v1.id, [fs], actor="driftloop", reason="gate passed")
    bad = decide({"heldout": (champ, champ)}, GateSettings(n_bootstrap=200)).to_dict()
    assert not bad["promote"]
    v2 = reg.register(MODEL, "/models/base", adapter_path=None, parent_id=v1.id, job_id=failed_job, gate=bad)
    reg.set_status(v2.id, "rejected", actor="driftloop", reason="gate failed")
    reg.rollback(MODEL, [fs], actor="oncall", reason="users complain about v1")


@pytest.fixture(scope="module")
def scenario(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    from driftloop.ingest.writer import Batch, BatchWriter
    from driftloop.jobs import JobContext, run_job
    from driftloop.monitor.alerts.engine import AlertEvaluationJob
    from driftloop.monitor.check import DriftCheckJob
    from driftloop.store.db import migrate
    from driftloop.store.scores import Score, record_scores
    from tests.alpaca import load, now_minus, store_records, to_log_records
    from tests.conftest import create_database, drop_database

    tmp = tmp_path_factory.mktemp("dashboards")
    url = create_database(pg_admin_url)
    try:
        migrate(url)
        gpt4, alpaca = load("gpt4_1106_preview"), load("alpaca-7b")
        order = list(range(len(gpt4)))
        random.Random(3).shuffle(order)
        # the serving model switches from gpt-4 answers to alpaca-7b answers for the same prompts after 2 windows
        rows = [gpt4[i] for i in order[: 2 * WINDOW]] + [alpaca[i] for i in order[: 2 * WINDOW]]
        start = now_minus(5)
        recs = to_log_records(rows, start=start, step=timedelta(seconds=20), model_id=MODEL, prefix="dq")
        for i, r in enumerate(recs):  # every 4th record has a (short) reference answer: ROUGE-L and BLEU
            if i % 4 == 0:
                r["reference"] = " ".join(gpt4[order[i % (2 * WINDOW)]]["output"].split()[:40])
        other = to_log_records([gpt4[i] for i in order[-WINDOW:]], start=start + timedelta(minutes=30),
                               step=timedelta(seconds=30), model_id=OTHER, prefix="ob", seed=1)  # fmt: skip
        assert store_records(url, recs + other) == len(recs) + len(other)
        eng = create_engine(url)
        now = datetime.now(UTC)
        with eng.begin() as c:  # a uniform human review slice and estimator scores: quality.estimate per window
            record_scores(c, [Score(r["request_id"], "human_review", r["feedback"]["score"], metadata={"slice": "uniform"})
                              for r in recs[::4]]
                          + [Score(r["request_id"], "estimator:v1", 0.25 + 0.5 * r["feedback"]["score"]) for r in recs])
        BatchWriter(eng, "driftloop").write(Batch(rejects=_rejects(now), offsets={("logs", 0): 4812, ("logs", 1): 5007,
                                                                                   ("logs", 2): 0}))  # fmt: skip
        s = load_settings(
            None, database={"url": url},
            monitor={"window": {"kind": "count", "size": WINDOW}, "reference": {"kind": "previous", "windows": 1},
                     "min_window_size": 50, "embeddings": {"enabled": False}, "language_sample": 0,
                     "text_sample": 200, "reports": True, "reports_dir": str(tmp / "reports")},
            alerts={"rules": [
                {"name": "quality-drop", "condition": "quality.feedback_positive_rate < 0.3", "windows": 1, "of": 1,
                 "severity": "critical"},
                {"name": "dataset-drift", "condition": "drift.drifted == 1", "windows": 1, "of": 1},
            ]},
        )  # fmt: skip
        ctx = JobContext(s, eng, "test:dashboards")
        assert run_job("drift_check", lambda c: len(DriftCheckJob(c.settings, c.engine).run_once()), ctx) == "succeeded"
        assert run_job("alert_evaluation", lambda c: len(AlertEvaluationJob(c.settings, c.engine).run_once()),
                       ctx) == "succeeded"  # fmt: skip

        def broken(_: JobContext) -> None:
            raise RuntimeError("retention: disk full")

        assert run_job("retention", broken, ctx) == "failed"
        _registry(eng, tmp, now)
        with eng.connect() as c:
            fired = c.execute(text("SELECT rule FROM alerts WHERE model_id = :m"), {"m": MODEL}).scalars().all()
            assert "quality-drop" in fired, fired
            assert c.execute(text("SELECT count(*) FROM monitor_windows WHERE report_path IS NOT NULL")).scalar()
            first = c.execute(text("SELECT min(ts) FROM interactions")).scalar()
        eng.dispose()
        tr = TimeRange(first - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1))
        yield Scenario(url, tr, [MODEL, OTHER])
    finally:
        drop_database(pg_admin_url, url)


# ------------------------------------------------------------------------------------------ panel queries
NUMERIC = (int, float, Decimal)
TIME_PANELS = {"timeseries", "state-timeline", "status-history", "heatmap", "trend", "candlestick"}


def _queries(d: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any], dict[str, Any] | None]]:
    """``(kind, where, target, panel)`` for every panel target and annotation query of a dashboard."""
    for p in iter_panels(d["panels"]):
        for t in p.get("targets") or []:
            yield "panel", f"panel {p['id']} {p['title']!r} ({p['type']}) {t['refId']}", t, p
    for a in d["annotations"]["list"]:
        if "target" in a:
            yield "annotation", f"annotation {a['name']!r}", a["target"], None


def _problems(kind: str, target: dict[str, Any], panel: dict[str, Any] | None, cols: list[str],
              rows: list[tuple[Any, ...]]) -> list[str]:  # fmt: skip
    """The generic expectations: rows, and the columns each panel type needs."""
    if not rows:
        return ["no rows"]
    out: list[str] = []
    col = {c: [r[i] for r in rows] for i, c in enumerate(cols)}

    def numeric(c: str) -> bool:
        vals = [v for v in col[c] if v is not None]
        return bool(vals) and all(isinstance(v, NUMERIC) and not isinstance(v, bool) for v in vals)

    if kind == "annotation":
        for need in ("time", "text"):
            if need not in col:
                out.append(f"annotation needs a {need!r} column, got {cols}")
        return out
    assert panel is not None
    ptype = panel["type"]
    if target["format"] == "time_series" or ptype in TIME_PANELS:
        if "time" not in col:
            return [f"a {ptype} query needs a 'time' column, got {cols}"]
        times = col["time"]
        if not all(isinstance(t, (datetime, date, *NUMERIC)) for t in times):
            out.append(f"'time' must be timestamps or epoch numbers, got {type(times[0]).__name__}")
        elif target["format"] == "time_series" and times != sorted(times):
            out.append("time series rows must be sorted by time (ORDER BY 1)")
        values = [c for c in cols if c not in ("time", "metric")]
        if not any(numeric(c) for c in values):
            out.append(f"no numeric value column among {values}")
    elif ptype in ("stat", "gauge", "bargauge", "piechart", "barchart", "histogram"):
        if not any(numeric(c) for c in cols):
            out.append(f"no numeric column in {cols}")
        x = (panel.get("options") or {}).get("xField")
        if x and x not in col:
            out.append(f"options.xField {x!r} is not a column of {cols}")
    elif not cols:
        out.append("no columns")
    # columns the panel refers to by name must exist; data links must have something to open
    for o in (panel.get("fieldConfig") or {}).get("overrides") or []:
        if o["matcher"]["id"] == "byName" and o["matcher"]["options"] not in col:
            out.append(f"override for column {o['matcher']['options']!r}, not in {cols}")
    for m in re.finditer(r"__data\.fields\.(\w+)", json.dumps(panel.get("fieldConfig") or {})):
        if m.group(1) not in col:
            out.append(f"data link uses ${{__data.fields.{m.group(1)}}}, not a column of {cols}")
        elif not any(v for v in col[m.group(1)]):
            out.append(f"data link column {m.group(1)!r} is empty in every row")
    return out


def _run(conn: Any, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one query as Grafana does: plain SQL, no client-side placeholders (``%`` is just a character)."""
    with conn.cursor() as cur:
        cur.execute(sql)
        return [c.name for c in cur.description or []], list(cur.fetchall())


@pytest.mark.parametrize("selection", ["all", "one", "unnamed-workload"])
@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_every_query_runs_and_returns_what_its_panel_needs(scenario: Scenario, path: Path, selection: str) -> None:
    d = _dash(path)
    failures: list[str] = []
    dsn = make_url(scenario.url).set(drivername="postgresql").render_as_string(hide_password=False)
    # autocommit: a failing query does not abort the others; read-only: a panel must never write
    with psycopg.connect(dsn, autocommit=True, options="-c default_transaction_read_only=on") as conn:
        # the variables' own queries first: they give what "All" expands to
        options: dict[str, list[str]] = {}
        for v in d["templating"]["list"]:
            if v["type"] == "query":  # a variable's query sees those above it at All (workload reads $model)
                above = dashboard_variables(d, {"model": ALL}, options)
                cols, rows = _run(conn, expand(v["query"], scenario.time_range, above))
                values = [r[cols.index("__value")] if "__value" in cols else r[0] for r in rows]
                assert values, f"variable {v['name']} has no options"
                options[v["name"]] = [str(x) for x in values]
        assert set(scenario.models) <= set(options["model"]), options["model"]
        assert options["workload"] == ["(none)"], "no workload is named here: one unnamed stream"
        selected: dict[str, Any] = {"model": ALL if selection == "all" else [MODEL]}
        if selection == "unnamed-workload":
            selected = {"model": ALL, "workload": ["(none)"]}
        variables = dashboard_variables(d, selected, options)
        n = 0
        for kind, where, target, panel in _queries(d):
            n += 1
            try:
                cols, rows = _run(conn, expand(target["rawSql"], scenario.time_range, variables))
            except Exception as e:
                failures.append(f"{where}: {type(e).__name__}: {str(e).splitlines()[0]}")
                continue
            failures += [f"{where}: {p}" for p in _problems(kind, target, panel, cols, rows)]
        assert n >= 5
    assert not failures, f"{path.name} with model={selection}:\n" + "\n".join(failures)


def _panel(d: dict[str, Any], title: str) -> dict[str, Any]:
    (p,) = [p for p in iter_panels(d["panels"]) if p["title"] == title]
    return p


def test_drift_verdict_panels_show_driftloops_threshold_and_groups(scenario: Scenario) -> None:
    """The verdict panels read the verdict's own numbers (monitor_windows.drift_share, n_groups_drifted /
    n_groups), never a threshold written into the dashboard; windows without them (checked before migration
    0010) still show their score."""
    d = _dash(DASH_DIR / "drift.json")
    verdict, series = _panel(d, "Latest drift verdict"), _panel(d, "Dataset drift score per window")
    steps = verdict["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 1], "the stat colours the verdict (0/1), not the score"
    dsn = make_url(scenario.url).set(drivername="postgresql").render_as_string(hide_password=False)
    variables = dashboard_variables(d, {"model": [MODEL]}, {"model": scenario.models})
    with psycopg.connect(dsn, autocommit=True) as conn:
        # the newest ok window of MODEL with a group verdict (filled in where the monitor left it empty)
        conn.execute("UPDATE monitor_windows SET n_groups = 9, n_groups_drifted = CASE WHEN drifted THEN 5 ELSE 1 END,"
                     " drift_share = 0.45 WHERE n_groups IS NULL AND model_id = %s AND status = 'ok'", (MODEL,))  # fmt: skip
        newest = conn.execute("SELECT n_groups_drifted, n_groups, drift_share, drifted FROM monitor_windows WHERE "
                              "model_id = %s AND status = 'ok' ORDER BY window_end DESC LIMIT 1", (MODEL,)).fetchone()  # fmt: skip
        shares = conn.execute("SELECT drift_share FROM monitor_windows WHERE model_id = %s AND status = 'ok' "
                              "ORDER BY window_end", (MODEL,)).fetchall()  # fmt: skip
        cols, rows = _run(conn, expand(verdict["targets"][0]["rawSql"], scenario.time_range, variables))
        assert newest is not None and rows == [(f"{MODEL}: {newest[0]}/{newest[1]} groups, threshold "
                                                f"{newest[2]:.2f}", int(newest[3]))]  # fmt: skip
        cols, rows = _run(conn, expand(series["targets"][0]["rawSql"], scenario.time_range, variables))
    threshold = [r[cols.index("value")] for r in rows if r[cols.index("metric")] == f"{MODEL} threshold"]
    assert threshold == [s for (s,) in shares] and len(threshold) >= 2
    assert {o["matcher"]["options"] for o in series["fieldConfig"]["overrides"]} == {".* threshold$"}


# ------------------------------------------------------------------------------------------ push
PG_URL = "postgresql+psycopg://driftloop:urlpw@db.internal:5433/driftloop?sslmode=require"


def test_push_upserts_datasource_folder_and_dashboards_idempotently(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFANA_TOKEN", "glsa_test")
    monkeypatch.setenv("DRIFTLOOP_PG_PASSWORD", "from-env")
    with GrafanaRecorder("glsa_test") as g:
        lines: list[str] = []
        res = push(make_settings(PG_URL, grafana={"url": g.url}), DASH_DIR, echo=lines.append)
        assert not res.failed and lines == res.lines
        assert all(r.headers.get("Authorization") == "Bearer glsa_test" for r in g.requests)
        (ds,) = [r.body for r in g.calls("POST", "/api/datasources")]
        assert ds == {"uid": "driftloop-pg", "name": "driftloop-postgres", "type": "grafana-postgresql-datasource",
                      "access": "proxy", "url": "db.internal:5433", "user": "driftloop", "database": "driftloop",
                      "isDefault": False, "secureJsonData": {"password": "from-env"},
                      "jsonData": {"database": "driftloop", "sslmode": "require", "postgresVersion": 1600,
                                   "timescaledb": False}}  # fmt: skip
        (folder,) = [r.body for r in g.calls("POST", "/api/folders")]
        assert folder == {"title": "driftloop", "uid": "driftloop"}
        saves = [r.body for r in g.calls("POST", "/api/dashboards/db")]
        assert sorted(b["dashboard"]["uid"] for b in saves) == sorted(_dash(f)["uid"] for f in FILES)
        for b in saves:
            assert b["overwrite"] is True and b["folderUid"] == "driftloop" and b["dashboard"]["id"] is None
            assert b["dashboard"]["panels"] and b["message"].startswith("driftloop dashboards push")
        assert sum("created" in line for line in lines) == 1 + 1 + len(FILES)

        # again: the datasource is updated in place, the folder reused, each dashboard gets a new version
        lines2: list[str] = []
        push(make_settings(PG_URL, grafana={"url": g.url}), DASH_DIR, echo=lines2.append)
        assert len(g.calls("POST", "/api/datasources")) == 1 and len(g.calls("POST", "/api/folders")) == 1
        (put,) = g.calls("PUT", "/api/datasources/uid/driftloop-pg")
        assert put.body["url"] == "db.internal:5433" and put.body["id"] == g.state.datasources["driftloop-pg"]["id"]
        assert len(g.state.datasources) == 1 and len(g.state.folders) == 1 and len(g.state.dashboards) == len(FILES)
        assert {e["version"] for e in g.state.dashboards.values()} == {2}
        assert not any("created" in line for line in lines2) and "folder 'driftloop': exists (uid driftloop)" in lines2
        assert sum(": updated" in line for line in lines2) == 1 + len(FILES)

        # the CLI does the same and prints it (on its own app: the root CLI also builds everyone else's commands)
        monkeypatch.setenv("DRIFTLOOP_DATABASE__URL", PG_URL)
        app = typer.Typer()
        register(app)
        out = CliRunner().invoke(app, ["dashboards", "push", "--url", g.url])
        assert out.exit_code == 0, out.output
        assert "dashboard driftloop-drift (driftloop / Drift overview): updated, version 3" in out.output
        assert len(g.state.dashboards) == len(FILES)
        from driftloop.cli import app as root

        assert "dashboards" in [g.name for g in root.registered_groups], "not in the root CLI"


def test_push_points_dashboards_at_a_renamed_datasource(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRIFTLOOP_PG_PASSWORD", raising=False)
    with GrafanaRecorder("t0k") as g:
        push(make_settings(PG_URL, grafana={"url": g.url, "token": "t0k", "datasource_uid": "prod-pg", "folder": "LLM ops"}), DASH_DIR, echo=lambda _: None)
        ds = g.state.datasources["prod-pg"]
        assert ds["secureJsonFields"] == {"password": True}  # from database.url when the env var is unset
        assert [f["uid"] for f in g.state.folders.values()] == ["llm-ops"]
        body = json.dumps([e["dashboard"] for e in g.state.dashboards.values()])
        assert '"uid": "driftloop-pg"' not in body and '"uid": "prod-pg"' in body
        # a Grafana that provisions the dashboards from files (docker compose) keeps them; push says so
        g.state.dashboards["driftloop-drift"]["provisioned"] = True
        g.state.datasources["prod-pg"]["readOnly"] = True
        lines: list[str] = []
        res = push(make_settings(PG_URL, grafana={"url": g.url, "token": "t0k", "datasource_uid": "prod-pg"}), DASH_DIR, echo=lines.append)
        assert res.skipped == ["driftloop-drift"] and not res.failed
        assert "datasource prod-pg: provisioned from a file in this Grafana (read-only), left as is" in lines
        assert not g.calls("PUT")


def test_push_errors_say_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    with pytest.raises(DashboardError, match=r"grafana\.url is not set"):
        push(make_settings(PG_URL, grafana={"url": None}), DASH_DIR)
    with pytest.raises(DashboardError, match=r"no Grafana token: set \$GRAFANA_TOKEN"):
        push(make_settings(PG_URL, grafana={"url": "http://127.0.0.1:9"}), DASH_DIR)
    with GrafanaRecorder("right") as g:
        with pytest.raises(DashboardError, match=r"refused the credentials.*GRAFANA_TOKEN"):
            push(make_settings(PG_URL, grafana={"url": g.url, "token": "wrong"}), DASH_DIR, echo=lambda _: None)
        assert not g.calls("POST")
        with pytest.raises(DashboardError, match=r"no \*\.json dashboards"):
            push(make_settings(PG_URL, grafana={"url": g.url, "token": "right"}), tmp_path, echo=lambda _: None)
    with pytest.raises(DashboardError, match=r"cannot reach Grafana at http://127\.0\.0\.1:9"):
        push(make_settings(PG_URL, grafana={"url": "http://127.0.0.1:9", "token": "x", "timeout_s": 2}), DASH_DIR, echo=lambda _: None)
    sqlite = load_settings(None, database={"url": "sqlite:///x.db"}, grafana={"url": "http://g:3000", "token": "t"})
    with pytest.raises(DashboardError, match=r"set grafana\.datasource_url"):
        datasource_payload(sqlite)
    assert load_dashboards(DASH_DIR)


@pytest.mark.external
@pytest.mark.skipif(
    not os.environ.get("GRAFANA_URL"), reason="set GRAFANA_URL (and GRAFANA_TOKEN) to push to a real Grafana"
)
def test_push_to_a_real_grafana() -> None:
    from grafana_client import GrafanaApi

    from tests.conftest import PG_ADMIN

    # the datasource points at the test PostgreSQL unless DRIFTLOOP_GRAFANA__DATASOURCE_URL etc. say otherwise
    s = load_settings(None, database={"url": PG_ADMIN}, grafana={"url": os.environ["GRAFANA_URL"]})
    first = push(s, DASH_DIR, echo=print)
    second = push(s, DASH_DIR, echo=print)
    api = GrafanaApi.from_url(os.environ["GRAFANA_URL"], credential=os.environ.get("GRAFANA_TOKEN"))
    for f in FILES:
        uid = _dash(f)["uid"]
        assert uid not in first.failed
        got = api.dashboard.get_dashboard(uid)
        assert got["dashboard"]["uid"] == uid and got["meta"]["folderTitle"] == s.grafana.folder
    assert not [line for line in second.lines if "created" in line]
