"""Example answers of the endpoints whose models carry none, put into the OpenAPI document.

Each example sits beside the response model it must satisfy; tests/hub/test_orders_api.py
validates every one against its model, so an example cannot drift from what the API
answers. (The orders and webhooks models carry their examples themselves.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from fastapi import FastAPI
from pydantic import BaseModel

from shopfloor.hub.api.jobs import Job, JobPage
from shopfloor.hub.api.models import (
    HealthResponse,
    MachineList,
    MachineViewModel,
    RejectedList,
    StatesResponse,
)
from shopfloor.hub.api.utilization_models import UtilizationResponse

_T0: Final = 1_764_000_000_000
_H: Final = 3_600_000

_MACHINE: Final[dict[str, Any]] = {
    "id": "mill-1",
    "agent": "pi-1",
    "site": "shop1",
    "name": "Haas VF-2",
    "kind": "cnc_mill",
    "protocol": "haas",
    "state": "RUNNING",
    "detail": "",
    "since": _T0,
    "last_seen": _T0 + 30_000,
    "program": "O01234",
    "phase": None,
    "job": {
        "job": "O01234-1764000000",
        "program": "O01234",
        "unit": "parts",
        "total": 20,
        "done": 5,
        "started": _T0,
        "eta_s": None,
        "segment": None,
        "id": 31,
        "eta_at": _T0 + 2 * _H,
        "eta_low_at": _T0 + 2 * _H - 600_000,
        "eta_high_at": _T0 + 2 * _H + 900_000,
        "eta_origin": "history",
        "order_ref": "1042",
    },
    "alarm": None,
    "online": True,
}

_STATES: Final = {
    "RUNNING": 5 * _H,
    "IDLE": 2 * _H,
    "PAUSED": 0,
    "SETUP": _H // 2,
    "ALARM": 0,
    "OFFLINE": _H // 2,
}
_FIGURES: Final[dict[str, Any]] = {
    "states_ms": _STATES,
    "productive_ms": 5 * _H,
    "window_ms": 8 * _H,
    "planned_ms": 8 * _H,
    "productive_planned_ms": 5 * _H,
    "utilization": 0.625,
    "utilization_planned": 0.625,
    "coverage": 0.9375,
}

_JOB: Final[dict[str, Any]] = {
    "id": 31,
    "machine": "mill-1",
    "agent_job": "O01234-1764000000",
    "program": "O01234 (ORDER 1042)",
    "unit": "parts",
    "source": "counter",
    "started_at": _T0,
    "ended_at": None,
    "running": True,
    "outcome": None,
    "done": 5,
    "total": 20,
    "progress": 0.25,
    "detail": {},
    "eta_at": _T0 + 2 * _H,
    "eta_low_at": _T0 + 2 * _H - 600_000,
    "eta_high_at": _T0 + 2 * _H + 900_000,
    "eta_origin": "history",
    "order_ref": "1042",
    "updated_at": _T0 + 1_800_000,
}

_UTILIZATION: Final[dict[str, Any]] = {
    "from": _T0,
    "to": _T0 + 8 * _H,
    "now": _T0 + 9 * _H,
    "bucket": "none",
    "definition": {
        "productive_states": ["RUNNING"],
        "denominators": {
            "window": "the whole window up to now",
            "planned": "planned shift time in the window",
        },
        "coverage": "observed (not OFFLINE) time / window",
        "timezone": "Europe/Berlin",
    },
    "machines": [
        {
            "machine": "mill-1",
            "calendar": "weekdays",
            "total": _FIGURES,
            "buckets": [
                {**_FIGURES, "start": _T0, "end": _T0 + 8 * _H, "label": "2025-11-24"},
            ],
        }
    ],
    "group": None,
    "total_machines": 1,
    "offset": 0,
    "limit": 50,
    "next_offset": None,
}

#: (method, path) -> (the response model, an example answer).
EXAMPLES: Final[dict[tuple[str, str], tuple[type[BaseModel], dict[str, Any]]]] = {
    ("get", "/api/v1/machines"): (MachineList, {"machines": [_MACHINE]}),
    ("get", "/api/v1/machines/{machine_id}"): (MachineViewModel, _MACHINE),
    ("get", "/api/v1/machines/{machine_id}/states"): (
        StatesResponse,
        {
            "machine": "mill-1",
            "from": _T0,
            "to": _T0 + 2 * _H,
            "intervals": [
                {
                    "state": "OFFLINE",
                    "detail": "no data",
                    "from": _T0,
                    "to": _T0 + 600_000,
                    "duration_ms": 600_000,
                },
                {
                    "state": "RUNNING",
                    "detail": "",
                    "from": _T0 + 600_000,
                    "to": _T0 + 2 * _H,
                    "duration_ms": 2 * _H - 600_000,
                },
            ],
            "coverage": 0.9167,
        },
    ),
    ("get", "/api/v1/machines/{machine_id}/utilization"): (UtilizationResponse, _UTILIZATION),
    ("get", "/api/v1/utilization"): (UtilizationResponse, _UTILIZATION),
    ("get", "/api/v1/health"): (
        HealthResponse,
        {
            "status": "ok",
            "store": True,
            "mqtt": {"enabled": True, "connected": True},
            "queue_depth": 0,
            "counters": {"received": 12840, "stored": 12838, "duplicates": 2},
            "rejected_by_reason": {"topic_mismatch": 1},
            "rejected_total": 1,
            "machines": 6,
            "stream_subscribers": 2,
            "stream_dropped": 0,
            "mirror": None,
        },
    ),
    ("get", "/api/v1/rejected"): (
        RejectedList,
        {
            "total": 1,
            "rejected": [
                {
                    "id": 1,
                    "received_at": _T0,
                    "topic": "shopfloor/v1/shop1/pi-1/mill-1/state",
                    "reason": "envelope machine 'mill-2' does not match the topic's 'mill-1'",
                    "payload": '{"v":1,"kind":"state","agent":"pi-1","machine":"mill-2"}',
                    "payload_bytes": 56,
                }
            ],
        },
    ),
    ("get", "/api/v1/jobs"): (JobPage, {"jobs": [_JOB], "next_cursor": None}),
    ("get", "/api/v1/jobs/{job_id}"): (Job, _JOB),
}


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` carry the examples above (computed once, like FastAPI's)."""
    plain: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = plain()
        for (method, path), (_, example) in EXAMPLES.items():
            op = doc.get("paths", {}).get(path, {}).get(method)
            if op is None:
                continue
            media = op["responses"].get("200", {}).get("content", {}).get("application/json")
            if media is not None and "example" not in media:
                media["example"] = example
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
