"""The JSON of an order and of an order change: one shape for the API, the event stream
and the webhooks (``api/order_models.py`` types it for OpenAPI)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from shopfloor.hub.orders.model import (
    ORDER_STATUS_CHANGED,
    LinkVia,
    OrderRow,
    OrderStatus,
)
from shopfloor.hub.orders.status import OrderSummary
from shopfloor.hub.store.base import JobRow

SCHEMA_VERSION: Final = 1


def order_json(
    order: OrderRow,
    summary: OrderSummary,
    jobs: Sequence[JobRow],
    links: Mapping[int, LinkVia],
    machine_ids: Mapping[str, str],
    *,
    status_since: int,
    change_seq: int,
) -> dict[str, Any]:
    """The order as every client sees it; ``machine_ids`` maps machine keys to public ids."""
    by_id = {j.id: j for j in jobs}
    job_list = []
    for share in summary.shares:
        job = by_id[share.job_id]
        job_list.append(
            {
                "id": job.id,
                "machine": machine_ids.get(job.machine_key, job.machine_key),
                "program": job.program,
                "unit": job.unit,
                "started_at": job.started_at,
                "ended_at": job.ended_at,
                "outcome": None if job.outcome is None else str(job.outcome),
                "done": job.done,
                "total": job.total,
                "progress": job.progress,
                "eta_at": job.eta_at,
                "eta_low_at": job.eta_low_at,
                "eta_high_at": job.eta_high_at,
                "eta_origin": None if job.eta_origin is None else str(job.eta_origin),
                "item": share.item,
                "pieces": share.pieces,
                "linked_via": str(links.get(job.id, LinkVia.API)),
            }
        )
    late = None
    if order.due_at is not None and summary.status is not OrderStatus.COMPLETED:
        late = summary.eta_at is not None and summary.eta_at > order.due_at
    return {
        "id": order.id,
        "ref": order.ref,
        "status": str(summary.status),
        "status_since": status_since,
        "reason": summary.reason,
        "items": [
            {**item.to_json(), "made": made}
            for item, made in zip(order.items, summary.made_per_item, strict=True)
        ],
        "ordered": summary.ordered,
        "made": summary.made,
        "progress": summary.progress,
        "due_at": order.due_at,
        "late": late,
        "note": order.note,
        "created_at": order.created_at,
        "eta": {
            "at": summary.eta_at,
            "low": summary.eta_low_at,
            "high": summary.eta_high_at,
            "origin": None if summary.eta_origin is None else str(summary.eta_origin),
            "note": summary.eta_note,
        },
        "jobs": job_list,
        "change_seq": change_seq,
    }


def change_json(
    *,
    event_id: str,
    seq: int,
    at: int,
    previous: OrderStatus,
    status: OrderStatus,
    order: Mapping[str, Any],
) -> str:
    """The body of a webhook delivery and the data of an SSE ``order`` event."""
    return json.dumps(
        {
            "id": event_id,
            "type": ORDER_STATUS_CHANGED,
            "version": SCHEMA_VERSION,
            "created_at": at,
            "order_id": order["id"],
            "ref": order["ref"],
            "seq": seq,
            "previous_status": str(previous),
            "status": str(status),
            "order": order,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )
