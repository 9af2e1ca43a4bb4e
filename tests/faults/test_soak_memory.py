"""A short soak at ten times a normal shop's rate: the agents' and the hub's memory stay flat.

Runs ``python -m bench.soak`` (20 GRBL simulators, 4 agents, the hub, a private Mosquitto,
all real processes; see bench/README.md) for a short window after a warm-up, and checks
the least-squares slope of each process's RSS over the window, that the rate really was
ten times a normal shop's, and that every record the agents wrote reached the hub. It
runs beside the fault scenarios (conftest.py); ``SHOPFLOOR_FAULTS_FULL=1`` makes its
window 10 minutes.
"""

from __future__ import annotations

from typing import Any

import pytest
from scenarios import FULL

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.mqtt, pytest.mark.timeout(1500)]

#: A normal shop (``bench.soak --normal``: 10 machines, the agent's defaults) stores 3.25
#: records/s at the hub (bench/README.md, "Soak"); the soak must run at ten times that.
NORMAL_RECORDS_PER_S = 3.25
#: After the warm-up, the least-squares RSS slope over the window stays under this, for
#: every agent and the hub. Seen over a 10-minute soak: 0-40 KiB/min per 1-minute window
#: once settled (up to 1.1 MiB/min before: the hub's SQLite page cache filling). A leak of
#: 100 bytes per record at the hub's 42 records/s would be 250 KiB/min; a single 256 KiB
#: arena in a 1-minute window reads as up to ~380 KiB/min, so the short run allows 512.
MAX_SLOPE_KIB_MIN = 128.0 if FULL else 512.0


def test_soak_runs_at_ten_times_a_normal_shop(soak_run: dict[str, Any]) -> None:
    assert soak_run["records_per_s"] >= 10 * NORMAL_RECORDS_PER_S, soak_run["records_per_s"]


def test_memory_stays_flat_after_warm_up(soak_run: dict[str, Any]) -> None:
    for m in soak_run["memory"]:
        assert m["samples"] >= 25, m
        assert m["slope_kib_per_min"] <= MAX_SLOPE_KIB_MIN, (m, soak_run["log"])


def test_everything_written_reached_the_hub(soak_run: dict[str, Any]) -> None:
    for name, lag in soak_run["lag"].items():
        assert lag["hub_watermark"] >= lag["last_written"] - lag["outbox"], (name, lag)
