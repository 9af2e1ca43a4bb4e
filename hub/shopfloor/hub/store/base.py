"""The event store interface, and the plain records that cross it.

The store is the source of truth. Everything the hub derives (the live view per machine,
state intervals, utilization) can be rebuilt from it. SQLite implements it today
(:mod:`shopfloor.hub.store.sqlite`); PostgreSQL implements the same protocol later.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from shopfloor.contract import AgentStatus, Envelope, MachineState


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
        self, key: str, from_ms: int, to_ms: int, *, now_ms: int
    ) -> list[Interval]:
        """Contiguous intervals covering [from_ms, min(to_ms, now_ms)); no data = OFFLINE."""
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
