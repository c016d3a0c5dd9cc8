"""``driftloop dashboards list|validate|push``: the Grafana dashboards in ``dashboards/`` and their datasource.

The dashboards read driftloop's PostgreSQL tables directly through one datasource (uid ``driftloop-pg``,
type ``grafana-postgresql-datasource``). A Grafana started by ``docker compose`` provisions both from files;
``push`` puts them into any other running Grafana through its HTTP API (``grafana-client``), idempotently:
the datasource is created or updated by uid, the folder is created once, each dashboard is saved with
``overwrite: true`` (same uid -> a new version of the same dashboard, never a duplicate).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from driftloop.settings import Settings

DATASOURCE_TYPE = "grafana-postgresql-datasource"
DATASOURCE_UID = "driftloop-pg"  # the uid the dashboard files reference
SCHEMA_FILE = Path("schema") / "dashboard.schema.json"
# Core panel types of Grafana 11 (no plugin needed).
PANEL_TYPES = frozenset({
    "timeseries", "table", "stat", "gauge", "bargauge", "barchart", "piechart", "heatmap", "histogram",
    "state-timeline", "status-history", "text", "logs", "news", "dashlist", "alertlist", "annolist", "nodeGraph",
    "traces", "flamegraph", "trend", "xychart", "candlestick", "canvas", "geomap", "datagrid", "row",
})  # fmt: skip
GRID_COLUMNS = 24


class DashboardError(Exception):
    """A problem the user must fix (the message says how)."""


# ------------------------------------------------------------------------------------------ files
def default_dir() -> Path:
    """``dashboards/`` of a source checkout, else ``./dashboards`` (the Docker image's /app/dashboards)."""
    here = Path(__file__).resolve().parents[1] / "dashboards"
    return here if here.is_dir() else Path.cwd() / "dashboards"


def load_dashboards(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(file, dashboard)`` for every ``*.json`` directly in ``directory``, sorted by file name."""
    if not directory.is_dir():
        raise DashboardError(f"no dashboards folder at {directory}: pass --dir PATH (the repository's dashboards/)")
    out = []
    for f in sorted(directory.glob("*.json")):
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DashboardError(f"{f}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise DashboardError(f"{f}: a dashboard must be a JSON object")
        out.append((f, d))
    if not out:
        raise DashboardError(f"no *.json dashboards in {directory}")
    return out


def load_schema(directory: Path) -> dict[str, Any]:
    """The pinned JSON Schema ``schema/dashboard.schema.json`` under ``directory``."""
    path = directory / SCHEMA_FILE
    if not path.is_file():
        raise DashboardError(f"the dashboard schema is missing at {path}")
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for p in panels:
        yield p
        yield from iter_panels(p.get("panels") or [])


def _overlaps(a: Mapping[str, int], b: Mapping[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]
    )


def _grid_problems(panels: list[dict[str, Any]], where: str) -> list[str]:
    out = []
    placed: list[tuple[str, Mapping[str, int]]] = []
    for p in panels:
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")):
            continue  # the schema reports it
        name = f"panel {p.get('id')} ({p.get('title')!r})"
        if g["x"] + g["w"] > GRID_COLUMNS:
            out.append(f"{where}{name}: gridPos x + w = {g['x'] + g['w']} > {GRID_COLUMNS}")
        for other, og in placed:
            if _overlaps(g, og):
                out.append(f"{where}{name} overlaps {other}")
        placed.append((name, g))
        if p.get("type") == "row" and p.get("panels"):
            out += _grid_problems(p["panels"], f"{where}row {p.get('title')!r}: ")
    return out


def _references_datasource(obj: Any, where: str) -> list[str]:
    ds = obj.get("datasource") if isinstance(obj, dict) else None
    if isinstance(ds, dict) and ds.get("uid") not in (DATASOURCE_UID, "-- Grafana --", "-- Mixed --"):
        return [f"{where}: datasource uid {ds.get('uid')!r}, expected {DATASOURCE_UID!r}"]
    return []


def lint(dash: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """Problems of one dashboard: the pinned schema, then what a schema cannot say."""
    import jsonschema

    v = jsonschema.Draft202012Validator(schema)
    out = [f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
           for e in sorted(v.iter_errors(dash), key=lambda e: list(map(str, e.absolute_path)))]  # fmt: skip
    raw = dash.get("panels")
    panels: list[dict[str, Any]] = raw if isinstance(raw, list) else []
    seen: dict[int, str] = {}
    for p in iter_panels(panels):
        pid, title = p.get("id"), p.get("title")
        if isinstance(pid, int):
            if pid in seen:
                out.append(f"panel id {pid} is used by {seen[pid]!r} and {title!r}: ids must be unique")
            seen[pid] = str(title)
        if p.get("type") not in PANEL_TYPES:
            out.append(f"panel {pid} ({title!r}): type {p.get('type')!r} is not a core Grafana panel type")
        out += _references_datasource(p, f"panel {pid} ({title!r})")
        refs = [t.get("refId") for t in p.get("targets") or []]
        if len(refs) != len(set(refs)):
            out.append(f"panel {pid} ({title!r}): refIds {refs} are not unique")
        for t in p.get("targets") or []:
            out += _references_datasource(t, f"panel {pid} ({title!r}) target {t.get('refId')}")
            out += _sql_problems(str(t.get("rawSql", "")), dash, f"panel {pid} ({title!r})")
    out += _grid_problems(panels, "")
    for a in (dash.get("annotations") or {}).get("list") or []:
        if a.get("builtIn"):
            continue
        out += _references_datasource(a, f"annotation {a.get('name')!r}")
        out += _sql_problems(str((a.get("target") or {}).get("rawSql", "")), dash, f"annotation {a.get('name')!r}")
    for var in (dash.get("templating") or {}).get("list") or []:
        out += _references_datasource(var, f"variable {var.get('name')!r}")
    return out


def _sql_problems(sql: str, dash: Mapping[str, Any], where: str) -> list[str]:
    out = []
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
    for name, var in variables.items():
        if (var.get("multi") or var.get("includeAll")) and re.search(rf"'\$(\{{{name}\}}|{name}\b)'", sql):
            out.append(f"{where}: '${name}' quotes a multi-value variable; Grafana quotes each value, "
                       f"write IN (${name})")  # fmt: skip
    known = set(variables) | {"__interval", "__interval_ms", "__from", "__to"}
    for m in re.finditer(r"\$\{?(\w+)", sql):
        name = m.group(1)
        if not name.startswith("__") and name not in known:
            out.append(f"{where}: ${name} is not a variable of this dashboard")
    return out


def validate_dir(directory: Path) -> dict[Path, list[str]]:
    """Problems per dashboard file (empty lists: all good), including uids/titles used twice."""
    schema = load_schema(directory)
    found = load_dashboards(directory)
    out = {f: lint(d, schema) for f, d in found}
    for key in ("uid", "title"):
        owners: dict[Any, Path] = {}
        for f, d in found:
            if d.get(key) in owners:
                out[f].append(f"{key} {d.get(key)!r} is also used by {owners[d.get(key)].name}")
            owners.setdefault(d.get(key), f)
    return out


# ------------------------------------------------------------------------------------------ push
def grafana_token(settings: Settings) -> str | None:
    """``grafana.token``, else the environment variable named by ``grafana.token_env``."""
    g = settings.grafana
    if g.token:
        return g.token
    return (os.environ.get(g.token_env) or None) if g.token_env else None


def datasource_payload(settings: Settings) -> dict[str, Any]:
    """The PostgreSQL datasource as Grafana should reach the database (``grafana.datasource_*``, else database.url)."""
    from sqlalchemy.engine import make_url

    g = settings.grafana
    url = make_url(settings.database.url)
    is_pg = url.get_backend_name() == "postgresql"
    host = g.datasource_url or (f"{url.host or 'localhost'}:{url.port or 5432}" if is_pg else None)
    user = g.datasource_user or (url.username if is_pg else None)
    database = g.datasource_database or (url.database if is_pg else None)
    if not (host and user and database):
        raise DashboardError(
            f"cannot tell Grafana where PostgreSQL is (database.url is {url.get_backend_name()}): set "
            "grafana.datasource_url (host:port as Grafana sees it), grafana.datasource_user and "
            "grafana.datasource_database"
        )
    password = (os.environ.get(g.datasource_password_env) if g.datasource_password_env else None) or url.password
    ssl = url.query.get("sslmode", "disable")
    payload: dict[str, Any] = {
        "uid": g.datasource_uid, "name": g.datasource_name, "type": DATASOURCE_TYPE, "access": "proxy",
        "url": host, "user": user, "database": database, "isDefault": False,
        "jsonData": {"database": database, "sslmode": ssl if isinstance(ssl, str) else ssl[0],
                     "postgresVersion": 1600, "timescaledb": False},
    }  # fmt: skip
    if password:
        payload["secureJsonData"] = {"password": str(password)}
    return payload


def _retarget(obj: Any, uid: str) -> Any:
    """Point every driftloop-pg datasource reference at ``uid`` (a renamed datasource)."""
    if isinstance(obj, dict):
        if obj.get("type") == DATASOURCE_TYPE and obj.get("uid") == DATASOURCE_UID:
            return {**obj, "uid": uid}
        return {k: _retarget(v, uid) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_retarget(v, uid) for v in obj]
    return obj


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:40] or "driftloop"


@dataclass
class PushResult:
    """What ``push`` did: one line per object; dashboards it could not save or left to file provisioning."""

    lines: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _status(e: Exception) -> int | None:
    return getattr(e, "status_code", None)


def _explain(e: Exception, url: str) -> str:
    code = _status(e)
    if code == 401:
        return (f"Grafana at {url} refused the credentials (401): set a service-account token (role Editor or "
                "Admin) in grafana.token or in the variable named by grafana.token_env (default GRAFANA_TOKEN)")  # fmt: skip
    if code == 403:
        return f"the token may not do this at {url} (403): give the service account the Admin role ({e})"
    if code in (0, None):
        return f"cannot reach Grafana at {url}: {e} (check grafana.url and that Grafana is running)"
    return f"Grafana at {url} answered {code}: {e}"


def push(settings: Settings, directory: Path, *, api: Any = None, echo: Callable[[str], None] = print) -> PushResult:
    """Upsert the datasource, the folder and every dashboard of ``directory`` into Grafana."""
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaException

    g = settings.grafana
    token = _push_token(settings)
    dashboards = load_dashboards(directory)
    payload = datasource_payload(settings)
    res = PushResult()

    def say(line: str) -> None:
        res.lines.append(line)
        echo(line)

    if api is None:
        api = GrafanaApi.from_url(g.url, credential=token, timeout=g.timeout_s)
    try:
        health = api.client.GET("/health")  # GET /api/health: no auth needed, says whether Grafana's DB is ok
        say(f"grafana {g.url}: version {health.get('version', '?')}, database {health.get('database', '?')}")
        _push_datasource(api, settings, payload, say)
        folder = _push_folder(api, settings, say)
        _push_dashboards(api, settings, dashboards, folder, res, say)
    except (GrafanaException, OSError) as e:  # OSError: connection refused, DNS, TLS (niquests errors)
        raise DashboardError(_explain(e, str(g.url))) from None
    return res


def _push_token(settings: Settings) -> str | None:
    """The Grafana token; DashboardError when ``grafana.url`` is unset or neither a token nor basic auth is given."""
    g = settings.grafana
    if not g.url:
        raise DashboardError("grafana.url is not set: add `grafana: {url: http://grafana:3000}` to the config, "
                             "set DRIFTLOOP_GRAFANA__URL or pass --url")  # fmt: skip
    token = grafana_token(settings)
    has_basic = "@" in g.url.split("://", 1)[1].split("/", 1)[0]
    if not token and not has_basic:
        raise DashboardError(f"no Grafana token: set ${g.token_env or 'GRAFANA_TOKEN'} (grafana.token_env) or "
                             "grafana.token to a service-account token (Administration > Users and access > "
                             "Service accounts, role Editor or Admin)")  # fmt: skip
    return token


def _push_datasource(api: Any, settings: Settings, payload: dict[str, Any], say: Callable[[str], None]) -> None:
    """Create or update the datasource by uid; one provisioned from a file (read-only) is left as is."""
    from grafana_client.client import GrafanaException

    g = settings.grafana
    try:
        existing = api.datasource.get_datasource_by_uid(g.datasource_uid)
    except GrafanaException as e:
        if _status(e) != 404:
            raise
        existing = None
    if existing is None:
        api.datasource.create_datasource(payload)
        say(f"datasource {g.datasource_uid} ({g.datasource_name}): created -> {payload['url']}/"
            f"{payload['database']}")  # fmt: skip
    elif existing.get("readOnly"):
        say(f"datasource {g.datasource_uid}: provisioned from a file in this Grafana (read-only), left as is")
    else:
        if existing.get("type") != DATASOURCE_TYPE:
            raise DashboardError(f"datasource uid {g.datasource_uid} exists with type {existing.get('type')!r}, "
                                 f"not {DATASOURCE_TYPE}: set grafana.datasource_uid to another uid")  # fmt: skip
        api.datasource.update_datasource_by_uid(g.datasource_uid, {**payload, "id": existing.get("id")})
        say(f"datasource {g.datasource_uid} ({g.datasource_name}): updated -> {payload['url']}/"
            f"{payload['database']}")  # fmt: skip


def _push_folder(api: Any, settings: Settings, say: Callable[[str], None]) -> Any:
    """The folder titled ``grafana.folder``, created if missing."""
    g = settings.grafana
    folders = api.folder.get_all_folders() or []
    folder = next((f for f in folders if f.get("title") == g.folder), None)
    if folder is None:
        folder = api.folder.create_folder(g.folder, uid=_slug(g.folder))
        say(f"folder {g.folder!r}: created (uid {folder.get('uid')})")
    else:
        say(f"folder {g.folder!r}: exists (uid {folder.get('uid')})")
    return folder


def _push_dashboards(api: Any, settings: Settings, dashboards: list[tuple[Path, dict[str, Any]]], folder: Any,
                     res: PushResult, say: Callable[[str], None]) -> None:  # fmt: skip
    """Save every dashboard by uid into ``folder``; provisioned ones are skipped, refused ones recorded as failed."""
    from grafana_client.client import GrafanaException

    g = settings.grafana
    known = {h.get("uid") for h in api.search.search_dashboards(type_="dash-db", tag="driftloop") or []}
    for path, d in dashboards:
        body = _retarget(copy.deepcopy(d), g.datasource_uid)
        body["id"] = None
        try:
            out = api.dashboard.update_dashboard({"dashboard": body, "folderUid": folder.get("uid"),
                                                  "overwrite": True,
                                                  "message": f"driftloop dashboards push ({path.name})"})  # fmt: skip
        except GrafanaException as e:
            if _status(e) == 400 and "provisioned" in str(e).lower():
                res.skipped.append(str(d.get("uid")))
                say(f"dashboard {d.get('uid')}: provisioned from files in this Grafana (it loads dashboards/ "
                    "itself), left as is")  # fmt: skip
                continue
            if _status(e) in (400, 403, 412):
                res.failed.append(str(d.get("uid")))
                say(f"dashboard {d.get('uid')}: NOT saved: {e}")
                continue
            raise
        action = "updated" if d.get("uid") in known else "created"
        say(f"dashboard {d.get('uid')} ({d.get('title')}): {action}, version {out.get('version', '?')} -> "
            f"{g.url}{out.get('url', '')}")  # fmt: skip


# ------------------------------------------------------------------------------------------ CLI
dashboards_app = typer.Typer(help="Grafana dashboards: list, validate, push to a running Grafana.",
                             no_args_is_help=True)  # fmt: skip
DirOpt = Annotated[
    Path | None,
    typer.Option("--dir", help="Folder of the dashboard JSON files (default: the repository's dashboards/)."),
]


def _fail(msg: str, code: int = 1) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


@dashboards_app.command("list")
def list_cmd(directory: DirOpt = None) -> None:
    """List the dashboards: uid, title, number of panels, file."""
    d = directory or default_dir()
    try:
        found = load_dashboards(d)
    except DashboardError as e:
        _fail(str(e))
        return
    for f, dash in found:
        n = sum(1 for p in iter_panels(dash.get("panels") or []) if p.get("type") != "row")
        typer.echo(f"{dash.get('uid', '?'):<22} {dash.get('title', '?'):<34} {n:>3} panels  {f}")


@dashboards_app.command("validate")
def validate_cmd(directory: DirOpt = None) -> None:
    """Check every dashboard against the pinned schema and driftloop's rules; exit 1 on any problem."""
    try:
        problems = validate_dir(directory or default_dir())
    except DashboardError as e:
        _fail(str(e))
        return
    bad = 0
    for f, ps in problems.items():
        typer.echo(f"{f}: {'OK' if not ps else f'{len(ps)} problem(s)'}")
        for p in ps:
            typer.echo(f"  {p}")
        bad += len(ps)
    if bad:
        raise typer.Exit(1)


@dashboards_app.command("push")
def push_cmd(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="YAML settings file (default: $DRIFTLOOP_CONFIG, else built-in defaults)."),
    ] = None,
    directory: DirOpt = None,
    url: Annotated[str | None, typer.Option("--url", help="Grafana URL (overrides grafana.url).")] = None,
) -> None:
    """Create or update the datasource, the folder and the dashboards in the Grafana at grafana.url."""
    from driftloop.clikit import get_settings

    s = get_settings(config, **({"grafana": {"url": url}} if url else {}))
    try:
        res = push(s, directory or default_dir(), echo=typer.echo)
    except DashboardError as e:
        _fail(str(e))
        return
    if res.failed:
        _fail(f"{len(res.failed)} dashboard(s) not saved: {', '.join(res.failed)}")


def register(app: typer.Typer) -> None:
    """Add ``driftloop dashboards`` to the root CLI."""
    app.add_typer(dashboards_app, name="dashboards")
