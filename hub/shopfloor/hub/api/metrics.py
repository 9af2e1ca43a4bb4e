"""``GET /metrics``: the hub's figures in the Prometheus text exposition format (0.0.4).

Written by hand (the format is small): a :class:`Family` per metric with its ``# HELP`` and
``# TYPE`` lines, label values escaped, counters named ``*_total``. What is measured:

- ingest: messages received, records stored, duplicates, messages rejected (by reason),
  batches, store errors, the intake queue and the messages held before their PUBACK;
- losses and gaps: seqs agents declared lost (their ``data_loss`` events), gaps detected
  and still open, replay requests, and the lag of every stream that has a gap (highest
  seq seen minus highest contiguous seq stored), with the worst one on its own;
- health: MQTT connected, store answering, agents online (each and in total), machines
  per state, event-stream (SSE) clients and the changes dropped for slow ones;
- the hub's own outboxes: webhook deliveries by state (pending is the outbox depth), the
  metrics mirror's lag in records and its consecutive failures.

The endpoint needs a token with the ``read`` scope once the hub has tokens, like the other
read endpoints: give Prometheus one with ``authorization: {credentials_file: ...}``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from fastapi import APIRouter, Response

from shopfloor.contract import MachineState
from shopfloor.contract.version import agent_version
from shopfloor.hub.api.deps import HubDep, ReadToken
from shopfloor.hub.errors import StoreError
from shopfloor.hub.runtime import Hub

router = APIRouter(tags=["metrics"])

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
PREFIX: Final = "shopfloor_hub_"
#: The rejection reasons ingest knows; each is shown (as 0) before it first happens.
REJECT_REASONS: Final = ("topic", "payload", "agent_mismatch", "machine_mismatch", "kind_mismatch")

_METRIC_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

MetricType = Literal["counter", "gauge", "untyped"]
Labels = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Sample:
    labels: Labels
    value: float


@dataclass(slots=True)
class Family:
    """One metric: its name, type, help text and samples."""

    name: str
    type: MetricType
    help: str
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _METRIC_NAME.fullmatch(self.name):
            raise ValueError(f"{self.name!r} is not a Prometheus metric name")
        if self.type == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name!r} must end in _total")

    def add(self, value: float, **labels: str) -> Family:
        for name in labels:
            if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
                raise ValueError(f"{name!r} is not a Prometheus label name")
        self.samples.append(Sample(labels, float(value)))
        return self


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**63:
        return str(int(value))
    return repr(value)


def render(families: Iterable[Family]) -> str:
    """The exposition text: every family's HELP, TYPE and samples, ending in a newline."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            labels = ",".join(
                f'{k}="{escape_label_value(v)}"' for k, v in sorted(sample.labels.items())
            )
            selector = f"{{{labels}}}" if labels else ""
            lines.append(f"{family.name}{selector} {format_value(sample.value)}")
    return "\n".join(lines) + "\n"


def _counter(name: str, help_: str, value: float) -> Family:
    return Family(PREFIX + name, "counter", help_).add(value)


def _gauge(name: str, help_: str, value: float) -> Family:
    return Family(PREFIX + name, "gauge", help_).add(value)


#: Ingest counters shown as Prometheus counters: counter key -> (metric name, help).
_INGEST_COUNTERS: Final = {
    "received": ("messages_received_total", "MQTT messages received by ingest"),
    "stored": ("records_stored_total", "records committed to the event store (new ones)"),
    "duplicates": (
        "records_duplicate_total",
        "records received again and not stored twice (replays, redeliveries)",
    ),
    "batches": ("store_batches_total", "batches committed to the event store"),
    "store_errors": ("store_errors_total", "failed attempts to commit a batch (retried)"),
    "statuses": ("agent_statuses_total", "agent status messages committed"),
    "connects": ("mqtt_connects_total", "successful connections to the MQTT broker"),
    "reads_paused": (
        "ingest_reads_paused_total",
        "times ingest stopped reading the broker because too many messages were pending",
    ),
    "acks_published": ("acks_published_total", "_ack watermarks published to agents"),
    "gaps_detected": ("gaps_detected_total", "stream gaps that led to a replay request"),
    "gaps_abandoned": (
        "gaps_abandoned_total",
        "gaps the hub gave up asking for after the maximum number of replay requests",
    ),
    "replay_requests": ("replay_requests_total", "_cmd/replay requests sent to agents"),
    "data_loss_events": ("data_loss_events_total", "data_loss events received from agents"),
    "data_loss_declared_seqs": (
        "data_loss_seqs_total",
        "records agents declared lost (dropped from a full outbox)",
    ),
    "clock_corrected": ("clock_corrected_total", "records whose timestamp the hub corrected"),
    "clock_flagged": ("clock_flagged_total", "records whose timestamp the hub flagged"),
}


async def collect(hub: Hub) -> list[Family]:
    """Every family, read from the running hub (ingest, trackers, store)."""
    ingest = hub.ingest.stats() if hub.ingest is not None else None
    counters: Mapping[str, int] = ingest.counters if ingest is not None else {}
    families = [
        Family(PREFIX + "info", "gauge", "the hub's version (always 1)").add(
            1, version=agent_version()
        )
    ]
    for key, (name, help_) in _INGEST_COUNTERS.items():
        families.append(_counter(name, help_, counters.get(key, 0)))
    rejected = Family(
        PREFIX + "messages_rejected_total", "counter", "messages rejected by ingest, by reason"
    )
    by_reason = dict.fromkeys(REJECT_REASONS, 0)
    by_reason.update(ingest.rejected_by_reason if ingest is not None else {})
    for reason, count in sorted(by_reason.items()):
        rejected.add(count, reason=reason)
    families.append(rejected)
    families += [
        _gauge(
            "mqtt_connected",
            "1 while ingest is connected to the broker",
            1 if ingest is not None and ingest.connected else 0,
        ),
        _gauge(
            "ingest_queue_depth",
            "messages waiting for the batch writer",
            ingest.queue_depth if ingest else 0,
        ),
        _gauge(
            "ingest_pending",
            "messages received and not yet acknowledged",
            counters.get("pending", 0),
        ),
        _gauge(
            "ingest_pending_limit",
            "pending messages at which ingest stops reading",
            counters.get("pending_limit", 0),
        ),
        _gauge("gaps_open", "streams with a gap right now", counters.get("gaps_open", 0)),
    ]
    families += await _store_families(hub)
    families += await _outbox_families(hub)
    families += _tracker_families(hub)
    return families


async def _store_families(hub: Hub) -> list[Family]:
    store_up = await hub.store.ping()
    families = [_gauge("store_up", "1 while the event store answers", 1 if store_up else 0)]
    lag = Family(
        PREFIX + "stream_lag_seqs",
        "gauge",
        "per stream with a gap: highest seq seen minus highest contiguous seq stored",
    )
    agents = Family(
        PREFIX + "agent_online", "gauge", "1 while the agent is online (its last status)"
    )
    worst = 0
    online = 0
    if store_up:
        try:
            lagging = await hub.store.lagging_streams()
            known = await hub.store.agents()
        except StoreError:
            lagging, known = [], []
        for row in lagging:
            behind = max(0, row.max_seq - row.contiguous_seq)
            worst = max(worst, behind)
            lag.add(behind, agent=row.agent, stream=row.stream)
        for a in sorted(known, key=lambda a: a.id):
            agents.add(1 if a.online else 0, agent=a.id, site=a.site)
            online += a.online
    families += [
        lag,
        _gauge("stream_lag_max_seqs", "the largest stream lag (0: no gaps)", worst),
        agents,
        _gauge("agents_online", "agents online", online),
    ]
    return families


async def _outbox_families(hub: Hub) -> list[Family]:
    """The hub's own outboxes: webhook deliveries by state, and the metrics mirror's lag."""
    families: list[Family] = []
    if hub.orders is not None:
        deliveries = Family(
            PREFIX + "webhook_deliveries",
            "gauge",
            "webhook deliveries by state: pending (the outbox), delivered, dead (gave up)",
        )
        try:
            counts = await hub.orders.store.delivery_counts()
        except StoreError:
            counts = {}
        for state, n in sorted(counts.items()):
            deliveries.add(n, state=state)
        families.append(deliveries)
    if hub.mirror is not None:
        h = await hub.mirror.health()
        families += [
            _gauge("mirror_lag_records", "stored records the mirror has not written yet", h.lag),
            _gauge(
                "mirror_consecutive_failures",
                "failed writes to InfluxDB/VictoriaMetrics since the last success",
                h.consecutive_failures,
            ),
        ]
    return families


def _tracker_families(hub: Hub) -> Sequence[Family]:
    views = hub.trackers.views()
    machines = Family(PREFIX + "machines", "gauge", "machines by current state")
    for state in MachineState:
        machines.add(sum(1 for v in views if v.state is state), state=str(state))
    offline = Family(
        PREFIX + "machine_offline_total",
        "counter",
        "times the hub turned a machine OFFLINE, by reason",
    )
    for reason in ("agent offline", "no data"):
        offline.add(hub.trackers.counters.get(reason, 0), reason=reason)
    feed = hub.trackers.feed
    return [
        machines,
        offline,
        _gauge("event_stream_clients", "open /api/v1/events streams (SSE)", feed.subscribers),
        _counter(
            "event_stream_dropped_total",
            "changes dropped for event-stream clients that read too slowly",
            feed.dropped,
        ),
    ]


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(hub: HubDep, _: ReadToken) -> Response:
    """The hub's figures for Prometheus (or VictoriaMetrics, or any scraper)."""
    return Response(render(await collect(hub)), media_type=CONTENT_TYPE)
