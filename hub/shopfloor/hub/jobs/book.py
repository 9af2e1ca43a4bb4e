"""The job book: one run of one program on one machine, as a hub entity with an ETA.

Ingest hands the book every record it committed (:meth:`JobBook.apply`, records already
deduplicated by agent, stream and seq). The book turns the agents' ``job_started``,
``job_progress``, ``job_ended`` and ``part_counted`` events, the ``job`` of their state
snapshots and (for kilns) their telemetry into jobs, stores every change in the ``jobs``
table, pushes the ETA into the live machine view, and awaits its listeners with each
changed :class:`~shopfloor.hub.store.base.JobRow`.

Rules (docs/state-model.md "Jobs"):

- A job is keyed by machine + the agent's job id. A record about a job the book does not
  know yet (a progress whose start was lost, a snapshot) creates it; a later
  ``job_started`` corrects its start.
- Everything applies by ``ts``: progress figures older than the ones held are ignored, a
  replayed ``job_ended`` corrects a job that was closed otherwise, and nothing reopens an
  ended job.
- A machine runs one job at a time. A job that starts while an older one on the same
  machine has not ended closes the older one: outcome ``aborted``, ended at the new
  job's start, ``detail.end = "superseded"`` (its own ``job_ended``, if it ever arrives,
  still wins). A late ``job_started`` of a job older than one already known is closed by
  the next job the same way.
- A machine that goes OFFLINE keeps its job as last known: the hub invents no end.

Restart: the book reloads the open jobs from the store, then re-applies every stored
event and job-carrying state snapshot after its cursor (the insertion cursor of the last
record its stored jobs reflect, committed with them), so a crash between the records'
commit and the jobs' commit loses nothing; a fresh ``jobs`` table is rebuilt from all
stored events the same way. Telemetry is not replayed (too much of it): after a rebuild
the book re-applies the batch's own telemetry and job-less states.

Ingest starts the book with :meth:`JobBook.start`: the open jobs load before it connects,
the catch-up runs in the background in pages, and the batches committed meanwhile wait in
memory (up to ``_PENDING_MAX`` records; beyond, :meth:`JobBook.apply` waits for the
catch-up) to be applied after it, in commit order: nothing twice, nothing skipped.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from shopfloor.contract import MachineState, RecordKind
from shopfloor.hub.clock_sanity import MIN_VALID_TS
from shopfloor.hub.config import JobsSection
from shopfloor.hub.errors import StoreError
from shopfloor.hub.jobs.eta import (
    EtaInputs,
    LiveRun,
    PastRun,
    ProfileRecorder,
    estimate,
)
from shopfloor.hub.jobs.timeline import HELD_STATES, Timeline
from shopfloor.hub.store.base import Incoming, JobOutcome, JobRow, machine_key
from shopfloor.hub.store.job_records import EndReason, JobBookStore, JobRecord

if TYPE_CHECKING:
    from shopfloor.hub.trackers import Trackers

__all__ = ["JOB_EVENTS", "JobBook", "JobListener", "find_order_ref"]

log = logging.getLogger(__name__)

JobListener = Callable[[JobRow], Awaitable[None]]

JOB_EVENTS: Final = frozenset({"job_started", "job_progress", "job_ended"})
UNKNOWN_UNIT: Final = "unknown"
#: Header comments longer than this are cut (the agent bounds them too).
MAX_HEADER: Final = 2000
#: Ended jobs kept in memory for late events (open jobs always are).
DEFAULT_CACHE: Final = 512
#: Part times kept per machine, and cycles used for the parts ETA.
PART_TIMES: Final = 64
CYCLES: Final = 10
#: The catch-up cursor is written at least this often when nothing else changed.
CURSOR_EVERY_S: Final = 30.0
_CATCH_UP_PAGE: Final = 1000
#: Records of batches committed during a background catch-up held for after it; beyond
#: this, apply() waits for the catch-up (ingest then holds its PUBACKs).
_PENDING_MAX: Final = 20_000
#: Rounding slack of a kiln's "time left in the segment" (whole seconds).
_SLIP_TOLERANCE_MS: Final = 1500


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value) if math.isfinite(value) else None
    except OverflowError:  # an int beyond any float
        return None


def _replayed(inc: Incoming) -> bool:
    """Whether the store's catch-up replay (``job_events_after``) returns this record."""
    kind = inc.envelope.kind
    return kind is RecordKind.EVENT or (
        kind is RecordKind.STATE and isinstance(inc.envelope.body.get("job"), Mapping)
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def find_order_ref(pattern: Any, *texts: str | None) -> str | None:
    """The first match of ``pattern`` in ``texts`` (program name, then header): its group
    named ``ref``, else its first group. None without a pattern or a match."""
    if pattern is None:
        return None
    for text in texts:
        if not text:
            continue
        match = pattern.search(text)
        if match is None:
            continue
        ref = match.group("ref") if "ref" in pattern.groupindex else match.group(1)
        if ref:
            return str(ref)[:64]
    return None


@dataclass(slots=True)
class _Slip:
    """How far a kiln controller's schedule clock fell behind the wall clock (ms).

    Per segment: wall time since entering it minus how much the controller's "time left in
    the segment" went down. Nothing accumulates between samples, so the controller's
    whole-second rounding cannot add up."""

    committed_ms: float = 0.0
    segment: int | None = None
    entry_ts: int = 0
    entry_left_s: float = 0.0
    last_ts: int = 0
    current_ms: float = 0.0

    @property
    def total_ms(self) -> int:
        return round(self.committed_ms + self.current_ms)

    def sample(self, ts: int, segment: int, left_s: float) -> None:
        if ts <= self.last_ts:
            return
        self.last_ts = ts
        if segment != self.segment:
            self.committed_ms += self.current_ms
            self.current_ms = 0.0
            self.segment, self.entry_ts, self.entry_left_s = segment, ts, left_s
            return
        lag = (ts - self.entry_ts) - (self.entry_left_s - left_s) * 1000.0
        self.current_ms = max(0.0, lag - _SLIP_TOLERANCE_MS)


class JobBook:
    """See the module docstring. One instance per hub; :meth:`apply` is called by ingest
    after each commit, one batch at a time."""

    def __init__(
        self,
        store: JobBookStore,
        *,
        settings: JobsSection | None = None,
        trackers: Trackers | None = None,
        clock: Callable[[], int] = _wall_ms,
        cache_size: int = DEFAULT_CACHE,
    ) -> None:
        self.store = store
        self.settings = settings or JobsSection()
        self.trackers = trackers
        self.clock = clock
        self.cache_size = cache_size
        self._listeners: list[JobListener] = []
        self._lock = asyncio.Lock()
        self._loaded = False
        self._stale = False
        #: Started by start(): rebuilds catch up in the background too.
        self._background = False
        self._shut = False
        self._catch_up: asyncio.Task[None] | None = None
        self._caught_up = asyncio.Event()
        self._caught_up.set()
        #: Batches committed during a background catch-up, with the cursor after each.
        self._pending: list[tuple[list[Incoming], int]] = []
        self._pending_records = 0
        self._last_cursor_write = -math.inf
        self.counters: collections.Counter[str] = collections.Counter()
        self._reset()

    def _reset(self) -> None:
        self._cache: collections.OrderedDict[tuple[str, str], JobRecord] = collections.OrderedDict()
        self._saved: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._open: dict[str, tuple[str, str]] = {}
        self._timelines: dict[str, Timeline] = {}
        self._parts: dict[str, list[tuple[int, str | None]]] = {}
        self._slips: dict[tuple[str, str], _Slip] = {}
        self._seen: dict[str, int] = {}
        self._history: dict[tuple[str, str], list[PastRun]] = {}
        self._touched: dict[tuple[str, str], JobRecord] = {}

    # -- listeners -------------------------------------------------------------------------

    def add_listener(self, listener: JobListener) -> None:
        """Await ``listener`` with the new row after every committed change of a job
        (start, progress that moved, end, ETA change), listeners in registration order.
        A listener's exception is logged and does not stop the others."""
        self._listeners.append(listener)

    async def _notify(self, rows: Sequence[JobRow]) -> None:
        for row in rows:
            for listener in self._listeners:
                try:
                    await listener(row)
                except Exception:
                    self.counters["listener_errors"] += 1
                    log.exception("a job listener failed on job %d (%s)", row.id, row.agent_job)

    # -- reading ---------------------------------------------------------------------------

    def running(self, key: str) -> JobRecord | None:
        """The open job of machine ``key`` (agent/machine), if the book holds one."""
        found = self._open.get(key)
        return self._cache.get(found) if found is not None else None

    # -- loading ---------------------------------------------------------------------------

    async def load(self) -> list[JobRow]:
        """(Re)build from the store: open jobs, then every replayed record after the
        cursor, all before returning. Returns the rows that catching up changed (listeners
        were told)."""
        await self._stop_catch_up()
        self._shut = False
        async with self._lock:
            try:
                return await self._load()
            except BaseException:
                self._stale = True
                raise

    async def start(self) -> None:
        """Load the open jobs, then catch up in the background (ingest's start: it connects
        meanwhile). Rebuilds after an error run in the background too from now on. Await
        :meth:`caught_up` for the end of the catch-up; :meth:`close` stops it."""
        await self._stop_catch_up()
        self._background, self._shut = True, False
        async with self._lock:
            try:
                await self._begin_catch_up([])
            except BaseException:
                self._stale = True
                raise

    @property
    def stale(self) -> bool:
        """Memory may be ahead of the store: the next batch rebuilds the book."""
        return self._stale

    @property
    def catching_up(self) -> bool:
        return self._catch_up is not None

    async def caught_up(self) -> None:
        """Return once no background catch-up runs (at once if none does)."""
        await self._caught_up.wait()

    async def close(self) -> None:
        """Stop a background catch-up and take no more batches (they are stored: the next
        :meth:`start` or :meth:`load` catches up on them)."""
        self._shut = True
        await self._stop_catch_up()

    async def _stop_catch_up(self) -> None:
        task = self._catch_up
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _load_open(self) -> int:
        """Forget everything, load the open jobs and their timelines; the job cursor."""
        self._reset()
        self._loaded = True
        self._stale = False
        now = self.clock()
        for rec in await self.store.open_jobs():
            self._remember(rec)
            other = self.running(rec.machine_key)
            if other is not None and other.started_at > rec.started_at:
                continue
            self._open[rec.machine_key] = rec.key
        for key in list(self._open.values()):
            rec = self._cache[key]
            timeline = self._timeline(rec.machine_key)
            intervals = await self.store.state_intervals(
                rec.machine_key, rec.started_at, now, now_ms=now
            )
            timeline.extend((i.start, i.state) for i in intervals)
            slip = _number(rec.detail.get("slip_s"))
            if slip:
                self._slips[key] = _Slip(committed_ms=slip * 1000.0)
            self._show(rec)
        return await self.store.job_cursor()

    async def _load(self) -> list[JobRow]:
        cursor = await self._load_open()
        changed: list[JobRow] = []
        caught_up = 0
        while not self._stale:
            page = await self.store.job_events_after(cursor, _CATCH_UP_PAGE)
            if not page:
                break
            cursor = page[-1].cursor
            caught_up += len(page)
            changed += await self._apply([e.incoming for e in page], cursor=cursor)
        if caught_up:
            log.info("job book: caught up on %d stored record(s)", caught_up)
        return changed

    async def _begin_catch_up(self, leftover: list[Incoming]) -> None:
        """Under the lock: load the open jobs and start the background catch-up up to the
        newest stored record; ``leftover`` (not replayed records of the batch that made
        this rebuild) is applied after it."""
        cursor = await self._load_open()
        head = await self.store.record_cursor()
        self._pending = [(leftover, head)] if leftover else []
        self._pending_records = len(leftover)
        self._caught_up.clear()
        self._catch_up = asyncio.create_task(
            self._run_catch_up(cursor, head), name="hub.jobs.catch-up"
        )

    async def _run_catch_up(self, cursor: int, head: int) -> None:
        """Replay the stored records in (cursor, head] one page per lock hold, then the
        batches that arrived meanwhile, in order; on an error the book is stale (the next
        batch rebuilds)."""
        caught_up = 0
        finished = False
        try:
            while not finished:
                async with self._lock:
                    if self._is_stale():
                        return
                    page = await self.store.job_events_after(cursor, _CATCH_UP_PAGE)
                    mine = [e for e in page if e.cursor <= head]
                    if mine:
                        cursor = mine[-1].cursor
                        caught_up += len(mine)
                        await self._apply([e.incoming for e in mine], cursor=cursor)
                    if len(mine) < _CATCH_UP_PAGE or cursor >= head:
                        for records, at in self._pending:
                            if self._is_stale():
                                return
                            await self._apply(records, cursor=at)
                        finished = not self._is_stale()
                        if finished:
                            self._end_catch_up()
                await asyncio.sleep(0)  # let a waiting batch take the lock
            log.info("job book: caught up on %d stored record(s)", caught_up)
        except asyncio.CancelledError:
            self._stale = True
            raise
        except Exception:
            self._stale = True
            self.counters["store_errors"] += 1
            log.exception("job book: catching up failed; rebuilding with the next batch")
        finally:
            if not finished:
                self._end_catch_up()

    def _is_stale(self) -> bool:
        return self._stale  # a call: awaits in between may have changed it

    def _end_catch_up(self) -> None:
        self._pending = []
        self._pending_records = 0
        self._catch_up = None
        self._caught_up.set()

    # -- applying --------------------------------------------------------------------------

    async def apply(self, records: Sequence[Incoming]) -> list[JobRow]:
        """Take in records that were just committed; store, show and announce the jobs
        they changed. Returns the changed rows (none while a background catch-up holds the
        batch for after it)."""
        while True:
            async with self._lock:
                if self._shut:
                    return []
                if self._catch_up is None:
                    try:
                        return await self._apply_now(records)
                    except BaseException:
                        self._stale = True  # memory may be ahead of the store: rebuild
                        raise
                if self._pending_records + len(records) <= _PENDING_MAX or not self._pending:
                    try:
                        cursor = await self.store.record_cursor()
                    except BaseException:
                        self._stale = True  # the catch-up stops; the next batch rebuilds
                        raise
                    self._pending.append((list(records), cursor))
                    self._pending_records += len(records)
                    return []
                done = self._caught_up
            self.counters["waits_for_catch_up"] += 1
            await done.wait()

    async def _apply_now(self, records: Sequence[Incoming]) -> list[JobRow]:
        if self._loaded and not self._stale:
            cursor = await self.store.record_cursor()
            return await self._apply(records, cursor=cursor)
        # A rebuild: the stored records it replays include this batch's events and job
        # snapshots; its telemetry and job-less states are applied after them.
        leftover = [inc for inc in records if not _replayed(inc)]
        if self._background:
            await self._begin_catch_up(leftover)
            return []
        changed = await self._load()
        if leftover and not self._stale:
            changed += await self._apply(leftover, cursor=await self.store.record_cursor())
        return changed

    async def _apply(self, records: Sequence[Incoming], *, cursor: int) -> list[JobRow]:
        self._touched = {}
        try:
            for inc in records:
                await self._record(inc)
            for job in list(self._touched.values()):
                await self._finish(job)
            changed = [
                job
                for job in self._touched.values()
                if job.id is None or job.public() != self._saved.get(job.key)
            ]
            now = self.clock()
            due = time.monotonic() - self._last_cursor_write >= CURSOR_EVERY_S
            if not changed and not due:
                return []
            for job in changed:
                job.updated_at = now
            saved = await self.store.save_jobs(changed, cursor=cursor)
        except StoreError:
            # Memory may now be ahead of the store: rebuild from it on the next batch.
            self._stale = True
            self.counters["store_errors"] += 1
            log.exception("job book: storing job changes failed; rebuilding from the store")
            return []
        finally:
            self._touched = {}
        self._last_cursor_write = time.monotonic()
        rows = []
        for job, stored in zip(changed, saved, strict=True):
            job.id = stored.id
            self._saved[job.key] = job.public()
            rows.append(job.to_row())
            self._show(job)
        self._trim()
        self.counters["changes"] += len(rows)
        await self._notify(rows)
        return rows

    async def _record(self, inc: Incoming) -> None:
        e = inc.envelope
        key = machine_key(e.agent, e.machine)
        self._seen[key] = max(self._seen.get(key, 0), e.ts)
        body = e.body
        if e.kind is RecordKind.EVENT:
            event = body.get("event")
            if event in JOB_EVENTS:
                await self._job_event(key, e.ts, str(event), body)
            elif event == "part_counted":
                self._part(key, e.ts, body)
                job = self.running(key)
                program = _text(body.get("program"))
                if job is not None and job.program is None and program and e.ts >= job.started_at:
                    # A Haas job can start before the machine names its program.
                    self._describe(job, {"program": program}, overwrite=False)
                self._touch_open(key)
        elif e.kind is RecordKind.STATE:
            try:
                state = MachineState(str(body.get("state")))
            except ValueError:
                return
            self._timeline(key).add(e.ts, state)
            snapshot = body.get("job")
            if isinstance(snapshot, Mapping):
                await self._snapshot(key, e.ts, snapshot)
            self._touch_open(key)
        elif e.kind is RecordKind.TELEMETRY:
            self._telemetry(key, body)

    def _touch(self, job: JobRecord) -> None:
        self._touched[job.key] = job

    def _touch_open(self, key: str) -> None:
        job = self.running(key)
        if job is not None:
            self._touch(job)

    # -- job events ------------------------------------------------------------------------

    async def _lookup(self, key: str, agent_job: str) -> JobRecord | None:
        found = self._cache.get((key, agent_job))
        if found is None:
            found = await self.store.job_record(key, agent_job)
            if found is not None:
                self._remember(found)
        else:
            self._cache.move_to_end(found.key)
        return found

    def _remember(self, job: JobRecord) -> None:
        self._cache[job.key] = job
        if job.id is not None:
            self._saved.setdefault(job.key, job.public())

    async def _create(self, key: str, agent_job: str, started_at: int) -> JobRecord:
        job = JobRecord(
            id=None, machine_key=key, agent_job=agent_job, program=None, unit=UNKNOWN_UNIT,
            source=None, started_at=started_at,
        )  # fmt: skip
        self._remember(job)
        self._touch(job)
        return job

    async def _job_event(self, key: str, ts: int, event: str, body: Mapping[str, Any]) -> None:
        agent_job = _text(body.get("job"))
        if agent_job is None:
            return
        job = await self._lookup(key, agent_job)
        if event == "job_started":
            if job is None:
                job = await self._create(key, agent_job, ts)
            moved = job.started_at != ts
            job.started_at, job.started_known = ts, True
            self._describe(job, body, overwrite=True)
            self._touch(job)
            if moved or job.id is None:
                await self._place(job)
            return
        if job is None:
            job = await self._create(key, agent_job, ts)
            self._describe(job, body, overwrite=False)
            await self._place(job)
        else:
            # Fills only what is missing: a Haas names its program only once it is idle
            # between parts, in a job_progress (docs/contract.md).
            self._describe(job, body, overwrite=False)
        self._touch(job)
        self._progress(job, ts, body, event=True, final=event == "job_ended")
        if event == "job_ended":
            self._end(job, ts, body.get("outcome"))

    async def _snapshot(self, key: str, ts: int, snap: Mapping[str, Any]) -> None:
        agent_job = _text(snap.get("job"))
        if agent_job is None:
            return
        job = await self._lookup(key, agent_job)
        if job is None:
            started = snap.get("started")
            start = ts  # a start before 2020 or after the snapshot is no start
            if isinstance(started, int) and not isinstance(started, bool):
                start = started if MIN_VALID_TS <= started <= ts else ts
            job = await self._create(key, agent_job, start)
            self._describe(job, snap, overwrite=False)
            await self._place(job)
        else:
            self._describe(job, snap, overwrite=False)
        self._touch(job)
        self._progress(job, ts, snap, event=False, final=False)

    def _describe(self, job: JobRecord, body: Mapping[str, Any], *, overwrite: bool) -> None:
        """Program, unit, source, header (and total, if none is known) from a start or
        snapshot; ``overwrite``: the job_started's own values win over inferred ones."""
        before = (job.program, job.header)
        for name in ("program", "source", "header"):
            value = _text(body.get(name))
            if value is not None and (overwrite or getattr(job, name) is None):
                setattr(job, name, value[:MAX_HEADER] if name == "header" else value[:200])
        unit = _text(body.get("unit"))
        if unit is not None and (overwrite or job.unit == UNKNOWN_UNIT):
            job.unit = unit[:32]
        total = _number(body.get("total"))
        if total is not None and (overwrite or job.total is None):
            job.total = total
        if (job.program, job.header) != before or job.id is None:
            job.order_ref = find_order_ref(self.settings.order_pattern, job.program, job.header)

    async def _place(self, job: JobRecord) -> None:
        """A job was created or its start moved: close whichever job it makes stale."""
        key = job.machine_key
        later = await self._next_start(key, job.started_at, job.key)
        if later is not None:
            # A newer job is known: this one (a late start) was over when that one began.
            self._supersede(job, later)
            return
        current = self.running(key)
        if current is not None and current is not job:
            self._supersede(current, job.started_at)
        if job.ended_at is None:
            self._open[key] = job.key

    async def _next_start(self, key: str, after: int, exclude: tuple[str, str]) -> int | None:
        found = await self.store.next_job_start(key, after, exclude=exclude)
        for other in self._cache.values():
            if other.machine_key == key and other.key != exclude and other.started_at > after:
                found = other.started_at if found is None else min(found, other.started_at)
        return found

    def _supersede(self, job: JobRecord, at: int) -> None:
        if job.end_reason is EndReason.EVENT:
            return
        at = max(at, job.started_at)
        superseded = job.end_reason is EndReason.SUPERSEDED and job.ended_at is not None
        if superseded and job.ended_at is not None and job.ended_at <= at:
            return
        job.ended_at, job.outcome, job.end_reason = at, JobOutcome.ABORTED, EndReason.SUPERSEDED
        job.detail["end"] = "superseded"
        job.active_ms = None
        self._closed(job)
        self.counters["superseded"] += 1

    def _closed(self, job: JobRecord) -> None:
        if self._open.get(job.machine_key) == job.key:
            del self._open[job.machine_key]
        self._slips.pop(job.key, None)
        self._touch(job)

    def _progress(
        self, job: JobRecord, ts: int, body: Mapping[str, Any], *, event: bool, final: bool
    ) -> None:
        if job.ended_at is not None and ts > job.ended_at and not final:
            return  # after the job's end: not about this run
        if job.progress_ts is not None and ts < job.progress_ts:
            return  # older figures than the ones held (a replay)
        done = _number(body.get("done"))
        total = _number(body.get("total"))
        if done is not None:
            job.done = max(0.0, done)
        if total is not None and total > 0:
            job.total = total
        if event:
            for name in ("segment", "errors"):
                value = body.get(name)
                if isinstance(value, int) and not isinstance(value, bool):
                    job.detail[name] = value
            eta_s = _number(body.get("eta_s"))
            if eta_s is not None and not final:
                job.detail["eta_s"] = eta_s
            else:
                job.detail.pop("eta_s", None)
        job.progress_ts = ts
        fraction = _fraction(job)
        if fraction is not None and job.ended_at is None:
            recorder = ProfileRecorder.from_json(job.profile)
            recorder.add(fraction, self._active(job, ts))
            job.profile = recorder.to_json()

    def _end(self, job: JobRecord, ts: int, outcome: object) -> None:
        try:
            result = JobOutcome(str(outcome))
        except ValueError:
            reached = job.total is not None and (job.done or 0) >= job.total
            result = JobOutcome.COMPLETED if reached else JobOutcome.ABORTED
        job.ended_at = max(ts, job.started_at)
        job.outcome = result
        job.end_reason = EndReason.EVENT
        job.detail.pop("end", None)
        job.active_ms = None
        self._closed(job)
        if result is JobOutcome.COMPLETED:
            for hkey in [k for k in self._history if k[0] == job.machine_key]:
                del self._history[hkey]

    # -- parts and kilns -------------------------------------------------------------------

    def _part(self, key: str, ts: int, body: Mapping[str, Any]) -> None:
        times = self._parts.get(key)
        if times is None:
            times = self._parts[key] = []
        entry = (ts, _text(body.get("program")))
        i = bisect.bisect_left(times, entry)
        if i < len(times) and times[i] == entry:
            return
        times.insert(i, entry)
        del times[:-PART_TIMES]

    def _telemetry(self, key: str, body: Mapping[str, Any]) -> None:
        job = self.running(key)
        if job is None or job.unit != "seconds":
            return
        samples = body.get("samples")
        if not isinstance(samples, list):
            return
        slip = self._slips.setdefault(job.key, _Slip())
        before = slip.total_ms
        for sample in samples:
            if not isinstance(sample, Mapping):
                continue
            ts, values = sample.get("ts"), sample.get("values")
            if not isinstance(ts, int) or not isinstance(values, Mapping) or ts < job.started_at:
                continue
            segment = values.get("segment")
            left = _number(values.get("segment_remaining_s"))
            seg = _number(segment)
            if seg is None or left is None:
                continue
            slip.sample(ts, int(seg), left)
        if round(slip.total_ms / 1000) != round(before / 1000):
            job.detail["slip_s"] = round(slip.total_ms / 1000)
            self._touch(job)

    # -- estimates -------------------------------------------------------------------------

    def _timeline(self, key: str) -> Timeline:
        found = self._timelines.get(key)
        if found is None:
            found = self._timelines[key] = Timeline()
        return found

    def _active(self, job: JobRecord, until: int) -> int:
        timeline = self._timelines.get(job.machine_key)
        if timeline is None:
            return max(0, until - job.started_at)
        return timeline.active_ms(job.started_at, until)

    async def _finish(self, job: JobRecord) -> None:
        """After a batch: working time and profile of an ended job, the ETA of a running one."""
        if job.ended_at is not None:
            if job.active_ms is None:
                job.active_ms = await self._stored_active(job)
                if (
                    job.outcome is JobOutcome.COMPLETED
                    and job.end_reason is EndReason.EVENT
                    and job.total
                    and (job.done or 0) >= job.total
                ):
                    recorder = ProfileRecorder.from_json(job.profile)
                    recorder.add(1.0, job.active_ms)
                    job.profile = recorder.to_json()
            job.eta_at = job.eta_low_at = job.eta_high_at = None
            job.eta_origin = None
            return
        found = estimate(await self._inputs(job))
        if found is None:
            job.eta_at = job.eta_low_at = job.eta_high_at = None
            job.eta_origin = None
        else:
            job.eta_at, job.eta_low_at, job.eta_high_at = found.at, found.low, found.high
            job.eta_origin = found.origin

    async def _stored_active(self, job: JobRecord) -> int:
        """Working time of an ended job from the stored state changes (late ones included)."""
        assert job.ended_at is not None
        intervals = await self.store.state_intervals(
            job.machine_key, job.started_at, job.ended_at, now_ms=job.ended_at
        )
        held = sum(i.duration_ms for i in intervals if i.state in HELD_STATES)
        return max(0, job.ended_at - job.started_at - held)

    async def _inputs(self, job: JobRecord) -> EtaInputs:
        key = job.machine_key
        as_of = max(self._seen.get(key, 0), job.progress_ts or 0, job.started_at)
        at_progress = job.progress_ts if job.progress_ts is not None else job.started_at
        active_then = self._active(job, at_progress)
        live = LiveRun(
            started_at=job.started_at,
            as_of=as_of,
            done=job.done,
            total=job.total,
            active_ms=active_then,
            progress_at=job.progress_ts,
            active_since_progress_ms=max(0, self._active(job, as_of) - active_then),
        )
        eta_s = _number(job.detail.get("eta_s"))
        inputs = EtaInputs(live=live, unit=job.unit, firmware_eta_s=eta_s)
        if job.unit == "seconds" and job.total is not None:
            slip = self._slips.get(job.key)
            return EtaInputs(live=live, unit=job.unit, slip_ms=slip.total_ms if slip else 0)
        if eta_s is not None:
            return inputs
        cycles: list[int] = []
        from_history = False
        last_part = job.started_at
        if job.unit == "parts":
            cycles, from_history, last_part = await self._cycles(job, as_of)
        history = await self._past(job) if not cycles else []
        return EtaInputs(
            live=live,
            unit=job.unit,
            history=history,
            cycles_ms=cycles,
            cycles_from_history=from_history,
            last_part_at=last_part,
        )

    async def _cycles(self, job: JobRecord, as_of: int) -> tuple[list[int], bool, int]:
        key = job.machine_key
        times = self._parts.get(key)
        if times is None or len(times) < PART_TIMES // 2:
            stored = await self.store.part_times(key, PART_TIMES)
            merged = sorted(set(stored) | set(times or ()))
            times = self._parts[key] = merged[-PART_TIMES:]
        same = [
            (ts, program)
            for ts, program in times
            if ts <= as_of and (job.program is None or program in (None, job.program))
        ]
        cycles: list[int] = []
        from_history = False
        for (t0, p0), (t1, p1) in itertools.pairwise(same):
            if p0 != p1:
                continue
            if t1 > job.started_at >= t0:
                cycles.append(t1 - job.started_at)  # the first part of this job: from its start
                continue
            cycles.append(t1 - t0)
            from_history = from_history or t0 < job.started_at
        cycles = cycles[-CYCLES:]
        last = max([job.started_at, *(ts for ts, _ in same if ts >= job.started_at)])
        return cycles, from_history and bool(cycles), last

    async def _past(self, job: JobRecord) -> list[PastRun]:
        if self.settings.history_runs <= 0 or (job.program is None and job.total is None):
            return []
        found = self._history.get(job.key)
        if found is None:
            rows = await self.store.past_runs(
                job.machine_key,
                program=job.program,
                total=job.total,
                unit=job.unit,
                before_ms=job.started_at,
                limit=self.settings.history_runs,
            )
            found = []
            for row in rows:
                marks = ProfileRecorder.from_json(row.profile)
                profile = tuple(marks.marks) if marks.complete else ()
                found.append(PastRun(active_ms=row.active_ms, total=row.total, profile=profile))
            self._history[job.key] = found
        return found

    # -- the live view ---------------------------------------------------------------------

    def _show(self, job: JobRecord) -> None:
        if self.trackers is None:
            return
        if job.ended_at is not None:
            self.trackers.set_job_eta(job.machine_key, job.agent_job, None)
            return
        self.trackers.set_job_eta(
            job.machine_key,
            job.agent_job,
            {
                "id": job.id,
                "eta_at": job.eta_at,
                "eta_low_at": job.eta_low_at,
                "eta_high_at": job.eta_high_at,
                "eta_origin": str(job.eta_origin) if job.eta_origin else None,
                "order_ref": job.order_ref,
            },
        )

    def _trim(self) -> None:
        pinned = set(self._open.values())
        while len(self._cache) > self.cache_size:
            for key in self._cache:
                if key not in pinned:
                    del self._cache[key]
                    self._saved.pop(key, None)
                    self._history.pop(key, None)
                    break
            else:
                break
        for machine, timeline in list(self._timelines.items()):
            job = self.running(machine)
            if job is None:
                del self._timelines[machine]
            else:
                timeline.trim(job.started_at)


def _fraction(job: JobRecord) -> float | None:
    if job.done is None or not job.total:
        return None
    return max(0.0, min(1.0, job.done / job.total))
