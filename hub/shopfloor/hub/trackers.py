"""The live view of every machine: one tracker per machine, and a feed of their changes.

Ingest pushes committed records and agent statuses in; the trackers answer with the
hub-sourced state rows to store (agent lost, data stale, data back) and publish every
changed :class:`MachineView` on the :class:`ChangeFeed`. Nothing here imports MQTT or
FastAPI, and time is passed in.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

from shopfloor.contract import MachineState, Observation, RecordKind, next_state
from shopfloor.hub.store.base import (
    AgentRow,
    BatchResult,
    Incoming,
    MachineRow,
    StateRow,
    StateSource,
    StatusUpdate,
    machine_key,
)

log = logging.getLogger(__name__)

DEFAULT_FEED_QUEUE: Final = 100


@dataclass(frozen=True, slots=True)
class Alarm:
    code: int | None
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "text": self.text}


@dataclass(frozen=True, slots=True)
class MachineView:
    """What the API, the event stream and the wall page show for one machine."""

    id: str
    agent: str
    site: str
    name: str
    kind: str | None
    protocol: str | None
    state: MachineState
    detail: str
    since: int  # epoch ms
    last_seen: int | None  # epoch ms, hub clock
    program: str | None
    alarm: Alarm | None
    online: bool
    #: The job in progress as the agent last told it (snapshot, then progress events).
    job: Mapping[str, Any] | None = None
    #: A kiln's firing phase (heating, soaking, cooling) while it runs.
    phase: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "agent": self.agent,
            "site": self.site,
            "name": self.name,
            "kind": self.kind,
            "protocol": self.protocol,
            "state": str(self.state),
            "detail": self.detail,
            "since": self.since,
            "last_seen": self.last_seen,
            "program": self.program,
            "phase": self.phase,
            "job": dict(self.job) if self.job is not None else None,
            "alarm": self.alarm.to_json() if self.alarm else None,
            "online": self.online,
        }


class OfflineReason:
    AGENT_LOST: Final = "agent offline"
    STALE: Final = "no data"


@dataclass(slots=True)
class MachineTracker:
    """The typed latest state of one machine. Mutated only by :class:`Trackers`."""

    key: str
    agent: str
    machine: str
    site: str
    name: str
    kind: str | None = None
    protocol: str | None = None
    #: What the agent last reported (by record ts), before the hub's OFFLINE overlay.
    reported: MachineState = MachineState.OFFLINE
    reported_detail: str = ""
    reported_since: int = 0
    reported_ts: int = -1
    program: str | None = None
    phase: str | None = None
    job: dict[str, Any] | None = None
    job_ts: int = -1
    #: The job book's figures for one job (hub id, ETA): (agent job id, fields).
    job_eta: tuple[str, dict[str, Any]] | None = None
    alarm: Alarm | None = None
    last_seen: int | None = None
    agent_online: bool = True
    #: Why the hub holds the machine OFFLINE (None: it shows what the agent reported).
    offline: str | None = None
    offline_since: int = 0

    @property
    def state(self) -> MachineState:
        return MachineState.OFFLINE if self.offline else self.reported

    def view(self, public_id: str) -> MachineView:
        return MachineView(
            id=public_id,
            agent=self.agent,
            site=self.site,
            name=self.name,
            kind=self.kind,
            protocol=self.protocol,
            state=self.state,
            detail=self.offline if self.offline else self.reported_detail,
            since=self.offline_since if self.offline else self.reported_since,
            last_seen=self.last_seen,
            program=self.program,
            alarm=self.alarm,
            online=self.agent_online,
            # An OFFLINE machine's job is unknown until it reports again; keep it, the
            # agent's next snapshot says whether it is still running.
            job=self._job_view(),
            phase=None if self.offline else self.phase,
        )

    def _job_view(self) -> Mapping[str, Any] | None:
        """The job as the agent told it, with the job book's ETA when it is about this job."""
        job = self.job
        eta = self.job_eta
        if job is None or eta is None or eta[0] != job.get("job"):
            return job
        return {**job, **{k: v for k, v in eta[1].items() if v is not None}}

    def apply_state(self, ts: int, body: Mapping[str, Any]) -> None:
        if ts < self.reported_ts:
            return  # a late (replayed) record; the store keeps it, the live view does not
        self.reported_ts = ts
        self.reported = MachineState(body["state"])
        self.reported_detail = _str(body.get("detail")) or ""
        since = body.get("since")
        self.reported_since = (
            since if isinstance(since, int) and not isinstance(since, bool) else ts
        )
        program = body.get("program")
        self.program = program if isinstance(program, str) and program else None
        self.phase = _str(body.get("phase"))
        if "job" in body and ts >= self.job_ts:
            job = body["job"]
            self.job = _job(job) if isinstance(job, Mapping) else None
            self.job_ts = ts
        if "alarm" in body:
            self.alarm = _alarm(body["alarm"])

    def apply_meta(self, body: Mapping[str, Any]) -> None:
        self.kind = _str(body.get("kind"))
        self.protocol = _str(body.get("protocol"))
        self.name = _str(body.get("name")) or self.machine

    def apply_event(self, ts: int, body: Mapping[str, Any]) -> None:
        event = body.get("event")
        if event == "alarm_raised":
            self.alarm = _alarm(body) or Alarm(None, "")
        elif event == "alarm_cleared":
            self.alarm = None
        elif isinstance(event, str) and event.startswith("job_") and ts >= self.job_ts:
            self._apply_job_event(ts, event, body)

    def _apply_job_event(self, ts: int, event: str, body: Mapping[str, Any]) -> None:
        """Live job progress between snapshots; older (replayed) job events are ignored."""
        if event == "job_started":
            self.job = _job({**body, "done": 0, "started": ts})
        elif self.job is None or body.get("job") != self.job.get("job"):
            return
        elif event == "job_progress":
            self.job.update(_job(body))
        elif event == "job_ended":
            self.job = None
        self.job_ts = ts


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


_JOB_FIELDS: Final = ("job", "program", "unit", "total", "done", "started", "eta_s", "segment")


def _job(value: Mapping[str, Any]) -> dict[str, Any]:
    """The job fields the view shows, from a snapshot's ``job`` or a job event's body."""
    return {k: value[k] for k in _JOB_FIELDS if value.get(k) is not None}


def _alarm(value: object) -> Alarm | None:
    if not isinstance(value, Mapping):
        return None
    code = value.get("code")
    return Alarm(
        code=code if isinstance(code, int) and not isinstance(code, bool) else None,
        text=_str(value.get("text")) or "",
    )


class Subscription:
    """One reader of the change feed: a bounded queue that drops its oldest entry when full."""

    def __init__(self, size: int) -> None:
        self._queue: asyncio.Queue[MachineView | None] = asyncio.Queue(maxsize=size)
        self.dropped = 0

    def _put(self, view: MachineView | None) -> None:
        while True:
            try:
                self._queue.put_nowait(view)
            except asyncio.QueueFull:
                self._queue.get_nowait()
                self.dropped += 1
            else:
                return

    async def get(self) -> MachineView | None:
        """The next change, or None once the feed is closed."""
        return await self._queue.get()


class ChangeFeed:
    """Broadcasts machine-view changes to any number of bounded subscriptions."""

    def __init__(self, queue_size: int = DEFAULT_FEED_QUEUE) -> None:
        self.queue_size = queue_size
        self._subscriptions: set[Subscription] = set()
        self._closed = False
        self.dropped = 0  # summed over all subscriptions, ever

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        sub = Subscription(self.queue_size)
        if self._closed:
            sub._put(None)
        self._subscriptions.add(sub)
        try:
            yield sub
        finally:
            self._subscriptions.discard(sub)

    def publish(self, view: MachineView) -> None:
        for sub in self._subscriptions:
            before = sub.dropped
            sub._put(view)
            self.dropped += sub.dropped - before

    def close(self) -> None:
        """End every subscription (at shutdown), so open streams finish."""
        self._closed = True
        for sub in self._subscriptions:
            sub._put(None)


class Trackers:
    """Every machine's tracker, keyed by agent+machine, with public ids that are unique."""

    def __init__(self, *, stale_after_ms: int, feed: ChangeFeed | None = None) -> None:
        self.stale_after_ms = stale_after_ms
        self.feed = feed if feed is not None else ChangeFeed()
        self._machines: dict[str, MachineTracker] = {}
        self._agents: dict[str, bool] = {}  # agent -> online
        self._ids: dict[str, str] = {}  # key -> public id
        self._by_id: dict[str, str] = {}  # public id -> key
        self.counters: Counter[str] = Counter()
        self._pending: dict[str, MachineTracker] = {}

    # -- loading -----------------------------------------------------------------------------

    def load(self, machines: Iterable[MachineRow], agents: Iterable[AgentRow]) -> None:
        """Rebuild the trackers from the store (at start)."""
        for a in agents:
            self._agents[a.id] = a.online
        for row in machines:
            t = MachineTracker(
                key=row.key, agent=row.agent, machine=row.machine, site=row.site, name=row.name
            )
            t.kind, t.protocol, t.last_seen = row.kind, row.protocol, row.last_seen
            if row.state_body is not None and row.state_ts is not None:
                t.apply_state(row.state_ts, row.state_body)
            t.agent_online = self._agents.get(row.agent, True)
            latest = row.latest
            if latest is not None and latest.source is StateSource.HUB:
                if latest.state is MachineState.OFFLINE:
                    t.offline = latest.detail or OfflineReason.STALE
                    t.offline_since = latest.ts
                else:
                    t.reported_since = latest.ts
            self._machines[row.key] = t
        self._reindex()

    def _reindex(self) -> None:
        counts = Counter(t.machine for t in self._machines.values())
        self._ids = {
            key: t.machine if counts[t.machine] == 1 else f"{t.agent}:{t.machine}"
            for key, t in self._machines.items()
        }
        self._by_id = {public: key for key, public in self._ids.items()}
        # The long form always works too, so links stay valid when a duplicate appears.
        for key, t in self._machines.items():
            self._by_id.setdefault(f"{t.agent}:{t.machine}", key)

    # -- reading -----------------------------------------------------------------------------

    def views(self) -> list[MachineView]:
        return sorted(
            (t.view(self._ids[k]) for k, t in self._machines.items()),
            key=lambda v: (v.name, v.id),
        )

    def get(self, public_id: str) -> MachineView | None:
        key = self._by_id.get(public_id)
        return self._machines[key].view(self._ids[key]) if key else None

    def key_of(self, public_id: str) -> str | None:
        return self._by_id.get(public_id)

    def public_id(self, key: str) -> str | None:
        """The public id of the machine with hub key ``key`` (agent/machine), if known."""
        return self._ids.get(key)

    def set_job_eta(self, key: str, agent_job: str, fields: Mapping[str, Any] | None) -> None:
        """The job book's figures (hub job id, ETA) for job ``agent_job`` of machine ``key``,
        shown in the view's ``job`` while that job is the machine's; None forgets them.
        The view is published with the next :meth:`publish_pending`."""
        t = self._machines.get(key)
        if t is None:
            return
        new = (agent_job, dict(fields)) if fields is not None else None
        if fields is None and (t.job_eta is None or t.job_eta[0] != agent_job):
            return
        if new == t.job_eta:
            return
        t.job_eta = new
        self._pending[key] = t

    # -- updating ----------------------------------------------------------------------------

    def apply(self, result: BatchResult) -> list[StateRow]:
        """Take in a committed batch; return the hub-sourced state rows to store.

        The changed views are published by :meth:`publish_pending`, which the caller runs
        once those rows are stored, so a client told of a change finds it in the store."""
        rows: list[StateRow] = []
        changed: dict[str, MachineTracker] = {}
        for inc in result.new:
            t = self._record(inc, rows)
            changed[t.key] = t
        for update in result.statuses:
            for t in self._status(update, rows):
                changed[t.key] = t
        self._pending.update(changed)
        return rows

    def publish_pending(self) -> None:
        """Publish every view changed since the last call on the change feed."""
        pending, self._pending = self._pending, {}
        for t in pending.values():
            self.feed.publish(t.view(self._ids[t.key]))

    def _tracker(self, inc: Incoming) -> MachineTracker:
        e = inc.envelope
        key = machine_key(e.agent, e.machine)
        t = self._machines.get(key)
        if t is None:
            t = MachineTracker(
                key=key, agent=e.agent, machine=e.machine, site=inc.site, name=e.machine
            )
            t.agent_online = self._agents.get(e.agent, True)
            clash = [o for o in self._machines.values() if o.machine == e.machine]
            if clash:
                log.warning(
                    "machine id %r is published by agents %s and %r; it is shown as "
                    "'agent:machine' until the ids are made unique",
                    e.machine,
                    ", ".join(repr(o.agent) for o in clash),
                    e.agent,
                )
            self._machines[key] = t
            self._reindex()
        return t

    def _record(self, inc: Incoming, rows: list[StateRow]) -> MachineTracker:
        e = inc.envelope
        t = self._tracker(inc)
        t.last_seen = max(t.last_seen or 0, inc.received_at)
        if e.kind is RecordKind.STATE:
            t.apply_state(e.ts, e.body)
        elif e.kind is RecordKind.META:
            t.apply_meta(e.body)
        elif e.kind is RecordKind.EVENT:
            t.apply_event(e.ts, e.body)
        if inc.retained:
            # Old news from the broker's retained store, not a sign of life: a machine
            # first seen this way while its agent is known to be offline is OFFLINE.
            if self._agents.get(e.agent) is False:
                t.agent_online = False
                self._go_offline(
                    t, Observation.AGENT_LOST, OfflineReason.AGENT_LOST, inc.received_at, rows
                )
            return t
        if not t.agent_online:
            # Live data proves the agent is alive even before its status says so.
            t.agent_online = self._agents[e.agent] = True
        if t.offline is not None and (not e.replay or e.ts > t.offline_since):
            # Back in the live view. No row is stored for it: the hub does not know the
            # machine's state since the mark (a state row at the arrival would claim the
            # pre-outage state over the replayed rows that follow, which are older). The
            # stored history resumes with the agent's next state row (a heartbeat at
            # most 15 s away, or the replay), and the heartbeat rule voids the mark when
            # the replay shows the agent kept observing.
            log.info("machine %s: data is back after %s", t.key, t.offline)
            t.offline = None
            t.reported_since = max(e.ts, t.offline_since) if e.replay else inc.received_at
            self.counters["recovered"] += 1
        return t

    def _status(self, update: StatusUpdate, rows: list[StateRow]) -> list[MachineTracker]:
        status = update.status
        was = self._agents.get(status.agent)
        self._agents[status.agent] = status.online
        mine = [t for t in self._machines.values() if t.agent == status.agent]
        for t in mine:
            t.agent_online = status.online
        if status.online or was is False:
            return mine
        # The agent's will fired (or it said goodbye): all its machines go OFFLINE now.
        at = update.received_at
        if update.retained:
            # Learned at start-up from the retained message: it happened after the last data.
            at = max([status.ts, *(t.last_seen or 0 for t in mine)])
        log.warning("agent %s is offline; its %d machine(s) are OFFLINE", status.agent, len(mine))
        for t in mine:
            self._go_offline(t, Observation.AGENT_LOST, OfflineReason.AGENT_LOST, at, rows)
        return mine

    def _go_offline(
        self, t: MachineTracker, obs: Observation, reason: str, at: int, rows: list[StateRow]
    ) -> bool:
        if t.offline is not None:
            return False
        new = next_state(t.state, obs)
        if new is not MachineState.OFFLINE:
            return False
        t.offline, t.offline_since = reason, at
        self.counters[reason] += 1
        rows.append(StateRow(t.key, at, MachineState.OFFLINE, reason))
        return True

    def check_stale(self, now_ms: int) -> list[StateRow]:
        """Machines with no data for ``stale_after_ms`` go OFFLINE; return the rows to store
        (and call :meth:`publish_pending` once they are)."""
        rows: list[StateRow] = []
        for t in self._machines.values():
            if t.last_seen is None or now_ms - t.last_seen < self.stale_after_ms:
                continue
            if self._go_offline(
                t,
                Observation.AGENT_LOST,
                OfflineReason.STALE,
                t.last_seen + self.stale_after_ms,
                rows,
            ):
                log.warning("machine %s: no data for %d ms, OFFLINE", t.key, now_ms - t.last_seen)
                self._pending[t.key] = t
        return rows


__all__ = [
    "Alarm",
    "ChangeFeed",
    "MachineTracker",
    "MachineView",
    "OfflineReason",
    "Subscription",
    "Trackers",
]
