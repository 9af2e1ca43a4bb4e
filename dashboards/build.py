# ruff: noqa: S608 - this module writes SQL text for Grafana on purpose; the only values in
# it come from the hub config and are quoted by _lit(); viewers' input arrives through
# Grafana's own variable quoting.
"""Generate the Grafana dashboards in ``dashboards/json/`` from code.

    .venv/bin/python dashboards/build.py                          # from hub-example.toml
    .venv/bin/python dashboards/build.py --hub-config hub.toml    # from your hub's config
    .venv/bin/python dashboards/build.py --check                  # fail if the JSON is stale

Grafana cannot read the hub's config, so what the dashboards need from it is written into
the dashboard JSON here: the shop's time zone (the dashboards' ``timezone``, and the days
and shifts computed in SQL), the productive states, the machine groups, the shift
calendars (weekly shifts, holidays, overtime, which machine follows which calendar) and
the heartbeat gap (``[hub] stale_after_s``) by which a hub OFFLINE mark is voided.
Regenerate after changing those sections of the hub config.

Every panel queries the hub's PostgreSQL store through Grafana's own PostgreSQL
datasource (uid ``shopfloor-pg``). Times in the store are epoch milliseconds (``bigint``);
the SQL turns Grafana's range macros into milliseconds once, in a ``rng`` CTE.
tests/dashboards/ expands every query like Grafana does and runs it on a real PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from shopfloor.contract import MachineState
from shopfloor.hub.config import HubConfig, load_config
from shopfloor.hub.shifts import UtilizationSection

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent
JSON_DIR: Final = HERE / "json"
EXAMPLE_CONFIG: Final = HERE / "hub-example.toml"
WALL_CSS: Final = ROOT / "hub" / "shopfloor" / "hub" / "web" / "wall.css"

#: The datasource every panel uses; provisioning/datasources/shopfloor.yaml defines it.
DATASOURCE: Final = {"type": "grafana-postgresql-datasource", "uid": "shopfloor-pg"}
#: Classic dashboard JSON, as Grafana 11.6 writes it; newer Grafanas migrate it on load.
SCHEMA_VERSION: Final = 41
WALL_UID: Final = "shopfloor-wall"
REPORT_UID: Final = "shopfloor-utilization"
#: The group variable's value for machines in no group.
NO_GROUP: Final = "__none__"

# -- SQL building blocks ----------------------------------------------------------------------

#: The query's range in epoch ms: ``f`` from, ``t`` to clipped to now (the future has no
#: data), ``tt`` to as given (for planned shifts, which may lie ahead).
RANGE_CTE: Final = """rng AS (
  SELECT (extract(epoch FROM $__timeFrom()::timestamptz) * 1000)::bigint AS f,
         (least(extract(epoch FROM $__timeTo()::timestamptz), extract(epoch FROM now()))
          * 1000)::bigint AS t,
         (extract(epoch FROM $__timeTo()::timestamptz) * 1000)::bigint AS tt
)"""


def _lit(value: str) -> str:
    """A SQL string literal (values come from the hub config, never from a viewer)."""
    return "'" + value.replace("'", "''") + "'"


def _state_code(expr: str) -> str:
    whens = " ".join(f"WHEN {_lit(str(s))} THEN {s.code}" for s in MachineState)
    return f"CASE {expr} {whens} END"


def _values(name: str, columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[str]]) -> str:
    """``name(cols) AS (VALUES ...)``, or a typed empty relation when there are no rows."""
    body = [f"({', '.join(r)})" for r in rows]
    cols = ", ".join(c for c, _ in columns)
    if not body:
        nulls = ", ".join(f"NULL::{t} AS {c}" for c, t in columns)
        return f"{name} AS (SELECT {nulls} WHERE false)"
    return f"{name}({cols}) AS (VALUES\n  " + ",\n  ".join(body) + "\n)"


@dataclass(frozen=True, slots=True)
class Shop:
    """What the dashboards need from the hub config."""

    timezone: str
    productive: tuple[MachineState, ...]
    groups: Mapping[str, tuple[str, ...]]
    util: UtilizationSection
    #: ``[hub] stale_after_s`` in ms: the heartbeat gap of the OFFLINE void rule.
    heartbeat_gap_ms: int

    @classmethod
    def from_config(cls, config: HubConfig) -> Shop:
        util = config.utilization
        productive = tuple(s for s in MachineState if s in util.productive_states)
        gap = int(config.hub.stale_after_s * 1000)  # as the hub's API computes it
        return cls(util.timezone, productive, dict(util.groups), util, gap)

    @property
    def tz(self) -> str:
        return _lit(self.timezone)

    def live(self, x: str) -> str:
        """True for a state row ``x`` that counts: not a hub-sourced OFFLINE mark with the
        agent's own rows around it at most the heartbeat gap apart (it kept observing; a
        replay after the outage proved it). The hub's ``_VOID_SQL``
        (``hub/shopfloor/hub/store/postgres_queries.py``, docs/state-model.md "State
        intervals" rule 6), with the gap from the hub config."""
        return f"""NOT ({x}.source = 'hub' AND {x}.state = 'OFFLINE' AND coalesce(
      (SELECT vn.state <> 'OFFLINE' AND vn.ts - (
         SELECT vp.ts FROM state_changes vp WHERE vp.machine_key = {x}.machine_key
         AND vp.ts <= {x}.ts AND vp.source = 'agent' ORDER BY vp.ts DESC LIMIT 1)
         <= {self.heartbeat_gap_ms}
       FROM state_changes vn WHERE vn.machine_key = {x}.machine_key
         AND vn.ts > {x}.ts AND vn.source = 'agent' ORDER BY vn.ts LIMIT 1), false))"""

    def midnight(self, ms: str) -> str:
        """Epoch ms of the shop's local midnight that starts the day of epoch ms ``ms``."""
        tz = self.tz
        return (
            f"(extract(epoch FROM date_trunc('day', to_timestamp({ms} / 1000.0) AT TIME ZONE "
            f"{tz}) AT TIME ZONE {tz}) * 1000)::bigint"
        )

    # -- machine selection -------------------------------------------------------------------

    def groups_cte(self) -> str:
        rows = [(_lit(g), _lit(m)) for g, members in sorted(self.groups.items()) for m in members]
        return _values("grp", [("grp", "text"), ("member", "text")], rows)

    def selected_cte(self, *, by_group: bool) -> str:
        """``sel``: the machines picked by $machine (and $group), one row per machine and
        group it is in (``__none__`` when in none)."""
        if not by_group:
            return (
                "sel AS (\n  SELECT m.key, m.name, m.agent, m.machine, m.kind FROM machines m\n"
                "  WHERE m.key IN ($machine)\n)"
            )
        return (
            self.groups_cte() + ",\nsel AS (\n"
            f"  SELECT m.key, m.name, m.agent, m.machine, m.kind, coalesce(g.grp, '{NO_GROUP}')"
            " AS grp\n  FROM machines m LEFT JOIN grp g\n"
            "    ON g.member IN (m.machine, m.agent || ':' || m.machine)\n"
            "  WHERE m.key IN ($machine)\n)"
        )

    # -- windows -----------------------------------------------------------------------------

    def day_windows_cte(self) -> str:
        """``win``: every selected machine x every local day the range touches, clipped."""
        tz = self.tz
        return f"""days AS (
  SELECT d::date AS day,
         (extract(epoch FROM d AT TIME ZONE {tz}) * 1000)::bigint AS ds,
         (extract(epoch FROM (d + interval '1 day') AT TIME ZONE {tz}) * 1000)::bigint AS de
  FROM rng CROSS JOIN generate_series(
    date_trunc('day', to_timestamp(rng.f / 1000.0) AT TIME ZONE {tz}),
    to_timestamp((rng.t - 1) / 1000.0) AT TIME ZONE {tz}, interval '1 day') AS d
  WHERE rng.t > rng.f
),
win AS (
  SELECT DISTINCT s.key, s.name, to_char(days.day, 'YYYY-MM-DD') AS label,
         greatest(days.ds, rng.f) AS ws, least(days.de, rng.t) AS we
  FROM sel s CROSS JOIN days CROSS JOIN rng
  WHERE s.grp IN ($group)
)"""

    def shifts_cte(self) -> str:
        """``occ``: every planned shift of every calendar that overlaps the range (weekly
        shifts on their days except holidays, plus overtime), like the hub's
        ``shift_occurrences``; ``mcal``: which calendar a machine id follows."""
        util = self.util
        rules, holidays, overtime = [], [], []
        for name, cal in sorted(util.calendars.items()):
            for s in cal.shifts:
                dows = ",".join(str(d + 1) for d in sorted(s.days))  # ISO: Monday = 1
                rules.append(
                    (
                        _lit(name),
                        _lit(s.name),
                        f"ARRAY[{dows}]",
                        f"time '{s.start:%H:%M}'",
                        f"time '{s.end:%H:%M}'",
                        "1" if s.ends_next_day else "0",
                    )
                )
            holidays += [(_lit(name), f"date '{d.isoformat()}'") for d in sorted(cal.holidays)]
            overtime += [
                (
                    _lit(name),
                    _lit(o.name),
                    f"date '{o.day.isoformat()}'",
                    f"time '{o.start:%H:%M}'",
                    f"time '{o.end:%H:%M}'",
                    "1" if o.ends_next_day else "0",
                )
                for o in cal.overtime
            ]
        members = sorted(
            {m for ms in util.groups.values() for m in ms} | set(util.machine_calendars)
        )
        mcal = []
        for member in members:
            followed = util.calendar_for(member)
            if followed is not None:
                mcal.append((_lit(member), _lit(followed.name)))
        tz = self.tz
        default = _lit(util.default_calendar) if util.default_calendar else "NULL::text"
        shift_cols = [("cal", "text"), ("name", "text")]
        return ",\n".join(
            [
                _values(
                    "rules",
                    [*shift_cols, ("dows", "int[]"), ("s", "time"), ("e", "time"), ("nd", "int")],
                    rules,
                ),
                _values("holidays", [("cal", "text"), ("day", "date")], holidays),
                _values(
                    "overtime",
                    [*shift_cols, ("day", "date"), ("s", "time"), ("e", "time"), ("nd", "int")],
                    overtime,
                ),
                _values("mcal", [("member", "text"), ("cal", "text")], mcal),
                f"""local_days AS (
  SELECT d::date AS day FROM rng CROSS JOIN generate_series(
    date_trunc('day', to_timestamp(rng.f / 1000.0) AT TIME ZONE {tz}) - interval '1 day',
    to_timestamp(rng.tt / 1000.0) AT TIME ZONE {tz}, interval '1 day') AS d
),
occ_all AS (
  SELECT r.cal, ld.day, r.name, ld.day + r.s AS ls, ld.day + r.nd + r.e AS le
  FROM rules r JOIN local_days ld ON extract(isodow FROM ld.day)::int = ANY (r.dows)
  WHERE NOT EXISTS (SELECT 1 FROM holidays h WHERE h.cal = r.cal AND h.day = ld.day)
  UNION ALL
  SELECT o.cal, o.day, o.name, o.day + o.s, o.day + o.nd + o.e
  FROM overtime o JOIN local_days ld ON ld.day = o.day
),
occ AS (
  SELECT o.cal, to_char(o.day, 'YYYY-MM-DD') || ' ' || o.name AS label,
         (extract(epoch FROM o.ls AT TIME ZONE {tz}) * 1000)::bigint AS ss,
         (extract(epoch FROM o.le AT TIME ZONE {tz}) * 1000)::bigint AS se
  FROM occ_all o
),
machine_cal AS (
  SELECT DISTINCT s.key,
         coalesce((SELECT c.cal FROM mcal c
                   WHERE c.member IN (s.machine, s.agent || ':' || s.machine)
                   ORDER BY c.member LIMIT 1), {default}) AS cal
  FROM sel s
)""",
            ]
        )

    def shift_windows_cte(self) -> str:
        """``win``: every selected machine x every shift of its calendar, clipped."""
        return f"""{self.shifts_cte()},
win AS (
  SELECT DISTINCT s.key, s.name, occ.label, greatest(occ.ss, rng.f) AS ws,
         least(occ.se, rng.t) AS we
  FROM sel s JOIN machine_cal mc ON mc.key = s.key JOIN occ ON occ.cal = mc.cal
  CROSS JOIN rng
  WHERE s.grp IN ($group) AND occ.ss < rng.t AND occ.se > rng.f AND occ.se > occ.ss
)"""

    # -- time in state -----------------------------------------------------------------------

    def time_in_state_cte(self) -> str:
        """``tis``: per window of ``win``, milliseconds per state, summed from the state rows
        ordered by time (lead): the last row at or before the window start is carried in,
        every segment is clipped to the window; the time no row covers is OFFLINE. Voided
        hub OFFLINE marks (:meth:`live`) are left out, as the hub's ``time_in_state``
        does."""
        sums = ",\n      ".join(
            f"coalesce(sum(d) FILTER (WHERE state = {_lit(str(s))}), 0) AS {str(s).lower()}"
            for s in MachineState
            if s is not MachineState.OFFLINE
        )
        observed = " + ".join(
            f"x.{str(s).lower()}" for s in MachineState if s is not MachineState.OFFLINE
        )
        productive = " + ".join(f"x.{str(s).lower()}" for s in self.productive) or "0"
        return f"""tis AS (
  SELECT w.key, w.name, w.label, w.ws, w.we, w.we - w.ws AS window_ms,
         {productive} AS productive_ms, {observed} AS observed_ms, x.*
  FROM win w CROSS JOIN LATERAL (
    SELECT
      {sums}
    FROM (
      SELECT c.state,
             greatest(0, least(coalesce(lead(c.ts) OVER (ORDER BY c.ts, c.id), w.we), w.we)
                         - greatest(c.ts, w.ws)) AS d
      FROM state_changes c
      WHERE c.machine_key = w.key AND c.ts < w.we
        AND c.ts >= coalesce((SELECT max(p.ts) FROM state_changes p
                              WHERE p.machine_key = w.key AND p.ts <= w.ws
                                AND {self.live("p")}), w.ws)
        AND {self.live("c")}
    ) seg
  ) x
  WHERE w.we > w.ws
)"""

    def report_columns(self) -> str:
        """The columns of a report row from ``tis``-shaped sums (seconds and ratios)."""
        cols = ["(sum(productive_ms) / 1000.0)::float8 AS productive_s"]
        cols += [
            f"(sum({str(s).lower()}) / 1000.0)::float8 AS {str(s).lower()}_s"
            for s in MachineState
            if s is not MachineState.OFFLINE
        ]
        cols += [
            "(sum(window_ms - observed_ms) / 1000.0)::float8 AS offline_s",
            "(sum(window_ms) / 1000.0)::float8 AS window_s",
            "sum(productive_ms)::float8 / nullif(sum(window_ms), 0) AS utilization",
            "sum(observed_ms)::float8 / nullif(sum(window_ms), 0) AS coverage",
        ]
        return ",\n       ".join(cols)


# -- the queries ---------------------------------------------------------------------------------


def q_state_timeline(shop: Shop) -> str:
    """One row per state change in the range per machine (repeats dropped), the state
    carried in at the range start (OFFLINE if the machine had no data yet), and the state
    at the range end, so the open last interval reaches the end of the range. Voided hub
    OFFLINE marks are left out, as in the hub's own timelines."""
    return f"""WITH {RANGE_CTE},
{shop.selected_cte(by_group=False)},
pts AS (
  SELECT s.key, s.name, rng.f AS ts, 0::bigint AS id, coalesce(ci.state, 'OFFLINE') AS state
  FROM sel s CROSS JOIN rng LEFT JOIN LATERAL (
    SELECT c.state FROM state_changes c WHERE c.machine_key = s.key AND c.ts <= rng.f
      AND {shop.live("c")}
    ORDER BY c.ts DESC, c.id DESC LIMIT 1) ci ON true
  UNION ALL
  SELECT s.key, s.name, c.ts, c.id, c.state
  FROM sel s JOIN state_changes c ON c.machine_key = s.key CROSS JOIN rng
  WHERE c.ts > rng.f AND c.ts < rng.t AND {shop.live("c")}
),
marked AS (
  SELECT p.*, lag(p.state) OVER (PARTITION BY p.key ORDER BY p.ts, p.id) AS prev,
         row_number() OVER (PARTITION BY p.key ORDER BY p.ts DESC, p.id DESC) AS from_end
  FROM pts p
)
SELECT to_timestamp(m.ts / 1000.0) AS "time", m.name AS metric,
       {_state_code("m.state")} AS state
FROM marked m WHERE m.prev IS DISTINCT FROM m.state
UNION ALL
SELECT to_timestamp(rng.t / 1000.0), m.name, {_state_code("m.state")}
FROM marked m CROSS JOIN rng WHERE m.from_end = 1 AND rng.t > m.ts
ORDER BY 1, 2"""


def q_current_state(shop: Shop) -> str:
    """Each machine's newest state row at the end of the range (OFFLINE if none; voided
    hub OFFLINE marks left out, so the tile agrees with the timeline's end)."""
    return f"""WITH {RANGE_CTE},
{shop.selected_cte(by_group=False)}
SELECT to_timestamp(coalesce(l.ts, rng.t) / 1000.0) AS "time", s.name AS metric,
       {_state_code("coalesce(l.state, 'OFFLINE')")} AS state
FROM sel s CROSS JOIN rng LEFT JOIN LATERAL (
  SELECT c.ts, c.state FROM state_changes c WHERE c.machine_key = s.key AND c.ts <= rng.t
    AND {shop.live("c")}
  ORDER BY c.ts DESC, c.id DESC LIMIT 1) l ON true
ORDER BY 1, 2"""


def _today_tis(shop: Shop) -> str:
    return f"""WITH {RANGE_CTE},
{shop.selected_cte(by_group=False)},
win AS (SELECT s.key, s.name, '' AS label, rng.f AS ws, rng.t AS we FROM sel s CROSS JOIN rng),
{shop.time_in_state_cte()}"""


def q_utilization_today(shop: Shop) -> str:
    """Productive time / time elapsed in the panel's range ("today so far")."""
    return f"""{_today_tis(shop)}
SELECT to_timestamp(we / 1000.0) AS "time", name AS metric,
       productive_ms::float8 / window_ms AS utilization
FROM tis ORDER BY 1, 2"""


def q_coverage_today(shop: Shop) -> str:
    """Observed time (any state but OFFLINE) / time elapsed in the panel's range."""
    return f"""{_today_tis(shop)}
SELECT to_timestamp(we / 1000.0) AS "time", name AS metric,
       observed_ms::float8 / window_ms AS coverage
FROM tis ORDER BY 1, 2"""


def _jobs_cte(shop: Shop) -> str:
    """``job``: per machine, one row of the hub's ``jobs`` table (written by the job book):
    the job running at the range end (the newest started, if the book holds more than one
    open), else the last one that ended since the shop's midnight of the range end. The
    table holds each job's latest figures (progress, the ETA and its range and origin as
    the hub computed them); ``running`` says whether the job had not ended by the range
    end."""
    running = "(j.ended_at IS NULL OR j.ended_at > rng.t)"
    return f"""WITH {RANGE_CTE},
{shop.selected_cte(by_group=False)},
job AS (
  SELECT s.name, j.*, {running} AS running,
         least(1.0, greatest(0.0, j.done / nullif(j.total, 0))) AS progress
  FROM sel s CROSS JOIN rng CROSS JOIN LATERAL (
    SELECT j.* FROM jobs j
    WHERE j.machine_key = s.key AND j.started_at <= rng.t
      AND (j.ended_at IS NULL OR j.ended_at >= {shop.midnight("rng.t")})
    ORDER BY {running} DESC,
             CASE WHEN {running} THEN j.started_at ELSE j.ended_at END DESC, j.id DESC
    LIMIT 1) j
)"""


def q_job_progress(shop: Shop) -> str:
    """One bar per machine's job (running, or ended today, with its outcome): done / total
    (null when the total is unknown)."""
    return f"""{_jobs_cte(shop)}
SELECT to_timestamp(started_at / 1000.0) AS "time",
       name || ' · ' || coalesce(program, agent_job)
         || CASE WHEN running THEN '' ELSE ' (' || coalesce(outcome, 'ended') || ')' END
         AS metric,
       progress
FROM job ORDER BY 1, 2"""


def q_jobs_table(shop: Shop) -> str:
    """Each machine's job with its progress, status, and the hub's ETA, range and origin
    (linear, history, schedule or firmware); an ended job has no ETA."""
    return f"""{_jobs_cte(shop)}
SELECT name AS machine, coalesce(program, agent_job) AS program, order_ref, unit, progress,
       CASE WHEN running THEN 'running' ELSE coalesce(outcome, 'ended') END AS status,
       to_timestamp(started_at / 1000.0) AS started,
       CASE WHEN NOT running THEN to_timestamp(ended_at / 1000.0) END AS ended,
       to_timestamp(eta_at / 1000.0) AS eta,
       to_timestamp(eta_low_at / 1000.0) AS eta_low,
       to_timestamp(eta_high_at / 1000.0) AS eta_high,
       eta_origin
FROM job ORDER BY machine"""


def q_kiln_temperature(shop: Shop) -> str:
    """Every kiln's temperature and set point from its telemetry samples, averaged per
    $__interval bucket."""
    return f"""WITH {RANGE_CTE},
{shop.selected_cte(by_group=False)},
smp AS (
  SELECT s.name, to_timestamp((x->>'ts')::bigint / 1000.0) AS t,
         (x->'values'->>'temperature_c')::float8 AS temperature,
         (x->'values'->>'setpoint_c')::float8 AS setpoint
  FROM sel s CROSS JOIN rng
  JOIN records r ON r.agent = s.agent AND r.machine = s.machine AND r.kind = 'telemetry'
    AND r.ts >= rng.f - 60000 AND r.ts <= rng.t + 60000
  CROSS JOIN LATERAL jsonb_array_elements(r.body->'samples') x
  WHERE s.kind = 'kiln' AND (x->>'ts')::bigint >= rng.f AND (x->>'ts')::bigint <= rng.t
)
SELECT to_timestamp($__timeGroup(t, $__interval)) AS "time",
       name || ' temperature' AS metric, avg(temperature) AS value
FROM smp WHERE temperature IS NOT NULL GROUP BY 1, 2
UNION ALL
SELECT to_timestamp($__timeGroup(t, $__interval)), name || ' set point', avg(setpoint)
FROM smp WHERE setpoint IS NOT NULL GROUP BY 1, 2
ORDER BY 1, 2"""


def _report(shop: Shop, windows: str, *, per_group: bool, label: str) -> str:
    head = f"""WITH {RANGE_CTE},
{shop.selected_cte(by_group=True)},
{windows},
{shop.time_in_state_cte()}"""
    if not per_group:
        return f"""{head}
SELECT label AS {label}, name AS machine,
       {shop.report_columns()}
FROM tis GROUP BY label, name ORDER BY 1, 2"""
    return f"""{head}
SELECT t.label AS {label},
       CASE g.grp WHEN '{NO_GROUP}' THEN '(no group)' ELSE g.grp END AS "group",
       count(DISTINCT t.key) AS machines,
       {shop.report_columns()}
FROM tis t JOIN (SELECT DISTINCT key, grp FROM sel WHERE grp IN ($group)) g ON g.key = t.key
GROUP BY 1, 2 ORDER BY 1, 2"""


def q_report_day_machine(shop: Shop) -> str:
    return _report(shop, shop.day_windows_cte(), per_group=False, label="day")


def q_report_day_group(shop: Shop) -> str:
    return _report(shop, shop.day_windows_cte(), per_group=True, label="day")


def q_report_shift_machine(shop: Shop) -> str:
    return _report(shop, shop.shift_windows_cte(), per_group=False, label="shift")


def q_report_shift_group(shop: Shop) -> str:
    return _report(shop, shop.shift_windows_cte(), per_group=True, label="shift")


def q_daily_utilization(shop: Shop) -> str:
    """Utilization per machine per local day, as a series for a bar chart."""
    return f"""WITH {RANGE_CTE},
{shop.selected_cte(by_group=True)},
{shop.day_windows_cte()},
{shop.time_in_state_cte()}
SELECT to_timestamp(min(ws) / 1000.0) AS "time", name AS metric,
       sum(productive_ms)::float8 / nullif(sum(window_ms), 0) AS utilization
FROM tis GROUP BY label, name ORDER BY 1, 2"""


def q_planned_shifts(shop: Shop) -> str:
    """The planned shifts of every calendar in the range, unclipped (like the hub's
    ``shift_occurrences``)."""
    return f"""WITH {RANGE_CTE},
sel AS (SELECT NULL::text AS key, NULL::text AS machine, NULL::text AS agent WHERE false),
{shop.shifts_cte()}
SELECT cal AS calendar, label AS shift, to_timestamp(ss / 1000.0) AS "start",
       to_timestamp(se / 1000.0) AS "end", (se - ss) / 3600000.0::float8 AS hours
FROM occ CROSS JOIN rng
WHERE ss < rng.tt AND se > rng.f AND se > ss
ORDER BY 3, 1, 2"""


MACHINE_VARIABLE_SQL: Final = (
    "SELECT name AS __text, key AS __value FROM machines ORDER BY name, key"
)

# -- panels ------------------------------------------------------------------------------------


def wall_colours(css: str | None = None) -> dict[MachineState, str]:
    """The state colours of the wall page (``--running: #22c55e;`` in wall.css)."""
    text = css if css is not None else WALL_CSS.read_text(encoding="utf-8")
    out = {}
    for state in MachineState:
        m = re.search(rf"--{str(state).lower()}:\s*(#[0-9a-fA-F]{{3,8}})\s*;", text)
        if m is None:
            raise SystemExit(f"{WALL_CSS}: no colour --{str(state).lower()} for {state}")
        out[state] = m[1].lower()
    return out


def state_mappings() -> list[dict[str, Any]]:
    colours = wall_colours()
    return [
        {
            "type": "value",
            "options": {
                str(s.code): {"text": str(s), "color": colours[s], "index": i}
                for i, s in enumerate(MachineState)
            },
        }
    ]


def target(sql: str, fmt: str = "time_series") -> dict[str, Any]:
    return {
        "refId": "A",
        "datasource": dict(DATASOURCE),
        "editorMode": "code",
        "format": fmt,
        "rawQuery": True,
        "rawSql": sql,
    }


def thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


UTIL_THRESHOLDS: Final = thresholds(("#dc2626", None), ("#facc15", 0.5), ("#22c55e", 0.75))
COVERAGE_THRESHOLDS: Final = thresholds(("#dc2626", None), ("#facc15", 0.8), ("#22c55e", 0.95))


class Layout:
    """Hands out panel ids in order."""

    def __init__(self) -> None:
        self.next_id = 1

    def panel(
        self,
        kind: str,
        title: str,
        grid: tuple[int, int, int, int],
        sql: str,
        *,
        fmt: str = "time_series",
        description: str = "",
        defaults: Mapping[str, Any] | None = None,
        overrides: Sequence[Mapping[str, Any]] = (),
        options: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        x, y, w, h = grid
        panel: dict[str, Any] = {
            "id": self.next_id,
            "type": kind,
            "title": title,
            "description": description,
            "gridPos": {"x": x, "y": y, "w": w, "h": h},
            "datasource": dict(DATASOURCE),
            "targets": [target(sql, fmt)],
            "fieldConfig": {"defaults": dict(defaults or {}), "overrides": list(overrides)},
            "options": dict(options or {}),
        }
        panel.update(extra or {})
        self.next_id += 1
        return panel


def stat_options(
    *, colour_mode: str = "background", text_size: int | None = None
) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "reduceOptions": {"values": False, "calcs": ["lastNotNull"], "fields": ""},
        "orientation": "auto",
        "textMode": "value_and_name",
        "colorMode": colour_mode,
        "graphMode": "none",
        "justifyMode": "center",
        "wideLayout": True,
        "showPercentChange": False,
    }
    if text_size:
        opts["text"] = {"titleSize": text_size // 2, "valueSize": text_size}
    return opts


def machine_variable(*, hidden: bool) -> dict[str, Any]:
    return {
        "name": "machine",
        "label": "Machine",
        "type": "query",
        "datasource": dict(DATASOURCE),
        "query": MACHINE_VARIABLE_SQL,
        "definition": MACHINE_VARIABLE_SQL,
        "refresh": 2,  # on time range change: new machines appear
        "multi": True,
        "includeAll": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "sort": 0,
        "hide": 2 if hidden else 0,
    }


def group_variable(shop: Shop) -> dict[str, Any]:
    names = sorted(shop.groups)
    options = [(g, g) for g in names] + [("(no group)", NO_GROUP)]
    return {
        "name": "group",
        "label": "Group",
        "type": "custom",
        "query": ",".join(f"{text} : {value}" for text, value in options),
        "multi": True,
        "includeAll": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [{"selected": False, "text": text, "value": value} for text, value in options],
        "hide": 0,
    }


def dashboard(
    uid: str,
    title: str,
    panels: list[dict[str, Any]],
    variables: list[dict[str, Any]],
    *,
    shop: Shop,
    time_from: str,
    refresh: str,
    description: str,
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["shopfloor"],
        "editable": False,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "timezone": shop.timezone,
        "weekStart": "monday",
        "time": {"from": time_from, "to": "now"},
        "timepicker": {"refresh_intervals": ["10s", "30s", "1m", "5m", "15m", "1h"]},
        "refresh": refresh,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": variables},
        "panels": panels,
    }


def wall(shop: Shop) -> dict[str, Any]:
    lay = Layout()
    state_defaults = {
        "mappings": state_mappings(),
        "color": {"mode": "thresholds"},
        "thresholds": thresholds(("#4b5563", None)),
        "noValue": "no machines",
    }
    today = {"timeFrom": "now/d", "hideTimeOverride": True}
    panels = [
        lay.panel(
            "stat",
            "Now",
            (0, 0, 24, 4),
            q_current_state(shop),
            description="Every machine's state now, in the wall page's colours.",
            defaults=state_defaults,
            options=stat_options(text_size=32),
        ),
        lay.panel(
            "state-timeline",
            "States",
            (0, 4, 24, 9),
            q_state_timeline(shop),
            description="Each machine's states over the dashboard's range; grey is OFFLINE "
            "(no data), never idle.",
            defaults={**state_defaults, "custom": {"fillOpacity": 85, "lineWidth": 0}},
            options={
                "mergeValues": True,
                "showValue": "auto",
                "alignValue": "left",
                "rowHeight": 0.85,
                "legend": {"showLegend": False},
                "tooltip": {"mode": "single", "sort": "none"},
            },
        ),
        lay.panel(
            "stat",
            "Utilization today",
            (0, 13, 12, 4),
            q_utilization_today(shop),
            description="Productive time ("
            + ", ".join(str(s) for s in shop.productive)
            + ") / time elapsed today in the shop's time zone.",
            defaults={
                "unit": "percentunit",
                "decimals": 0,
                "min": 0,
                "max": 1,
                "color": {"mode": "thresholds"},
                "thresholds": UTIL_THRESHOLDS,
            },
            options=stat_options(),
            extra=today,
        ),
        lay.panel(
            "stat",
            "Coverage today",
            (0, 17, 12, 3),
            q_coverage_today(shop),
            description="Share of today the hub has data for (any state but OFFLINE). "
            "Utilization is only as good as its coverage.",
            defaults={
                "unit": "percentunit",
                "decimals": 0,
                "min": 0,
                "max": 1,
                "color": {"mode": "thresholds"},
                "thresholds": COVERAGE_THRESHOLDS,
            },
            options=stat_options(colour_mode="value"),
            extra=today,
        ),
        lay.panel(
            "bargauge",
            "Jobs",
            (12, 13, 12, 4),
            q_job_progress(shop),
            description="Progress (done / total) of the job running on each machine, or "
            "of the last one that ended today (with its outcome), from the hub's jobs.",
            defaults={
                "unit": "percentunit",
                "decimals": 0,
                "min": 0,
                "max": 1,
                "color": {"mode": "fixed", "fixedColor": "#22c55e"},
                "noValue": "no job today",
            },
            options={
                "reduceOptions": {"values": False, "calcs": ["lastNotNull"], "fields": ""},
                "orientation": "horizontal",
                "displayMode": "lcd",
                "valueMode": "color",
                "showUnfilled": True,
                "namePlacement": "top",
                "sizing": "auto",
                "minVizHeight": 16,
                "maxVizHeight": 48,
            },
        ),
        lay.panel(
            "table",
            "Job ETA",
            (12, 17, 12, 3),
            q_jobs_table(shop),
            fmt="table",
            description="When each running job will be done, the range around it, and "
            "where the hub's estimate comes from: linear from the working time so far, "
            "history (past runs of the program), schedule (a kiln firing) or firmware (the "
            "machine's own); a job that ended today shows its outcome and end.",
            defaults={"custom": {"align": "auto", "cellOptions": {"type": "auto"}}},
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "progress"},
                    "properties": [
                        {"id": "unit", "value": "percentunit"},
                        {"id": "custom.cellOptions", "value": {"type": "gauge", "mode": "lcd"}},
                        {"id": "min", "value": 0},
                        {"id": "max", "value": 1},
                    ],
                },
                {
                    "matcher": {
                        "id": "byRegexp",
                        "options": "^(started|ended|eta|eta_low|eta_high)$",
                    },
                    "properties": [{"id": "unit", "value": "dateTimeAsLocal"}],
                },
                {
                    "matcher": {"id": "byRegexp", "options": "^(started|unit)$"},
                    "properties": [{"id": "custom.hidden", "value": True}],
                },
            ],
            options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
        ),
        lay.panel(
            "timeseries",
            "Kiln temperature",
            (0, 20, 24, 7),
            q_kiln_temperature(shop),
            description="Each kiln's temperature against its set point.",
            defaults={
                "unit": "celsius",
                "custom": {
                    "lineWidth": 2,
                    "fillOpacity": 0,
                    "showPoints": "never",
                    "spanNulls": 120000,
                },
            },
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": ".* set point$"},
                    "properties": [
                        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                        {"id": "color", "value": {"mode": "fixed", "fixedColor": "#9aa6b8"}},
                    ],
                },
            ],
            options={
                "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"},
                "tooltip": {"mode": "multi", "sort": "none"},
            },
            extra={"interval": "1m"},
        ),
    ]
    return dashboard(
        WALL_UID,
        "Shopfloor wall",
        panels,
        [machine_variable(hidden=True)],
        shop=shop,
        time_from="now-12h",
        refresh="30s",
        description="For a TV in kiosk mode: /d/shopfloor-wall?kiosk&theme=dark&refresh=30s",
    )


def report(shop: Shop) -> dict[str, Any]:
    lay = Layout()
    seconds = [
        {
            "matcher": {"id": "byRegexp", "options": ".*_s$"},
            "properties": [{"id": "unit", "value": "s"}, {"id": "decimals", "value": 0}],
        },
        {
            "matcher": {"id": "byRegexp", "options": "^(utilization|coverage)$"},
            "properties": [
                {"id": "unit", "value": "percentunit"},
                {"id": "decimals", "value": 1},
                {
                    "id": "custom.cellOptions",
                    "value": {"type": "color-background", "mode": "basic"},
                },
                {"id": "thresholds", "value": UTIL_THRESHOLDS},
            ],
        },
    ]
    table_opts = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    productive = ", ".join(str(s) for s in shop.productive)
    what = (
        f"utilization = productive time ({productive}) / window; coverage = observed "
        "time / window. offline_s is time without data (OFFLINE or before the first "
        "data), never counted as idle."
    )
    panels = [
        lay.panel(
            "barchart",
            "Utilization per day",
            (0, 0, 24, 7),
            q_daily_utilization(shop),
            description=f"Per machine and local day ({shop.timezone}): {what}",
            defaults={"unit": "percentunit", "min": 0, "max": 1},
            options={
                "xTickLabelRotation": 0,
                "showValue": "auto",
                "groupWidth": 0.7,
                "barWidth": 0.9,
                "orientation": "auto",
                "stacking": "none",
                "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"},
            },
        ),
        lay.panel(
            "table",
            "By day, per machine",
            (0, 7, 12, 9),
            q_report_day_machine(shop),
            fmt="table",
            description=what,
            overrides=seconds,
            options=table_opts,
        ),
        lay.panel(
            "table",
            "By day, per group",
            (12, 7, 12, 9),
            q_report_day_group(shop),
            fmt="table",
            description=what,
            overrides=seconds,
            options=table_opts,
        ),
        lay.panel(
            "table",
            "By shift, per machine",
            (0, 16, 12, 9),
            q_report_shift_machine(shop),
            fmt="table",
            description=f"Shifts from each machine's calendar. {what}",
            overrides=seconds,
            options=table_opts,
        ),
        lay.panel(
            "table",
            "By shift, per group",
            (12, 16, 12, 9),
            q_report_shift_group(shop),
            fmt="table",
            description=f"Shifts from each machine's calendar. {what}",
            overrides=seconds,
            options=table_opts,
        ),
        lay.panel(
            "table",
            "Planned shifts",
            (0, 25, 24, 6),
            q_planned_shifts(shop),
            fmt="table",
            description="The shift calendars these dashboards were generated with "
            "(dashboards/build.py reads them from the hub config).",
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": "^(start|end)$"},
                    "properties": [{"id": "unit", "value": "dateTimeAsLocal"}],
                }
            ],
            options=table_opts,
        ),
    ]
    return dashboard(
        REPORT_UID,
        "Shopfloor utilization",
        panels,
        [machine_variable(hidden=False), group_variable(shop)],
        shop=shop,
        time_from="now-7d/d",
        refresh="5m",
        description="Utilization and coverage by day and by shift, per machine and group.",
    )


def render(config: Path = EXAMPLE_CONFIG) -> dict[str, str]:
    """File name -> JSON text of every dashboard, built from the hub config at ``config``."""
    shop = Shop.from_config(load_config(config))
    return {
        "wall.json": json.dumps(wall(shop), indent=2, ensure_ascii=False) + "\n",
        "utilization.json": json.dumps(report(shop), indent=2, ensure_ascii=False) + "\n",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--hub-config",
        type=Path,
        default=EXAMPLE_CONFIG,
        help="the hub config to read [hub] stale_after_s, [utilization], [groups],"
        " [calendars] from",
    )
    parser.add_argument("--out", type=Path, default=JSON_DIR, help="where to write the JSON")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a file differs from what would be written",
    )
    args = parser.parse_args(argv)
    stale = []
    for name, text in render(args.hub_config).items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print("out of date (run dashboards/build.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
