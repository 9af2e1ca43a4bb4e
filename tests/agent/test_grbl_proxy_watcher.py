"""StreamWatcher, sans-IO: synthetic sender and controller traffic, any chunking."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from shopfloor.agent.proxy.watcher import StreamWatcher, WatcherSettings, WatchItem
from shopfloor.agent.readings import DeviceEvent, Reading
from shopfloor.contract.states import Observation

IDLE = b"<Idle|MPos:0.000,0.000,0.000|FS:0,0>\r\n"
RUN = b"<Run|MPos:1.000,0.000,0.000|FS:500,1000>\r\n"
HEADER = [b"(Program: bracket.nc)\n", b"(Lines: 6)\n"]
BODY = [b"G21 G90\n", b"G1 X1 F500\n", b"S2000\n", b"G1 X2\n"]


def settings_(**kw: object) -> WatcherSettings:
    base: dict[str, object] = {"end_idle_s": 0.5, "end_quiet_s": 2.0, "min_job_lines": 3}
    base.update(kw)
    return WatcherSettings(**base)  # type: ignore[arg-type]


class Wire:
    """Drives a watcher with a clock in ms; collects what it says."""

    def __init__(self, watcher: StreamWatcher | None = None) -> None:
        self.w = watcher or StreamWatcher(settings_())
        self.t = 1_000_000
        self.items: list[WatchItem] = []

    def host(self, data: bytes, chunks: Iterable[int] | None = None) -> None:
        for part in _split(data, chunks):
            self.items += self.w.host_bytes(part, self.t, self.t)

    def device(self, data: bytes, chunks: Iterable[int] | None = None) -> None:
        for part in _split(data, chunks):
            self.items += self.w.device_bytes(part, self.t, self.t)

    def wait(self, ms: int, *, step: int = 100, report: bytes | None = None) -> None:
        end = self.t + ms
        while self.t < end:
            self.t += step
            if report is not None:
                self.device(report)
            self.items += self.w.tick(self.t, self.t)

    def events(self, name: str) -> list[DeviceEvent]:
        return [i for i in self.items if isinstance(i, DeviceEvent) and i.event == name]


def _split(data: bytes, chunks: Iterable[int] | None) -> list[bytes]:
    if chunks is None:
        return [data]
    out, i = [], 0
    for size in chunks:
        if i >= len(data):
            break
        out.append(data[i : i + size])
        i += size
    if i < len(data):
        out.append(data[i:])
    return out


def run_job(wire: Wire, lines: Sequence[bytes]) -> None:
    for line in lines:
        wire.host(line)
        wire.t += 10
    wire.device(RUN)
    for _ in lines:
        wire.device(b"ok\r\n")
        wire.t += 10


def test_a_streamed_job_starts_progresses_and_ends_completed() -> None:
    wire = Wire()
    wire.device(IDLE)
    run_job(wire, HEADER + BODY)
    started = wire.events("job_started")
    assert len(started) == 1
    assert started[0].data == {
        "job": started[0].data["job"],
        "program": "bracket.nc",
        "unit": "lines",
        "total": 6,
        "source": "proxy",
        "header": "Program: bracket.nc\nLines: 6",
    }
    assert wire.events("job_ended") == []
    wire.wait(1000, report=IDLE)
    (ended,) = wire.events("job_ended")
    assert ended.data["outcome"] == "completed"
    assert ended.data["done"] == ended.data["total"] == 6
    assert wire.events("job_progress")[-1].data["done"] == 6
    assert wire.w.job is None
    # Status readings carry the program from then on.
    wire.device(IDLE)
    last = wire.items[-1]
    assert isinstance(last, Reading)
    assert last.program == "bracket.nc"
    assert last.observation is Observation.REPORTS_IDLE


def test_a_short_idle_mid_job_does_not_end_it() -> None:
    """Spindle mode: every S change syncs the buffer and the machine reports Idle briefly
    while the sender still has lines in flight (serial-protocols.md §6)."""
    wire = Wire()
    wire.host(b"G21\nG1 X1 F100\nS1000\n")
    wire.device(b"ok\r\nok\r\n")  # S1000 waits for the sync
    wire.wait(3000, report=IDLE)  # a long Idle with a line in flight: no end
    assert wire.events("job_ended") == []
    wire.device(b"ok\r\n")  # all answered, Idle ... but the sender only paused briefly
    wire.wait(900, report=IDLE)
    wire.host(b"G1 X2\n")
    wire.device(RUN + b"ok\r\n")
    wire.wait(1500, report=RUN)
    assert wire.events("job_ended") == []
    # Now the sender is done: idle and quiet long enough.
    wire.wait(2600, report=IDLE)
    (ended,) = wire.events("job_ended")
    assert ended.data["outcome"] == "completed"
    assert ended.data["done"] == 4
    assert ended.data["total"] is None


def test_known_total_ends_at_once_when_reached_and_idle() -> None:
    wire = Wire()
    run_job(wire, HEADER + BODY)
    wire.wait(600, report=IDLE)  # end_idle_s, no need to wait for end_quiet_s
    assert len(wire.events("job_ended")) == 1


def test_a_total_not_reached_waits_for_the_stall_timeout_and_aborts() -> None:
    wire = Wire(StreamWatcher(settings_(stalled_end_s=10.0)))
    run_job(wire, [b"(Lines: 100)\n", *BODY])
    wire.wait(5000, report=IDLE)
    assert wire.events("job_ended") == []
    wire.wait(6000, report=IDLE, step=500)
    (ended,) = wire.events("job_ended")
    assert ended.data["outcome"] == "aborted"


def test_soft_reset_mid_job_aborts_and_flushes_the_line_fifo() -> None:
    wire = Wire()
    wire.host(b"G1 X1 F100\nG1 X2\nG1 X3\nG1 X4\n")
    wire.device(b"ok\r\n")
    wire.host(b"\x18")
    (ended,) = wire.events("job_ended")
    assert ended.data["outcome"] == "aborted"
    assert ended.data["done"] == 1
    wire.device(b"ALARM:3\r\n\r\nGrbl 1.1h ['$' for help]\r\n")
    assert wire.w.in_flight == 0
    assert len(wire.events("job_ended")) == 1


def test_an_alarm_mid_job_fails_it() -> None:
    wire = Wire()
    wire.host(b"G1 X1 F100\nG1 X2\nG1 X3\n")
    wire.device(b"ok\r\nALARM:1\r\n")
    (ended,) = wire.events("job_ended")
    assert ended.data["outcome"] == "failed"
    assert ended.text == "ALARM:1"
    assert wire.events("alarm_raised")


def test_lines_streamed_on_after_an_alarm_are_not_a_new_job() -> None:
    wire = Wire()
    wire.host(b"G1 X1 F100\nG1 X2\nG1 X3\nG1 X4\nG1 X5\n")
    wire.device(b"ok\r\nALARM:9\r\n")  # homing failed: not critical, lines get error:9
    wire.host(b"G1 X6\nG1 X7\nG1 X8\nG1 X9\n")
    wire.device(b"error:9\r\n" * 8 + b"<Alarm|MPos:0.000,0.000,0.000|FS:0,0>\r\n")
    wire.wait(5000, report=b"<Alarm|MPos:0.000,0.000,0.000|FS:0,0>\r\n")
    assert len(wire.events("job_started")) == 1
    assert len(wire.events("job_ended")) == 1
    assert wire.w.in_flight == 0
    # After unlocking, the next stream is a job again.
    wire.host(b"$X\n")
    wire.device(b"[MSG:Caution: Unlocked]\r\nok\r\n" + IDLE)
    wire.host(b"G1 X1\nG1 X2\nG1 X3\n")
    assert len(wire.events("job_started")) == 2


def test_a_few_console_lines_are_not_a_job() -> None:
    wire = Wire()
    wire.host(b"G0 X10\n")
    wire.device(b"ok\r\n")
    wire.wait(2500, report=IDLE)
    wire.host(b"G0 Y10\n")
    wire.device(b"ok\r\n")
    wire.wait(2500, report=IDLE)
    wire.host(b"$H\n$J=G91 X1 F100\n$G\n")
    wire.device(b"ok\r\nok\r\n[GC:G0 G54]\r\nok\r\n")
    wire.wait(3000, report=IDLE)
    assert wire.events("job_started") == []
    assert wire.w.in_flight == 0


def test_realtime_bytes_inside_lines_are_not_part_of_them() -> None:
    wire = Wire()
    wire.host(b"G1 X1? F100\n!~G1 X2\x90\n?")
    assert wire.w.in_flight == 2
    assert wire.w.stats.host_queries == 2
    assert not wire.w.should_poll(wire.t)
    assert wire.w.should_poll(wire.t + 250)


def test_empty_lines_and_crlf_get_their_own_ok() -> None:
    """A CRLF host makes Grbl answer twice: the watcher's FIFO agrees."""
    wire = Wire()
    wire.host(b"G21\r\nG90\r\n")
    assert wire.w.in_flight == 4
    wire.device(b"ok\r\nok\r\nok\r\nok\r\n")
    assert wire.w.in_flight == 0
    assert wire.w.stats.unmatched_acks == 0


def test_progress_is_rate_limited_to_once_a_second() -> None:
    wire = Wire()
    lines = [f"G1 X{i}\n".encode() for i in range(50)]
    for line in lines:
        wire.host(line)
    for _ in lines:
        wire.device(b"ok\r\n")
        wire.t += 100
    progress = wire.events("job_progress")
    assert 4 <= len(progress) <= 6
    assert all(b.mono_ms - a.mono_ms >= 1000 for a, b in itertools.pairwise(progress))


def test_first_comment_names_the_program_without_a_header_pattern() -> None:
    wire = Wire()
    wire.host(b"( Bracket v2 )\nG21\nG1 X1\n")
    (started,) = wire.events("job_started")
    assert started.data["program"] == "Bracket v2"
    assert started.data["total"] is None


def test_total_from_a_configurable_pattern_and_from_the_hub() -> None:
    w = StreamWatcher(settings_(total_patterns=[r"N_LINES=(?P<total>\d+)"]))
    wire = Wire(w)
    wire.host(b";N_LINES=40\nG21\nG1 X1\n")
    assert wire.events("job_started")[0].data["total"] == 40
    wire.items += w.set_total(41, wire.t, wire.t)
    assert wire.events("job_progress")[-1].data["total"] == 41


def test_link_lost_mid_job_fails_it() -> None:
    wire = Wire()
    wire.host(b"G21\nG1 X1\nG1 X2\n")
    wire.items += wire.w.link_lost(wire.t, wire.t, "unplugged")
    (ended,) = wire.events("job_ended")
    assert ended.data["outcome"] == "failed"
    assert wire.w.in_flight == 0


def _traffic() -> tuple[bytes, bytes]:
    host = b"".join(HEADER + BODY) + b"?"
    device = RUN + b"ok\r\n" * 6 + b"[MSG:Pgm End]\r\n" + IDLE
    return host, device


def _summary(wire: Wire) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for item in wire.items:
        if isinstance(item, DeviceEvent):
            data = {k: v for k, v in item.data.items() if k != "job"}
            out.append((item.event, sorted(data.items())))
        elif isinstance(item, Reading):
            out.append(("reading", item.detail))
    return out


def _whole() -> list[tuple[str, object]]:
    host, device = _traffic()
    wire = Wire()
    wire.host(host)
    wire.device(device)
    wire.wait(1000, report=IDLE)
    return _summary(wire)


def test_byte_by_byte_equals_whole() -> None:
    host, device = _traffic()
    wire = Wire()
    wire.host(host, [1] * len(host))
    wire.device(device, [1] * len(device))
    wire.wait(1000, report=IDLE)
    assert _summary(wire) == _whole()


@settings(max_examples=200, deadline=None)
@given(
    host_cuts=st.lists(st.integers(1, 40), max_size=40),
    device_cuts=st.lists(st.integers(1, 40), max_size=40),
)
def test_any_chunking_gives_the_same_events(host_cuts: list[int], device_cuts: list[int]) -> None:
    host, device = _traffic()
    wire = Wire()
    wire.host(host, host_cuts)
    wire.device(device, device_cuts)
    wire.wait(1000, report=IDLE)
    assert _summary(wire) == _whole()


@settings(max_examples=200, deadline=None)
@given(host=st.binary(max_size=600), device=st.binary(max_size=600))
def test_garbage_never_raises_and_buffers_stay_bounded(host: bytes, device: bytes) -> None:
    wire = Wire()
    wire.host(host)
    wire.device(device)
    wire.wait(500)
    assert wire.w.in_flight <= host.count(b"\n") + host.count(b"\r")
    assert len(wire.w._line) <= wire.w.settings.max_line_bytes
