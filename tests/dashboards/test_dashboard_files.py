"""The dashboard JSON and provisioning YAML, checked as files (no Grafana runs here).

The JSON must be what dashboards/build.py writes, valid classic Grafana dashboard JSON
(unique ids, a 24-column grid without overlaps, every panel on the provisioned datasource,
every template variable defined), coloured like the wall page, and every panel query must
expand (tests/dashboards/grafana_sql.py) into SQL with nothing of Grafana's left in it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from grafana_sql import MacroError, QueryContext, Variable, expand, panel_range, variables_of

from shopfloor.contract import MachineState
from shopfloor.hub.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
PROVISIONING = DASHBOARDS / "provisioning"
DS_UID = "shopfloor-pg"
DS_TYPE = "grafana-postgresql-datasource"
#: Where docker-compose mounts the folders (the fixed names the deploy relies on).
GRAFANA_DASHBOARD_PATH = "/var/lib/grafana/dashboards/shopfloor"
_VAR_USE = re.compile(r"\$(\w+)|\[\[(\w+)(?::\w+)?\]\]|\$\{(\w+)(?::[^}]+)?\}")
_INTERVALS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows keep theirs inside
    return out


def test_committed_json_is_what_the_generator_writes(build: ModuleType) -> None:
    rendered = build.render()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in (DASHBOARDS / "json").glob("*.json")}
    assert set(on_disk) == set(rendered), "dashboards/json/ holds other files than build.py writes"
    for name, text in rendered.items():
        assert on_disk[name] == text, f"dashboards/json/{name} is stale: run dashboards/build.py"


def test_check_mode_reports_a_stale_file(build: ModuleType, tmp_path: Path) -> None:
    assert build.main(["--out", str(tmp_path)]) == 0
    assert build.main(["--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "wall.json").write_text("{}", encoding="utf-8")
    assert build.main(["--out", str(tmp_path), "--check"]) == 1


def test_dashboards_are_grafana_dashboard_json(
    build: ModuleType, dashboards: dict[str, dict[str, Any]]
) -> None:
    assert set(dashboards) == {"wall.json", "utilization.json"}
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids)
    assert {d["title"] for d in dashboards.values()} == {"Shopfloor wall", "Shopfloor utilization"}
    for name, d in dashboards.items():
        assert 8 <= len(d["uid"]) <= 40, name
        assert re.fullmatch(r"[a-z0-9-]+", d["uid"]), name
        assert d["schemaVersion"] == build.SCHEMA_VERSION == 41
        assert d["editable"] is False
        assert d["time"]["to"] == "now"
        assert d["timezone"] == load_config(DASHBOARDS / "hub-example.toml").utilization.timezone
        refresh = d["refresh"]
        assert _INTERVALS_S[refresh[-1]] * int(refresh[:-1]) >= 5, "below min_refresh_interval"
        ids = [p["id"] for p in panels(d)]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"
        cells: dict[tuple[int, int], int] = {}
        for p in panels(d):
            g = p["gridPos"]
            assert min(g["w"], g["h"]) > 0, (name, p["title"])
            assert min(g["x"], g["y"]) >= 0, (name, p["title"])
            assert g["x"] + g["w"] <= 24, f"{name}: {p['title']} leaves the 24-column grid"
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    other = cells.setdefault((x, y), p["id"])
                    assert other == p["id"], f"{name}: panels {other} and {p['id']} overlap"
            assert p["datasource"] == {"type": DS_TYPE, "uid": DS_UID}, p["title"]
            assert p["targets"], p["title"]
            for t in p["targets"]:
                assert t["datasource"] == {"type": DS_TYPE, "uid": DS_UID}
                assert t["rawQuery"] is True
                assert t["editorMode"] == "code"
                assert t["format"] in ("time_series", "table")
                assert t["rawSql"].strip()
            for step in (p["fieldConfig"]["defaults"].get("thresholds") or {}).get("steps", [])[:1]:
                assert step["value"] is None, "a threshold's first step is the base (null)"


def test_every_variable_used_is_defined_and_every_defined_one_used(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    for name, d in dashboards.items():
        defined = {v["name"] for v in d["templating"]["list"]}
        sql = "\n".join(t["rawSql"] for p in panels(d) for t in p["targets"])
        used = {
            n
            for m in _VAR_USE.finditer(sql)
            for n in (m[1] or m[2] or m[3],)
            if not n.startswith("__")
        }
        assert used == defined, f"{name}: used {sorted(used)}, defined {sorted(defined)}"
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                assert v["datasource"]["uid"] == DS_UID
                assert not _VAR_USE.search(v["query"]), "variable queries depend on nothing"


def test_wall_is_made_for_a_tv(dashboards: dict[str, dict[str, Any]]) -> None:
    wall = dashboards["wall.json"]
    assert wall["refresh"] == "30s"
    assert all(v["hide"] == 2 for v in wall["templating"]["list"]), "no controls on a TV"
    kinds = sorted(p["type"] for p in panels(wall))
    assert kinds == ["bargauge", "stat", "stat", "stat", "state-timeline", "table", "timeseries"]
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels(wall))
    assert bottom <= 28, "the wall fits a 1080p screen without scrolling"
    today = [p for p in panels(wall) if p.get("timeFrom")]
    assert {p["title"] for p in today} == {"Utilization today", "Coverage today"}
    assert all(p["timeFrom"] == "now/d" and p["hideTimeOverride"] for p in today)


def _wall_css_colours() -> dict[str, str]:
    css = (ROOT / "hub/shopfloor/hub/web/wall.css").read_text(encoding="utf-8")
    return {m[1].upper(): m[2].lower() for m in re.finditer(r"--(\w+):\s*(#[0-9a-fA-F]+);", css)}


def test_state_colours_and_words_match_the_wall_page(dashboards: dict[str, dict[str, Any]]) -> None:
    css = _wall_css_colours()
    wall = dashboards["wall.json"]
    state_panels = [p for p in panels(wall) if p["title"] in ("Now", "States")]
    assert len(state_panels) == 2
    for p in state_panels:
        (mapping,) = p["fieldConfig"]["defaults"]["mappings"]
        assert mapping["type"] == "value"
        options = mapping["options"]
        assert set(options) == {str(s.code) for s in MachineState}
        for s in MachineState:
            assert options[str(s.code)]["text"] == str(s)
            assert options[str(s.code)]["color"] == css[str(s)], s


def test_group_variable_offers_every_configured_group(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    report = dashboards["utilization.json"]
    groups = load_config(DASHBOARDS / "hub-example.toml").utilization.groups
    (var,) = [v for v in report["templating"]["list"] if v["name"] == "group"]
    assert var["type"] == "custom"
    assert var["multi"]
    assert var["includeAll"]
    assert [o["value"] for o in var["options"]] == [*sorted(groups), "__none__"]


def test_every_panel_query_expands_to_plain_sql(dashboards: dict[str, dict[str, Any]]) -> None:
    start = datetime(2026, 11, 24, 5, tzinfo=UTC)
    for d in dashboards.values():
        variables = variables_of(d, machine=["pi-wood/router-1", "o'brien/x"])
        for p in panels(d):
            s, e = panel_range(p, start, start + timedelta(hours=8), d["timezone"])
            for t in p["targets"]:
                sql = expand(t["rawSql"], QueryContext(s, e, variables=variables))
                assert "$" not in sql, f"{p['title']}: left over in {sql}"
                assert "[[" not in sql, f"{p['title']}: left over in {sql}"
                if "$machine" in t["rawSql"]:
                    assert "IN ('pi-wood/router-1','o''brien/x')" in sql


def test_the_expander_follows_grafanas_definitions() -> None:
    ctx = QueryContext(
        datetime(2026, 11, 24, 5, 0, 0, 250000, tzinfo=UTC),
        datetime(2026, 11, 24, 13, tzinfo=UTC),
        timedelta(minutes=5),
        {
            "m": Variable("m", ["a", "b'c"], multi=True),
            "all": Variable("all", "$__all", include_all=True, options=["x", "y"]),
            "one": Variable("one", "it's"),
        },
    )
    assert expand("$__timeFilter(ts)", ctx) == (
        "ts BETWEEN '2026-11-24T05:00:00.25Z' AND '2026-11-24T13:00:00Z'"
    )
    assert expand("$__timeFrom() $__timeTo()", ctx) == (
        "'2026-11-24T05:00:00.25Z' '2026-11-24T13:00:00Z'"
    )
    assert expand("$__unixEpochFilter(t)", ctx) == "t >= 1795496400 AND t <= 1795525200"
    assert expand("$__unixEpochFrom() $__unixEpochTo()", ctx) == "1795496400 1795525200"
    assert expand("$__timeGroupAlias(c, $__interval)", ctx) == (
        'floor(extract(epoch from c)/300)*300 AS "time"'
    )
    assert expand("$__timeGroup(c, '1h'), x", ctx) == (
        'floor(extract(epoch from c)/3600)*3600 AS "time", x'  # the pre-5.3 form
    )
    assert expand("$__unixEpochGroup(c, 1d)", ctx) == "floor((c)/86400)*86400"
    assert expand("$__interval_ms", ctx) == "300000"
    assert expand("IN ($m) IN (${all}) [[one]]", ctx) == "IN ('a','b''c') IN ('x','y') it''s"
    assert expand("$unknown $__name", ctx) == "$unknown $__name"
    with pytest.raises(MacroError, match="unknown macro"):
        expand("$__nope(x)", ctx)
    with pytest.raises(MacroError, match="fill"):
        expand("$__timeGroup(c, 1m, 0)", ctx)


def test_datasource_provisioning() -> None:
    files = sorted((PROVISIONING / "datasources").glob("*.yaml"))
    assert [f.name for f in files] == ["shopfloor.yaml"]
    doc = yaml.safe_load(files[0].read_text(encoding="utf-8"))
    assert doc["apiVersion"] == 1
    (ds,) = doc["datasources"]
    assert ds["uid"] == DS_UID
    assert ds["type"] == DS_TYPE
    assert ds["url"] == "postgres:5432"
    assert ds["user"] == "grafana_reader"
    assert ds["jsonData"]["database"] == "shopfloor"  # Grafana 12+ reads only this one
    assert ds["secureJsonData"] == {"password": "$SHOPFLOOR_GRAFANA_DB_PASSWORD"}
    assert "password" not in ds
    assert "password" not in ds["jsonData"]
    assert ds["editable"] is False


def test_dashboard_provisioning(dashboards: dict[str, dict[str, Any]]) -> None:
    files = sorted((PROVISIONING / "dashboards").glob("*.yaml"))
    assert [f.name for f in files] == ["shopfloor.yaml"]
    doc = yaml.safe_load(files[0].read_text(encoding="utf-8"))
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == GRAFANA_DASHBOARD_PATH
    assert provider["allowUiUpdates"] is False
    assert provider["folderUid"] == "shopfloor"
    # The datasource every dashboard names is the one provisioned.
    provisioned = {
        ds["uid"]
        for f in (PROVISIONING / "datasources").glob("*.yaml")
        for ds in yaml.safe_load(f.read_text(encoding="utf-8"))["datasources"]
    }
    named = {p["datasource"]["uid"] for d in dashboards.values() for p in panels(d)}
    assert named <= provisioned
