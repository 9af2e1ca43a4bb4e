"""Watch a GRBL sender's stream from the middle: sans-IO, time passed in.

:class:`StreamWatcher` sees the bytes a sender writes to the controller
(:meth:`~StreamWatcher.host_bytes`) and the bytes the controller writes back
(:meth:`~StreamWatcher.device_bytes`). It never changes or holds them back: the proxy
forwards every byte itself. From what it sees it reports what a polled session reports
(readings, alarms, messages, device info) plus the job the sender is streaming:
``job_started``, ``job_progress`` (at most every ``progress_interval_s``) and
``job_ended`` device events in the unit ``lines``, with ``source = "proxy"``.

How lines are matched to answers mirrors Grbl itself (serial-protocols.md §1.1, §1.2, §1.6):

- ``?``, ``!``, ``~``, 0x18 and bytes above 0x7F are real-time bytes wherever they appear
  (even inside a comment); they are not part of a line and get no ``ok``.
- Every ``\\n`` or ``\\r`` ends a line, an empty one included, and every line gets exactly
  one ``ok`` or ``error:N``, in order. So a FIFO of sent lines, popped by each ``ok`` or
  ``error``, tells which line was acknowledged, whatever streaming scheme the sender uses.
- A soft reset (0x18) or a banner (power-up, reset) flushes Grbl's buffers: the FIFO is
  cleared when the banner arrives.

Job boundaries (serial-protocols.md §6: a short Idle mid-job in spindle mode is not an end):

- A job starts with the first program line (any non-empty line that is not a ``$``
  command) sent while no job runs and the machine is not in Alarm, once ``min_job_lines``
  program lines have followed without a gap of ``end_quiet_s`` (typing a few lines in a
  console is not a job).
- It ends *completed* when every line sent is acknowledged, the machine has reported Idle
  for ``end_idle_s`` since the last answer, and either the known total was reached or
  nothing was sent or answered for ``end_quiet_s``. When the total is known and not
  reached, a quiet sender ends the job only after ``stalled_end_s``, as *aborted*.
- It ends *aborted* when the sender sends a soft reset (0x18); *failed* on an ``ALARM:``,
  on a banner nobody asked for (the controller rebooted) or when the link is lost
  (:meth:`~StreamWatcher.link_lost`).

Total and program name come from header comments (patterns configurable, see
:data:`DEFAULT_TOTAL_PATTERNS` and :data:`DEFAULT_PROGRAM_PATTERNS`); without a program
pattern match the first comment of the program is used. A total the hub knows can be set
with :meth:`~StreamWatcher.set_total`.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from shopfloor.agent.adapters.grbl import GrblAdapter
from shopfloor.agent.protocols.grbl import (
    AlarmPush,
    Banner,
    ErrorReply,
    GrblProtocol,
    Ok,
    StatusReport,
)
from shopfloor.agent.readings import DeviceEvent, DeviceInfo, Reading

__all__ = [
    "DEFAULT_PROGRAM_PATTERNS",
    "DEFAULT_TOTAL_PATTERNS",
    "JobOutcome",
    "StreamWatcher",
    "WatchItem",
    "WatcherSettings",
]

WatchItem = Reading | DeviceEvent | DeviceInfo
JobOutcome = Literal["completed", "aborted", "failed"]

#: Header comments that give the number of lines, e.g. ``(Lines: 2000)``, ``; total lines: 2000``.
DEFAULT_TOTAL_PATTERNS: Final = (
    r"(?i)\(\s*(?:total\s+)?lines?\s*[:=]\s*(?P<total>\d+)\s*\)",
    r"(?i);\s*(?:total\s+)?lines?\s*[:=]\s*(?P<total>\d+)",
)
#: Header comments that name the program, e.g. ``(Program: sign.nc)``, ``; file: sign.nc``.
DEFAULT_PROGRAM_PATTERNS: Final = (
    r"(?i)\(\s*(?:program|file|filename|name|job)\s*[:=]\s*(?P<program>[^)]+?)\s*\)",
    r"(?i);\s*(?:program|file|filename|name|job)\s*[:=]\s*(?P<program>.+?)\s*$",
)

#: Bytes Grbl takes out of the stream as real-time commands (gnea 1.1h and grblHAL).
_RESET: Final = 0x18
_QUERIES: Final = frozenset({ord("?"), 0x80, 0x87})  # ?, grblHAL alt-? and full report
_RT_ASCII: Final = frozenset({ord("?"), ord("!"), ord("~"), _RESET})
_PROGRAM_MAX: Final = 120
_COMMENT_RE: Final = re.compile(r"\(([^)]*)\)|;(.*)$")
#: Lines of a job whose comments may name the program.
_HEADER_LINES: Final = 50
#: The job's header: its leading comment-only lines, sent in ``job_started`` as ``header``
#: (the hub looks for an order reference there). At most this many lines and characters;
#: ``job_started`` waits for the first line that is not a comment, or for the cap.
HEADER_MAX_LINES: Final = 20
HEADER_MAX_CHARS: Final = 1000
_COMMENT_ONLY_RE: Final = re.compile(r"(?:\([^)]*\)\s*)+|;.*|%")


@dataclass(frozen=True, slots=True)
class WatcherSettings:
    """Tunables of :class:`StreamWatcher`; times in seconds."""

    poll_interval_s: float = 0.25
    end_idle_s: float = 0.5
    end_quiet_s: float = 2.0
    stalled_end_s: float = 300.0
    min_job_lines: int = 3
    progress_interval_s: float = 1.0
    total_patterns: Sequence[str] = DEFAULT_TOTAL_PATTERNS
    program_patterns: Sequence[str] = DEFAULT_PROGRAM_PATTERNS
    laser_mode: bool = False
    max_line_bytes: int = 256


@dataclass(slots=True)
class _Job:
    id: str
    start_ts: int
    start_mono: int
    started: bool = False  # job_started emitted
    sent: int = 0  # program lines sent
    done: int = 0  # program lines acknowledged
    errors: int = 0
    total: int | None = None
    program: str | None = None
    first_comment: str | None = None
    #: Leading comment-only lines (their text), until the first other line.
    header: list[str] = field(default_factory=list)
    header_open: bool = True
    last_progress_mono: int | None = None
    progressed: int = 0  # done at the last job_progress


@dataclass(slots=True)
class _Stats:
    lines_sent: int = 0
    lines_acked: int = 0
    unmatched_acks: int = 0
    injected_queries: int = 0
    host_queries: int = 0
    jobs: int = 0


@dataclass(slots=True)
class _Pending:
    program_line: bool
    job: str | None
    sent_mono: int
    text: str = field(default="", repr=False)


class StreamWatcher:
    """See the module docstring. Every method returns the items to hand the tracker."""

    def __init__(self, settings: WatcherSettings | None = None, *, job_ids: str = "") -> None:
        self.settings = s = settings or WatcherSettings()
        self._total_res = [re.compile(p) for p in s.total_patterns]
        self._program_res = [re.compile(p) for p in s.program_patterns]
        self.adapter = GrblAdapter(laser_mode=s.laser_mode)
        self._parser = GrblProtocol(s.max_line_bytes)
        self._line = bytearray()
        self._line_overflow = False
        self._pending: collections.deque[_Pending] = collections.deque()
        self._job: _Job | None = None
        self._ids = itertools.count(1)
        self._id_prefix = job_ids
        self._last_line_mono: int | None = None
        self._last_ack_mono: int | None = None
        self._last_query_mono: int | None = None
        self._idle_since: int | None = None
        self._last_state = ""
        self._alarm = False
        self._program: str | None = None
        self.stats = _Stats()

    # ------------------------------------------------------------------ properties

    @property
    def in_flight(self) -> int:
        """Lines sent and not yet acknowledged."""
        return len(self._pending)

    @property
    def job(self) -> dict[str, object] | None:
        """The current job (started or about to be), for logs and tests."""
        job = self._job
        if job is None:
            return None
        return {
            "job": job.id,
            "started": job.started,
            "program": self._job_program(job),
            "sent": job.sent,
            "done": job.done,
            "total": job.total,
        }

    @property
    def program(self) -> str | None:
        """The program of the current or last job."""
        return self._program

    # ------------------------------------------------------------------ host to device

    def host_bytes(self, data: bytes, ts_ms: int, mono_ms: int) -> list[WatchItem]:
        """Bytes the sender wrote (already or about to be forwarded unchanged)."""
        items: list[WatchItem] = []
        for byte in data:
            if byte in _RT_ASCII or byte >= 0x80:
                if byte in _QUERIES:
                    self._last_query_mono = mono_ms
                    self.stats.host_queries += 1
                elif byte == _RESET:
                    self._on_host_reset(ts_ms, mono_ms, items)
                continue
            if byte in (0x0A, 0x0D):
                self._end_host_line(ts_ms, mono_ms, items)
                continue
            if len(self._line) < self.settings.max_line_bytes:
                self._line.append(byte)
            else:
                self._line_overflow = True
        return items

    def injected_query(self, mono_ms: int) -> None:
        """The proxy wrote its own ``?`` to the controller."""
        self._last_query_mono = mono_ms
        self.stats.injected_queries += 1

    def should_poll(self, mono_ms: int) -> bool:
        """True if nobody asked for a status report within the poll interval."""
        last = self._last_query_mono
        return last is None or mono_ms - last >= self.settings.poll_interval_s * 1000

    def _end_host_line(self, ts_ms: int, mono_ms: int, items: list[WatchItem]) -> None:
        raw = bytes(self._line)
        self._line.clear()
        self._line_overflow = False
        text = raw.decode("ascii", "replace").strip()
        program_line = bool(text) and not text.startswith("$")
        self.stats.lines_sent += 1
        job_id: str | None = None
        if program_line:
            job = self._job
            if job is not None and not job.started and self._gap(job, mono_ms):
                self._job = job = None  # a few console lines, long ago: not a job
            self._last_line_mono = mono_ms
            if job is None and self._alarm:
                # Grbl rejects every line in Alarm (error:9): a sender that keeps
                # streaming after an alarm is not running a new job.
                self._pending.append(_Pending(program_line, None, mono_ms))
                return
            if job is None:
                job = self._job = _Job(self._next_id(ts_ms), ts_ms, mono_ms)
            job.sent += 1
            job_id = job.id
            self._read_header(job, text, items, ts_ms, mono_ms)
            self._collect_header(job, text)
            if (
                not job.started
                and not job.header_open
                and (job.sent >= self.settings.min_job_lines or job.total is not None)
            ):
                self._start(job, items)
        self._pending.append(_Pending(program_line, job_id, mono_ms))

    def _gap(self, job: _Job, mono_ms: int) -> bool:
        last = self._last_line_mono if self._last_line_mono is not None else job.start_mono
        return mono_ms - max(last, job.start_mono) > self.settings.end_quiet_s * 1000

    def _next_id(self, ts_ms: int) -> str:
        # Unique per machine across restarts: the start time plus a counter.
        return f"{self._id_prefix}{ts_ms:x}-{next(self._ids)}"

    def _read_header(
        self, job: _Job, text: str, items: list[WatchItem], ts_ms: int, mono_ms: int
    ) -> None:
        if job.sent > _HEADER_LINES or ("(" not in text and ";" not in text):
            return
        if job.total is None:
            for pattern in self._total_res:
                match = pattern.search(text)
                if match:
                    job.total = int(match.group("total"))
                    if job.started:
                        self._progress(job, items, ts_ms, mono_ms, force=True)
                    break
        if job.program is None:
            for pattern in self._program_res:
                match = pattern.search(text)
                if match and match.group("program").strip():
                    job.program = match.group("program").strip()[:_PROGRAM_MAX]
                    break
        if job.first_comment is None:
            match = _COMMENT_RE.search(text)
            if match:
                comment = (match.group(1) or match.group(2) or "").strip()
                if comment:
                    job.first_comment = comment[:_PROGRAM_MAX]

    @staticmethod
    def _collect_header(job: _Job, text: str) -> None:
        """Keep the program's leading comment lines; the first other line closes them."""
        if not job.header_open:
            return
        if not _COMMENT_ONLY_RE.fullmatch(text):
            job.header_open = False
            return
        for match in _COMMENT_RE.finditer(text):
            comment = (match.group(1) or match.group(2) or "").strip()
            if comment:
                job.header.append(comment[:_PROGRAM_MAX])
        while sum(len(c) + 1 for c in job.header) > HEADER_MAX_CHARS:
            job.header.pop()
            job.header_open = False
        if len(job.header) >= HEADER_MAX_LINES or job.sent >= HEADER_MAX_LINES:
            job.header_open = False

    def _on_host_reset(self, ts_ms: int, mono_ms: int, items: list[WatchItem]) -> None:
        self._line.clear()
        self._line_overflow = False
        job = self._job
        if job is not None:
            self._end(job, "aborted", items, ts_ms, mono_ms, text="soft reset (Ctrl-X)")

    # ------------------------------------------------------------------ device to host

    def device_bytes(self, data: bytes, ts_ms: int, mono_ms: int) -> list[WatchItem]:
        """Bytes the controller wrote (already or about to be forwarded unchanged)."""
        items: list[WatchItem] = []
        for event in self._parser.feed(data):
            if isinstance(event, (Ok, ErrorReply)):
                self._on_ack(isinstance(event, ErrorReply), ts_ms, mono_ms, items)
                if isinstance(event, ErrorReply):
                    items.extend(self.adapter.translate(event, ts_ms=ts_ms, mono_ms=mono_ms))
                continue
            if isinstance(event, StatusReport):
                self._alarm = event.state == "Alarm"
                reading = self.adapter.reading(event, ts_ms=ts_ms, mono_ms=mono_ms)
                self._on_state(event.state, mono_ms)
                if reading is not None:
                    items.append(self._with_program(reading))
                self.tick(ts_ms, mono_ms, items)
                continue
            if isinstance(event, Banner):
                self._on_banner(ts_ms, mono_ms, items)
            elif isinstance(event, AlarmPush):
                self._alarm = True
                job = self._job
                if job is not None:
                    self._end(job, "failed", items, ts_ms, mono_ms, text=f"ALARM:{event.code}")
                self._idle_since = None
            translated = self.adapter.translate(event, ts_ms=ts_ms, mono_ms=mono_ms)
            items.extend(self._with_program(i) if isinstance(i, Reading) else i for i in translated)
        return items

    def _with_program(self, reading: Reading) -> Reading:
        if self._program is None:
            return reading
        return dataclasses.replace(reading, program=self._program)

    def _on_ack(self, error: bool, ts_ms: int, mono_ms: int, items: list[WatchItem]) -> None:
        self._last_ack_mono = mono_ms
        self._idle_since = None  # the machine must report Idle again after the last answer
        if not self._pending:
            self.stats.unmatched_acks += 1
            return
        line = self._pending.popleft()
        self.stats.lines_acked += 1
        job = self._job
        if not line.program_line or job is None or line.job != job.id:
            return
        job.done += 1
        if error:
            job.errors += 1
        if job.started:
            self._progress(job, items, ts_ms, mono_ms)

    def _on_state(self, state: str, mono_ms: int) -> None:
        if state == "Idle":
            if self._last_state != "Idle" or self._idle_since is None:
                self._idle_since = mono_ms
        else:
            self._idle_since = None
        self._last_state = state

    def _on_banner(self, ts_ms: int, mono_ms: int, items: list[WatchItem]) -> None:
        self._pending.clear()
        self._alarm = False  # a locked start-up shows Alarm in the next status report
        job = self._job
        if job is not None:
            self._end(job, "failed", items, ts_ms, mono_ms, text="controller restarted")
        self._idle_since = None

    # ------------------------------------------------------------------ time

    def tick(
        self, ts_ms: int, mono_ms: int, items: list[WatchItem] | None = None
    ) -> list[WatchItem]:
        """Time passed: job end by the rules above and a due progress event."""
        out: list[WatchItem] = [] if items is None else items
        job = self._job
        if job is None:
            return out
        if not job.started:
            if self._gap(job, mono_ms):
                self._job = None
            return out
        self._progress(job, out, ts_ms, mono_ms)
        if self._job_done(job, mono_ms):
            reached = job.total is None or job.done >= job.total
            self._end(job, "completed" if reached else "aborted", out, ts_ms, mono_ms)
        return out

    def _job_done(self, job: _Job, mono_ms: int) -> bool:
        s = self.settings
        if self._pending or self._idle_since is None:
            return False
        last_answer = self._last_ack_mono or 0
        if self._idle_since < last_answer or mono_ms - self._idle_since < s.end_idle_s * 1000:
            return False
        # A sender that waits for an answer is not quiet: count from the later of both.
        quiet = mono_ms - max(self._last_line_mono or job.start_mono, last_answer)
        if job.total is not None and job.done >= job.total:
            return True
        if job.total is not None:
            return quiet >= s.stalled_end_s * 1000
        return quiet >= s.end_quiet_s * 1000

    def link_lost(self, ts_ms: int, mono_ms: int, reason: str = "link lost") -> list[WatchItem]:
        """The controller's port went away: nothing in flight will be answered."""
        items: list[WatchItem] = []
        job = self._job
        if job is not None:
            self._end(job, "failed", items, ts_ms, mono_ms, text=reason)
        self._pending.clear()
        self._parser = GrblProtocol(self.settings.max_line_bytes)
        self._idle_since = None
        self._last_state = ""
        return items

    def set_total(self, total: int, ts_ms: int, mono_ms: int) -> list[WatchItem]:
        """The total number of lines of the current job, when something else knows it."""
        items: list[WatchItem] = []
        job = self._job
        if job is not None:
            job.total = total
            if job.started:
                self._progress(job, items, ts_ms, mono_ms, force=True)
        return items

    # ------------------------------------------------------------------ job events

    def _job_program(self, job: _Job) -> str | None:
        return job.program or job.first_comment

    def _start(self, job: _Job, items: list[WatchItem]) -> None:
        job.started = True
        self.stats.jobs += 1
        program = self._job_program(job)
        if program is not None:
            self._program = program
        data: dict[str, object] = {
            "job": job.id,
            "program": program,
            "unit": "lines",
            "total": job.total,
            "source": "proxy",
        }
        if job.header:
            data["header"] = "\n".join(job.header)
        items.append(
            DeviceEvent(job.start_ts, job.start_mono, "job_started", text=program or "", data=data)
        )
        job.last_progress_mono = job.start_mono

    def _progress(
        self, job: _Job, items: list[WatchItem], ts_ms: int, mono_ms: int, *, force: bool = False
    ) -> None:
        if job.done == job.progressed and not force:
            return
        last = job.last_progress_mono
        if (
            not force
            and last is not None
            and mono_ms - last < self.settings.progress_interval_s * 1000
        ):
            return
        job.last_progress_mono = mono_ms
        job.progressed = job.done
        items.append(
            DeviceEvent(
                ts_ms,
                mono_ms,
                "job_progress",
                data={"job": job.id, "done": job.done, "total": job.total, "unit": "lines"},
            )
        )

    def _end(
        self,
        job: _Job,
        outcome: JobOutcome,
        items: list[WatchItem],
        ts_ms: int,
        mono_ms: int,
        *,
        text: str = "",
    ) -> None:
        self._job = None
        if not job.started:
            return
        if job.done != job.progressed:
            self._progress(job, items, ts_ms, mono_ms, force=True)
        items.append(
            DeviceEvent(
                ts_ms,
                mono_ms,
                "job_ended",
                text=text or outcome,
                data={
                    "job": job.id,
                    "outcome": outcome,
                    "done": job.done,
                    "total": job.total,
                    "unit": "lines",
                    "errors": job.errors,
                },
            )
        )
