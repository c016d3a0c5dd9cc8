"""Expand a Grafana PostgreSQL query the way Grafana 11 does, so that tests can run it on a real database.

Three stages, in Grafana's order:

1. **Template variables** (frontend ``templateSrv.replace`` with the SQL datasources' ``interpolateVariable``):
   ``$var``, ``${var}``, ``[[var]]``, ``${var:format}``. Without a format, a variable that is multi-value or has
   an All option becomes a list of quoted literals (``'a','b'``, quotes doubled), so queries write
   ``IN ($model)``; a plain variable is inserted with its single quotes doubled (``'$api_url'``). All without
   a custom all value expands to every option; a custom all value is inserted raw. Built-ins: ``$__interval``,
   ``$__interval_ms``, ``${__from}``, ``${__to}`` (epoch ms; ``:date:iso``/``:date:seconds``).
2. **sqleng globals** (backend): ``$__interval_ms``, ``$__interval``, ``$__unixEpochFrom()``, ``$__unixEpochTo()``.
3. **Macros** of ``pkg/tsdb/grafana-postgresql-datasource/macros.go``: every ``$name(args)`` (args may not contain
   ``)``), e.g. ``$__timeFilter(col)`` -> ``col BETWEEN '2026-01-02T03:04:05Z' AND '...'`` (RFC 3339, UTC),
   ``$__timeGroup(col, '5m'[, fill])`` -> ``floor(extract(epoch from col)/300)*300`` (``AS "time"`` for
   ``$__timeGroupAlias``, and for a ``$__timeGroup`` directly followed by a comma, as Grafana does for pre-5.3
   dashboards). An unknown macro is an error, as in Grafana.

Whatever still looks like a variable or macro afterwards (``$name``, ``${...}``) raises :class:`MacroError`:
Grafana would send it to PostgreSQL verbatim.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

ALL = "$__all"


class MacroError(ValueError):
    """A query Grafana would reject or send broken to PostgreSQL."""


@dataclass
class Variable:
    """A dashboard variable and its current value (``[ALL]`` or ``ALL`` selects the All option)."""

    name: str
    value: str | list[str]
    multi: bool = False
    include_all: bool = False
    options: list[str] = field(default_factory=list)  # what All expands to
    all_value: str | None = None  # the variable's custom all value

    def resolved(self) -> str | list[str]:
        """The value after All is expanded (a custom all value stays a raw string)."""
        v = self.value
        if v == ALL or v == [ALL]:
            if not self.include_all:
                raise MacroError(f"variable {self.name!r} has no All option but All is selected")
            if self.all_value:
                return self.all_value
            return list(self.options)
        return v


@dataclass(frozen=True)
class TimeRange:
    """The dashboard time range and the panel interval ($__interval)."""

    start: datetime
    end: datetime
    interval: timedelta | None = None  # default: computed like Grafana (range / max_data_points, >= 1m)
    max_data_points: int = 1000
    min_interval: timedelta = timedelta(minutes=1)  # the SQL datasources' default "Min time interval"

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise MacroError("time range bounds must be timezone-aware datetimes")
        if self.end <= self.start:
            raise MacroError(f"empty time range {self.start} .. {self.end}")

    def effective_interval(self) -> timedelta:
        if self.interval is not None:
            return self.interval
        raw_ms = (self.end - self.start) / timedelta(milliseconds=1) / self.max_data_points
        return max(timedelta(milliseconds=round_interval_ms(raw_ms)), self.min_interval)


# grafana/data rangeutil.roundInterval: (upper bound ms, rounded ms)
_ROUND = [(15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000), (3500, 2000),
          (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000), (45000, 30000), (90000, 60000),
          (210000, 120000), (450000, 300000), (750000, 600000), (1050000, 900000), (1500000, 1200000),
          (2700000, 1800000), (5400000, 3600000), (9000000, 7200000), (16200000, 10800000),
          (32400000, 21600000), (86400000, 43200000), (604800000, 86400000), (1814400000, 604800000),
          (3628800000, 2592000000)]  # fmt: skip


def round_interval_ms(ms: float) -> int:
    """Grafana's interval rounding (a "nice" step for range / max data points)."""
    for upper, rounded in _ROUND:
        if ms < upper:
            return rounded
    return 31536000000


def format_interval(d: timedelta) -> str:
    """gtime.FormatInterval: the largest whole unit, e.g. ``1m``, ``30s``, ``2h``, ``1d``, ``500ms``."""
    ms = int(d / timedelta(milliseconds=1))
    for unit, size in (("y", 31536000000), ("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000), ("ms", 1)):
        if ms >= size:
            return f"{ms // size}{unit}"
    return "1ms"


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_interval(text: str) -> float:
    """gtime.ParseInterval (seconds) for ``<n><unit>`` with unit ms, s, m, h, d, w or y."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", text.strip())
    if not m:
        raise MacroError(f"error parsing interval {text!r} (Grafana accepts e.g. '5m', '1h', '1d', '$__interval')")
    return float(m.group(1)) * _UNITS[m.group(2)]


def go_float(x: float) -> str:
    """Go's ``%v`` of a float64 for the values macros produce (``300``, ``0.5``)."""
    if math.isfinite(x) and x == int(x) and abs(x) < 1e21:
        return str(int(x))
    return repr(x)


def rfc3339(t: datetime) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: no trailing zeros in the fraction, ``Z`` suffix."""
    t = t.astimezone(UTC)
    frac = f".{t.microsecond:06d}".rstrip("0") if t.microsecond else ""
    return t.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"


# ----------------------------------------------------------------------------------------- stage 1: variables
# templateSrv's variable regex: $var | [[var(:fmt)]] | ${var(.fieldPath)(:fmt)}
_VAR_RE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}")


def _quote(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def _interpolate_sql(value: str | list[str], var: Variable) -> str:
    """SqlDatasource.interpolateVariable."""
    if isinstance(value, str):
        return _quote(value) if (var.multi or var.include_all) else value.replace("'", "''")
    return ",".join(_quote(v) for v in value)


def _format(value: str | list[str], fmt: str, name: str) -> str:
    vals = [value] if isinstance(value, str) else list(value)
    if fmt == "sqlstring":
        return ",".join(_quote(v) for v in vals)
    if fmt in ("csv", "raw", "text"):
        return ",".join(vals) if fmt != "text" else " + ".join(vals)
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in vals)
    if fmt == "doublequote":
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in vals)
    if fmt == "pipe":
        return "|".join(vals)
    if fmt == "regex":
        esc = [re.escape(v) for v in vals]
        return esc[0] if len(esc) == 1 else "(" + "|".join(esc) + ")"
    raise MacroError(f"${{{name}:{fmt}}}: format {fmt!r} is not one this helper knows")


def _builtin(name: str, fmt: str | None, tr: TimeRange) -> str | None:
    iv = tr.effective_interval()
    if name == "__interval" and fmt is None:
        return format_interval(iv)
    if name == "__interval_ms" and fmt is None:
        return str(int(iv / timedelta(milliseconds=1)))
    if name in ("__from", "__to"):
        t = tr.start if name == "__from" else tr.end
        if fmt in (None, "raw"):
            return str(int(t.timestamp() * 1000))
        if fmt == "date:iso" or fmt == "date":
            return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if fmt == "date:seconds":
            return str(int(t.timestamp()))
        raise MacroError(f"${{{name}:{fmt}}}: format not supported here")
    return None


def interpolate_variables(sql: str, variables: Mapping[str, Variable], tr: TimeRange) -> str:
    """Stage 1: what the Grafana frontend sends to the backend."""
    for name, var in variables.items():
        if (var.multi or var.include_all) and re.search(rf"'\$(\{{{name}\}}|{name}\b)'", sql):
            raise MacroError(f"'${name}' quotes a multi-value/All variable: Grafana already quotes each value "
                             f"(''a'',''b''); write IN (${name}) instead")  # fmt: skip

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6)
        if m.group(5):
            raise MacroError(f"{m.group(0)}: field paths of variables are not supported here")
        b = _builtin(name, fmt, tr)
        if b is not None:
            return b
        var = variables.get(name)
        if var is None:
            return m.group(0)  # unknown: Grafana leaves it (macros are expanded later; the rest fails the check)
        value = var.resolved()
        if (var.value == ALL or var.value == [ALL]) and var.all_value and fmt not in ("text", "percentencode"):
            return str(value)  # a custom all value is inserted raw
        return _interpolate_sql(value, var) if fmt is None else _format(value, fmt, name)

    return _VAR_RE.sub(repl, sql)


# ----------------------------------------------------------------------------------------- stages 2 and 3
def interpolate_globals(sql: str, tr: TimeRange) -> str:
    """Stage 2: sqleng.Interpolate."""
    iv = tr.effective_interval()
    sql = sql.replace("$__interval_ms", str(int(iv / timedelta(milliseconds=1))))
    sql = sql.replace("$__interval", format_interval(iv))
    sql = sql.replace("$__unixEpochFrom()", str(int(tr.start.timestamp())))
    return sql.replace("$__unixEpochTo()", str(int(tr.end.timestamp())))


_MACRO_RE = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
_FILL_RE = re.compile(r"NULL|previous|[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _need_col(name: str, args: list[str]) -> str:
    if not args:
        raise MacroError(f"missing time column argument for macro {name}")
    return args[0]


def _step(name: str, args: list[str]) -> str:
    """The interval argument of a group macro, in seconds as Go prints it; checks the optional fill value."""
    if len(args) < 2:
        raise MacroError(f"macro {name} needs time column and interval and optional fill value")
    if len(args) == 3 and not _FILL_RE.fullmatch(args[2]):
        raise MacroError(f"macro {name}: fill value {args[2]!r} must be NULL, previous or a number")
    return go_float(parse_interval(args[1].strip("'")))


def evaluate_macro(name: str, args: list[str], tr: TimeRange) -> str:
    """One macro of Grafana's PostgreSQL macro engine (TimescaleDB off)."""
    s, e = tr.start, tr.end
    if name == "__time":
        return f'{_need_col(name, args)} AS "time"'
    if name == "__timeEpoch":
        return f'extract(epoch from {_need_col(name, args)}) as "time"'
    if name == "__timeFilter":
        return f"{_need_col(name, args)} BETWEEN '{rfc3339(s)}' AND '{rfc3339(e)}'"
    if name == "__timeFrom":
        return f"'{rfc3339(s)}'"
    if name == "__timeTo":
        return f"'{rfc3339(e)}'"
    if name == "__timeGroup":
        n = _step(name, args)
        return f"floor(extract(epoch from {args[0]})/{n})*{n}"
    if name == "__timeGroupAlias":
        return evaluate_macro("__timeGroup", args, tr) + ' AS "time"'
    if name == "__unixEpochFilter":
        c = _need_col(name, args)
        return f"{c} >= {int(s.timestamp())} AND {c} <= {int(e.timestamp())}"
    if name == "__unixEpochNanoFilter":
        c = _need_col(name, args)
        return f"{c} >= {_nanos(s)} AND {c} <= {_nanos(e)}"
    if name == "__unixEpochNanoFrom":
        return str(_nanos(s))
    if name == "__unixEpochNanoTo":
        return str(_nanos(e))
    if name == "__unixEpochGroup":
        n = _step(name, args)
        return f"floor(({args[0]})/{n})*{n}"
    if name == "__unixEpochGroupAlias":
        return evaluate_macro("__unixEpochGroup", args, tr) + ' AS "time"'
    raise MacroError(f"unknown macro {name!r}")


def _nanos(t: datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def interpolate_macros(sql: str, tr: TimeRange) -> str:
    """Stage 3: the PostgreSQL macro engine."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "__timeGroup":  # pre-5.3 compatibility: "$__timeGroup(...)," means the alias form
            i = sql.find(m.group(0))
            if i >= 0 and sql[i + len(m.group(0)) : i + len(m.group(0)) + 1] == ",":
                name = "__timeGroupAlias"
        args = [a.strip(" ") for a in m.group(2).split(",")]
        return evaluate_macro(name, args, tr)

    return _MACRO_RE.sub(repl, sql)


_LEFTOVER_RE = re.compile(r"\$(\w+|\{[^}]*\})|\[\[\w+(?::\w+)?\]\]")


def expand(sql: str, tr: TimeRange, variables: Mapping[str, Variable] | None = None) -> str:
    """The SQL Grafana would run for ``sql``; raise :class:`MacroError` on anything it cannot expand."""
    out = interpolate_macros(interpolate_globals(interpolate_variables(sql, variables or {}, tr), tr), tr)
    left = _LEFTOVER_RE.search(out)
    if left:
        raise MacroError(f"unexpanded {left.group(0)!r} left in the query (an unknown variable or macro):\n{out}")
    return out


def dashboard_variables(dash: Mapping[str, Any], selected: Mapping[str, str | Sequence[str]],
                        options: Mapping[str, Sequence[str]] | None = None) -> dict[str, Variable]:  # fmt: skip
    """Variables of a dashboard's templating list with ``selected`` values (default: the saved default).

    ``options`` gives what a query variable's All expands to (its query's result). Textbox and constant
    variables default to their ``query``; a custom variable's options are its comma-separated ``query``.
    """
    out: dict[str, Variable] = {}
    for v in dash.get("templating", {}).get("list", []):
        name, kind = v["name"], v.get("type")
        opts = list((options or {}).get(name, []))
        if kind == "custom" and not opts:
            opts = [o.strip() for o in str(v.get("query", "")).split(",") if o.strip()]
        if name in selected:
            sel = selected[name]
            value: str | list[str] = sel if isinstance(sel, str) else list(sel)
        elif kind in ("textbox", "constant"):
            value = str(v.get("query", ""))
        else:
            cur = v.get("current", {}).get("value")
            value = cur if isinstance(cur, (str, list)) else ""
        multi = bool(v.get("multi"))
        if multi and isinstance(value, str) and value != ALL:
            value = [value]
        out[name] = Variable(name, value, multi=multi, include_all=bool(v.get("includeAll")), options=opts,
                             all_value=v.get("allValue") or None)  # fmt: skip
    return out
