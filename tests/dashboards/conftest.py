"""Fixtures of the dashboard tests: the generator module and the committed dashboards."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"


@pytest.fixture(scope="session")
def build() -> ModuleType:
    """dashboards/build.py, imported from its file (dashboards/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "shopfloor_dashboards_build", DASHBOARDS / "build.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def dashboards() -> dict[str, dict[str, Any]]:
    """The committed dashboard JSON, by file name."""
    return {
        p.name: json.loads(p.read_text(encoding="utf-8"))
        for p in sorted((DASHBOARDS / "json").glob("*.json"))
    }
