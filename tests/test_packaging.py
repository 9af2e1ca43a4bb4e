"""The agent must install and run on a Pi without the hub's dependencies."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_AGENT = (
    "fastapi",
    "starlette",
    "uvicorn",
    "aiosqlite",
    "asyncpg",
    "psycopg",
    "psycopg2",
    "sqlalchemy",
    "influxdb_client",
    "pydantic",
)
AGENT_SIDE_ROOTS = (
    "contract/shopfloor/contract",
    "agent/shopfloor/agent",
    "firmware-sim/shopfloor/sim",
)


def _modules_under(folder: str) -> list[str]:
    base = ROOT / folder
    names = []
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base.parent.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def test_agent_import_closure_has_no_hub_dependencies() -> None:
    modules = ["shopfloor.cli"] + [m for root in AGENT_SIDE_ROOTS for m in _modules_under(root)]
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    loaded = set(json.loads(out.stdout))
    assert "shopfloor.agent" in loaded
    leaked = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN_IN_AGENT)
    assert not leaked, f"the agent's import closure pulls in hub-only modules: {leaked}"


def test_base_dependencies_exclude_hub_libraries() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    for lib in ("fastapi", "uvicorn", "aiosqlite", "asyncpg", "psycopg", "influxdb"):
        assert lib not in base
    assert any("fastapi" in dep for dep in project["optional-dependencies"]["hub"])


def test_every_python_package_is_listed_for_the_wheel() -> None:
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools_cfg["packages"])
    found = set()
    for folder in ("contract", "agent", "hub", "firmware-sim"):
        for init in (ROOT / folder).rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(ROOT / folder).parts))
    missing = sorted(found - listed)
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"
