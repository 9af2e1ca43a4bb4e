"""The event store interface, and the plain records that cross it.

The store is the source of truth. Everything the hub derives (the live view per machine,
state intervals, utilization, jobs) can be rebuilt from it. Two backends implement it with
the same schema and answers: SQLite (:mod:`shopfloor.hub.store.sqlite`, the default) and
PostgreSQL (:mod:`shopfloor.hub.store.postgres`); :func:`~.factory.make_store` picks one
from ``[hub] database``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from shopfloor.contract import AgentStatus, Envelope, MachineState, RecordKind

if TYPE_CHECKING:
    from shopfloor.hub.orders.model import (
        DeliveryRow,
        DeliveryState,
        DueDelivery,
        LinkVia,
        NewChange,
        NewOrder,
        OrderChange,
        OrderLink,
        OrderRow,
        OrderStatus,
        WebhookRow,
    )


def machine_key(agent: str, machine: str) -> str:
    """The hub-internal machine key: unique even if two agents publish the same machine id."""
    return f"{agent}/{machine}"


class StateSource(enum.StrEnum):
    AGENT = "agent"  # a state record the agent published
    HUB = "hub"  # derived by the hub: agent lost, data stale, data returned


@dataclass(frozen=True, slots=True)
class Incoming:
    """An envelope as received, with what the hub knows about its arrival."""

    envelope: Envelope
    site: str
    received_at: int  # hub clock, epoch ms
    #: Delivered from the broker's retained store (old news), not live from the agent.
    retained: bool = False
    #: None when the agent's ``ts`` was believed; ``"corrected"`` when ``envelope.ts`` was
    #: replaced by mono + the agent's estimated clock offset; ``"flagged"`` when it was
    #: replaced by ``received_at`` (no offset known). See docs/contract.md "Clock sanity".
    clock: str | None = None
    #: The ``ts`` the agent sent, when ``clock`` is set.
    agent_ts: int | None = None


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    status: AgentStatus
    site: str
    received_at: int
    retained: bool = False


@dataclass(frozen=True, slots=True)
class Rejection:
    received_at: int
    topic: str
    payload: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class StateRow:
    """One state change of one machine, keyed by :func:`machine_key`."""

    machine_key: str
    ts: int
    state: MachineState
    detail: str = ""
    source: StateSource = StateSource.HUB


def agent_state_rows(records: Sequence[Incoming]) -> list[StateRow]:
    """The state rows the agent's own state records make, as every store writes them."""
    return [
        StateRow(
            machine_key=machine_key(i.envelope.agent, i.envelope.machine),
            ts=i.envelope.ts,
            state=MachineState(i.envelope.body["state"]),
            detail=str(i.envelope.body.get("detail") or ""),
            source=StateSource.AGENT,
        )
        for i in records
        if i.envelope.kind is RecordKind.STATE
    ]


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """Everything one ingest batch writes, committed in one transaction."""

    records: Sequence[Incoming] = ()
    statuses: Sequence[StatusUpdate] = ()
    rejections: Sequence[Rejection] = ()
    states: Sequence[StateRow] = ()


@dataclass(frozen=True, slots=True)
class BatchResult:
    new: Sequence[Incoming]  # the records that were not stored before, in batch order
    duplicates: int
    #: For every agent touched by the batch: stream -> highest contiguous seq committed.
    watermarks: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    #: The agent statuses that were applied (statuses from an older boot are ignored).
    statuses: Sequence[StatusUpdate] = ()


@dataclass(frozen=True, slots=True)
class StreamLag:
    """A stream whose contiguous seq is below the highest seq seen: a gap, or a reorder."""

    agent: str
    stream: str
    contiguous_seq: int
    max_seq: int


@dataclass(frozen=True, slots=True)
class DataLossRow:
    """Seqs an agent declared it will never send (its ``data_loss`` event)."""

    agent: str
    stream: str
    from_seq: int
    to_seq: int
    reason: str
    #: How many seqs of the range were not stored when the declaration arrived.
    missing: int
    received_at: int


@dataclass(frozen=True, slots=True)
class Interval:
    state: MachineState
    detail: str
    start: int  # epoch ms, inclusive
    end: int  # epoch ms, exclusive

    @property
    def duration_ms(self) -> int:
        return self.end - self.start


class TimeWindow(Protocol):
    """A window to sum time in state over: [start, end) of one machine, named by ``id``."""

    @property
    def id(self) -> int: ...

    @property
    def key(self) -> str: ...

    @property
    def start(self) -> int: ...

    @property
    def end(self) -> int: ...


@dataclass(frozen=True, slots=True)
class MachineRow:
    key: str
    agent: str
    machine: str
    site: str
    name: str
    kind: str | None
    protocol: str | None
    firmware: str | None
    last_seen: int | None
    meta: Mapping[str, Any]
    #: Body and ts of the newest (by ts) state record the agent published, if any.
    state_body: Mapping[str, Any] | None
    state_ts: int | None
    #: The newest state row (agent- or hub-sourced) for this machine, if any.
    latest: StateRow | None


@dataclass(frozen=True, slots=True)
class AgentRow:
    id: str
    site: str
    online: bool
    epoch: int
    version: str
    last_status_ts: int


@dataclass(frozen=True, slots=True)
class RejectedRow:
    id: int
    received_at: int
    topic: str
    payload: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A stored record read back in insertion order: the feed a downstream copy (the metrics
    mirror) follows. ``cursor`` grows with every insert (one writer) and never changes."""

    cursor: int
    agent: str
    stream: str
    seq: int
    machine: str
    kind: str  # a RecordKind value
    ts: int  # epoch ms (after clock sanity)
    body: Mapping[str, Any]


class JobOutcome(enum.StrEnum):
    COMPLETED = "completed"
    ABORTED = "aborted"
    FAILED = "failed"


class EtaOrigin(enum.StrEnum):
    """Where an ETA came from (docs/api.md "Jobs")."""

    LINEAR = "linear"  # elapsed time / progress, extrapolated
    HISTORY = "history"  # past runs of the same program on the same machine, blended with live
    SCHEDULE = "schedule"  # a kiln's firing schedule arithmetic (slips when the kiln lags)
    FIRMWARE = "firmware"  # the machine's own estimate (Marlin M73, a job_progress eta_s)


@dataclass(frozen=True, slots=True)
class JobRow:
    """One run of one program on one machine, as the hub knows it.

    Written by the job book (:mod:`shopfloor.hub.jobs`) from the agent's job events; read by
    the API, the wall, the order roll-up and the dashboards. ``id`` is the hub's own, stable
    across restarts; ``agent_job`` is the id the agent chose (unique per machine).
    """

    id: int
    machine_key: str
    agent_job: str
    program: str | None
    unit: str  # lines, bytes, parts, seconds (the machine's own unit)
    source: str | None  # proxy, firmware, schedule, counter
    started_at: int  # epoch ms
    ended_at: int | None  # None while running
    outcome: JobOutcome | None  # None while running
    done: float | None
    total: float | None
    #: Extra progress the machine reports in its own terms (kiln ``segment``, ``errors``).
    detail: Mapping[str, Any]
    eta_at: int | None  # epoch ms; None when no estimate can be made
    eta_low_at: int | None  # the range around eta_at
    eta_high_at: int | None
    eta_origin: EtaOrigin | None
    #: The order reference found by the configured pattern in the program name or header
    #: comment (for example ``(ORDER 1042)`` -> ``"1042"``), if any.
    order_ref: str | None
    updated_at: int  # epoch ms of the last change

    @property
    def progress(self) -> float | None:
        """done / total in [0, 1], or None when the total is unknown."""
        if self.done is None or not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))


class Store(Protocol):
    """The hub's async event store. One writer; reads may run concurrently."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """True if the database answers a trivial query."""
        ...

    async def write(self, batch: WriteBatch) -> BatchResult:
        """Commit ``batch`` in one transaction; idempotent on (agent, stream, seq)."""
        ...

    async def insert_batch(self, records: Sequence[Incoming]) -> int:
        """Store ``records`` idempotently in one transaction; return how many were new."""
        ...

    async def add_states(self, rows: Sequence[StateRow]) -> None: ...

    async def watermarks(self, agent: str) -> dict[str, int]: ...

    async def stream_progress(self, agent: str, stream: str) -> tuple[int, int] | None:
        """(contiguous_seq, max_seq) of one stream, or None if never seen."""
        ...

    async def lagging_streams(self) -> list[StreamLag]:
        """Every stream whose contiguous seq is below its max seq."""
        ...

    async def data_losses(self, agent: str | None = None) -> list[DataLossRow]:
        """The declared data losses (of one agent, or all), oldest first."""
        ...

    async def agent_sites(self) -> dict[str, str]:
        """Every agent the store knows (from records or statuses), with its site."""
        ...

    async def state_intervals(
        self,
        key: str,
        from_ms: int,
        to_ms: int,
        *,
        now_ms: int,
        heartbeat_gap_ms: int | None = None,
    ) -> list[Interval]:
        """Contiguous intervals covering [from_ms, min(to_ms, now_ms)); no data = OFFLINE.
        ``heartbeat_gap_ms`` voids hub OFFLINE rows by the same rule as :meth:`time_in_state`,
        so a timeline and the utilization of the same window agree."""
        ...

    async def time_in_state(
        self, windows: Sequence[TimeWindow], *, now_ms: int, heartbeat_gap_ms: int | None = None
    ) -> dict[int, dict[MachineState, int]]:
        """Per window id: milliseconds in each state over [start, min(end, now_ms)), summed
        inside the database from the state rows ordered by ts; no data = OFFLINE. With
        ``heartbeat_gap_ms``, hub-sourced OFFLINE rows inside an unbroken run of agent rows
        (no two more than that apart) are ignored."""
        ...

    async def machines(self) -> list[MachineRow]: ...

    async def agents(self) -> list[AgentRow]: ...

    async def rejected(self, limit: int) -> list[RejectedRow]:
        """The newest kept rejected messages, newest first."""
        ...

    async def rejected_total(self) -> int:
        """How many messages were ever rejected (the table itself keeps only the newest)."""
        ...

    async def records_after(self, cursor: int, limit: int) -> list[StoredRecord]:
        """Up to ``limit`` stored records with a cursor above ``cursor``, in cursor order."""
        ...

    # -- the record feed's consumers (the metrics mirror) -------------------------------------

    async def feed_head(self) -> int:
        """The highest record cursor stored so far; 0 when there are no records."""
        ...

    async def feed_cursor(self, name: str) -> int:
        """The cursor consumer ``name`` last committed; 0 (deliver everything) if never set."""
        ...

    async def set_feed_cursor(self, name: str, cursor: int) -> None:
        """Durably commit ``cursor`` (>= 0) as consumer ``name``'s position: every record up
        to and including it was delivered. Sets the value as given (no max())."""
        ...

    # -- jobs (see JobRow) ---------------------------------------------------------------------

    async def jobs(
        self,
        *,
        machine_key: str | None = None,
        order_ref: str | None = None,
        ids: Sequence[int] | None = None,
        running: bool | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[JobRow]:
        """Jobs matching every given filter, newest first (by ``id``, which grows with
        ``started_at``); ``since_ms``/``until_ms`` select jobs overlapping that span;
        ``after_id`` pages on (only ids below it)."""
        ...

    async def job(self, job_id: int) -> JobRow | None: ...


@runtime_checkable
class OrderStore(Store, Protocol):
    """A store that also keeps orders, their job links and status changes, webhook
    subscriptions and their outbox (store/sqlite_orders.py; docs/api.md "Orders",
    "Webhooks"). The order book runs only on such a store."""

    async def create_order(
        self, order: NewOrder, *, key: str | None, now: int
    ) -> tuple[OrderRow, bool]:
        """Create, or answer the order an earlier identical request created (True if new);
        raises IdempotencyConflictError for the same key with a different body."""
        ...

    async def order(self, order_id: int) -> OrderRow | None: ...

    async def order_by_ref(self, ref: str) -> OrderRow | None: ...

    async def orders(
        self,
        *,
        statuses: Sequence[OrderStatus] | None = None,
        ref: str | None = None,
        due_before: int | None = None,
        due_after: int | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[OrderRow]:
        """Orders matching every filter, newest first; ``after_id`` pages on."""
        ...

    async def link_job(self, order_id: int, job_id: int, *, via: LinkVia, now: int) -> bool: ...

    async def unlink_job(self, order_id: int, job_id: int) -> bool: ...

    async def order_links(self, order_id: int) -> list[OrderLink]: ...

    async def orders_of_jobs(self, job_ids: Sequence[int]) -> dict[int, int]: ...

    async def record_order_change(self, change: NewChange) -> OrderChange | None:
        """Status, change log and webhook outbox rows in one transaction (compare and set
        on the order's change_seq; None if it moved on)."""
        ...

    async def order_changes(
        self, *, order_id: int | None = None, after_id: int = 0, limit: int = 100
    ) -> list[OrderChange]: ...

    async def add_webhook(
        self, *, url: str, events: Sequence[str], secret: str, description: str, now: int
    ) -> WebhookRow: ...

    async def webhooks(self) -> list[WebhookRow]: ...

    async def webhook(self, webhook_id: int) -> WebhookRow | None: ...

    async def delete_webhook(self, webhook_id: int, *, now: int) -> bool: ...

    async def due_deliveries(self, now: int, limit: int) -> list[DueDelivery]: ...

    async def next_delivery_at(self) -> int | None: ...

    async def finish_attempt(
        self,
        delivery_id: int,
        *,
        state: DeliveryState,
        next_at: int,
        status: int | None,
        error: str | None,
        now: int,
    ) -> None: ...

    async def deliveries(
        self,
        *,
        webhook_id: int | None = None,
        state: DeliveryState | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[DeliveryRow]: ...

    async def delivery(self, delivery_id: int) -> DeliveryRow | None: ...

    async def delivery_counts(self) -> dict[str, int]:
        """How many deliveries are in each state (pending, delivered, dead): the outbox."""
        ...

    async def redeliver(self, webhook_id: int, delivery_id: int, *, now: int) -> bool: ...
