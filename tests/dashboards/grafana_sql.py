"""What Grafana does to a PostgreSQL panel query before the database sees it, in Python.

No Grafana server runs here, so the tests expand each panel's ``rawSql`` the way Grafana
does and run the result on a real PostgreSQL. Three steps, in Grafana's order:

1. Template variables, in the browser (``templateSrv.replace`` with the SQL datasources'
   ``interpolateVariable``): ``$name``, ``${name}``, ``[[name]]``; a multi-value or
   include-all variable becomes a comma-separated list of quoted literals (``'a','b'``),
   "All" without a custom all value becomes every option; a single-value variable is
   inserted as is, with its single quotes doubled. Names Grafana does not know (``$__…``)
   are left alone.
2. The global SQL substitutions of the backend (``sqleng.Interpolate``): ``$__interval_ms``,
   ``$__interval``, ``$__unixEpochFrom()``, ``$__unixEpochTo()``.
3. The PostgreSQL macro engine (``pkg/tsdb/grafana-postgresql-datasource/macros.go``):
   every ``$__name(args)``; an unknown macro is an error, as it is in Grafana.

Only what the macros are documented to produce is implemented; fill modes of
``$__timeGroup`` (done by Grafana after the query, not in SQL) raise instead of being faked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?::([^}]+))?\}")
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
_INTERVAL = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


class MacroError(ValueError):
    """Grafana would refuse this query (unknown macro, missing argument, ...)."""


@dataclass(frozen=True, slots=True)
class Variable:
    """A template variable as the dashboard defines it, with its current selection."""

    name: str
    value: str | Sequence[str]  # a list for a multi-value selection; "$__all" for All
    multi: bool = False
    include_all: bool = False
    options: Sequence[str] = ()  # every option's value, for "All"
    all_value: str | None = None  # the variable's custom all value, if any


@dataclass(frozen=True, slots=True)
class QueryContext:
    start: datetime  # the panel's time range, aware datetimes
    end: datetime
    interval: timedelta = timedelta(minutes=1)
    variables: Mapping[str, Variable] = field(default_factory=dict)


def quote_literal(value: str) -> str:
    """PostgresQueryModel.quoteLiteral."""
    return "'" + value.replace("'", "''") + "'"


def format_variable(var: Variable) -> str:
    """SqlDatasource.interpolateVariable for the variable's current value."""
    value: str | Sequence[str] = var.value
    if value == "$__all" or (not isinstance(value, str) and list(value) == ["$__all"]):
        if var.all_value is not None:
            return var.all_value
        value = list(var.options)
    if isinstance(value, str):
        return quote_literal(value) if var.multi or var.include_all else value.replace("'", "''")
    return ",".join(quote_literal(v) for v in value)


def interpolate_variables(sql: str, variables: Mapping[str, Variable]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m[1] or m[2] or m[4]
        fmt = m[3] or m[5]
        if name not in variables:
            return m[0]  # Grafana leaves names it does not know untouched
        if fmt is not None:
            raise MacroError(f"variable format {fmt!r} is not implemented by this expander")
        return format_variable(variables[name])

    return _VARIABLE.sub(sub, sql)


def go_rfc3339nano(moment: datetime) -> str:
    """time.RFC3339Nano of moment.UTC(): trailing zeros of the fraction dropped, 'Z'."""
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += "." + f"{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_interval(text: str) -> timedelta:
    """gtime.ParseInterval for the plain forms (``30s``, ``1m``, ``1h``, ``1d`` ...)."""
    m = _INTERVAL.fullmatch(text.strip().strip("'"))
    if m is None:
        raise MacroError(f"error parsing interval {text}")
    return timedelta(seconds=float(m[1]) * _UNIT_S[m[2]])


def format_interval(interval: timedelta) -> str:
    """gtime.FormatInterval: the largest unit that divides it (1m, 30s, 2h, 1d)."""
    ms = round(interval.total_seconds() * 1000)
    for unit, size in (("y", 31536000000), ("w", 604800000), ("d", 86400000), ("h", 3600000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    if ms >= 60000 and ms % 60000 == 0:
        return f"{ms // 60000}m"
    if ms >= 1000 and ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


def _go_float(seconds: float) -> str:
    """Go's %v of a float64 for the interval sizes we use (whole or simple fractions)."""
    return str(int(seconds)) if seconds == int(seconds) else repr(seconds)


def _macro(name: str, args: list[str], ctx: QueryContext) -> str:
    start, end = ctx.start.astimezone(UTC), ctx.end.astimezone(UTC)

    def col() -> str:
        if not args or not args[0]:
            raise MacroError(f"missing time column argument for macro {name}")
        return args[0]

    def group(kind: str) -> str:
        if len(args) < 2:
            raise MacroError(f"macro {name} needs time column and interval and optional fill")
        if len(args) == 3:
            raise MacroError("fill modes happen after the query in Grafana; not implemented")
        size = _go_float(parse_interval(args[1]).total_seconds())
        if kind == "time":
            return f"floor(extract(epoch from {args[0]})/{size})*{size}"
        return f"floor(({args[0]})/{size})*{size}"

    match name:
        case "__time":
            return f'{col()} AS "time"'
        case "__timeEpoch":
            return f'extract(epoch from {col()}) as "time"'
        case "__timeFilter":
            c = col()
            return f"{c} BETWEEN '{go_rfc3339nano(start)}' AND '{go_rfc3339nano(end)}'"
        case "__timeFrom":
            return f"'{go_rfc3339nano(start)}'"
        case "__timeTo":
            return f"'{go_rfc3339nano(end)}'"
        case "__timeGroup":
            return group("time")
        case "__timeGroupAlias":
            return group("time") + ' AS "time"'
        case "__unixEpochFilter":
            c = col()
            return f"{c} >= {int(start.timestamp())} AND {c} <= {int(end.timestamp())}"
        case "__unixEpochNanoFilter":
            c = col()
            return f"{c} >= {_nanos(start)} AND {c} <= {_nanos(end)}"
        case "__unixEpochNanoFrom":
            return str(_nanos(start))
        case "__unixEpochNanoTo":
            return str(_nanos(end))
        case "__unixEpochGroup":
            return group("epoch")
        case "__unixEpochGroupAlias":
            return group("epoch") + ' AS "time"'
        case _:
            raise MacroError(f"unknown macro {name!r}")


def _nanos(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def expand(sql: str, ctx: QueryContext) -> str:
    """The SQL Grafana would send to PostgreSQL for this panel query."""
    sql = interpolate_variables(sql, ctx.variables)
    # sqleng.Interpolate (global, before the macro engine)
    sql = sql.replace("$__interval_ms", str(round(ctx.interval.total_seconds() * 1000)))
    sql = sql.replace("$__interval", format_interval(ctx.interval))
    sql = sql.replace("$__unixEpochFrom()", str(int(ctx.start.timestamp())))
    sql = sql.replace("$__unixEpochTo()", str(int(ctx.end.timestamp())))

    def sub(m: re.Match[str]) -> str:
        name = m[1]
        if name == "__timeGroup":
            # macros.go: "$__timeGroup(...)," is the pre-5.3 form that adds AS "time"
            at = sql.find(m[0])
            if at >= 0 and sql[at + len(m[0]) : at + len(m[0]) + 1] == ",":
                name = "__timeGroupAlias"
        return _macro(name, [a.strip(" ") for a in m[2].split(",")], ctx)

    return _MACRO.sub(sub, sql)


# -- the dashboard side: variables and panel time ranges --------------------------------------


def variables_of(
    dashboard: Mapping[str, Any], **selected: str | Sequence[str]
) -> dict[str, Variable]:
    """The dashboard's template variables, with ``selected`` values (default: its current
    selection; a query variable's options are given through ``selected`` or ``options``)."""
    out = {}
    for v in dashboard["templating"]["list"]:
        current = v.get("current", {}).get("value", "")
        value = selected.get(v["name"], current)
        options = [o["value"] for o in v.get("options", []) if o["value"] != "$__all"]
        out[v["name"]] = Variable(
            name=v["name"],
            value=value,
            multi=bool(v.get("multi")),
            include_all=bool(v.get("includeAll")),
            options=options,
            all_value=v.get("allValue") or None,
        )
    return out


def panel_range(
    panel: Mapping[str, Any], start: datetime, end: datetime, tz: str
) -> tuple[datetime, datetime]:
    """The time range Grafana gives a panel: the dashboard's, unless the panel overrides it
    with a relative time. Only ``now/d`` (today so far, in the dashboard's time zone) is
    used by our dashboards; anything else is refused rather than guessed."""
    override = panel.get("timeFrom")
    if override is None:
        return start, end
    if override != "now/d" or panel.get("timeShift"):
        raise MacroError(f"panel time override {override!r} is not implemented")
    local = end.astimezone(ZoneInfo(tz))
    return local.replace(hour=0, minute=0, second=0, microsecond=0), end
