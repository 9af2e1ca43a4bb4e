"""MarlinDriver without I/O, then MarlinSession over a real pseudo-terminal against the
simulator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shopfloor.agent.clock import SystemClock
from shopfloor.agent.config import ConfigTable, parse_config
from shopfloor.agent.errors import ConfigError
from shopfloor.agent.links.serial import SerialLink
from shopfloor.agent.readings import DeviceEvent, DeviceInfo, Reading
from shopfloor.agent.sessions.base import SessionItem
from shopfloor.agent.sessions.marlin import (
    ENTRY,
    MarlinDriver,
    MarlinOptions,
    MarlinSession,
    parse_options,
)
from shopfloor.agent.sessions.registry import protocol_entry
from shopfloor.agent.tracker import MachineTracker
from shopfloor.contract.states import MachineState
from shopfloor.sim.marlin import MarlinMachine, MarlinSimConfig, PtyRunner, parse_fault

M115_FULL = (
    b"FIRMWARE_NAME:Marlin 2.1.2 (x) MACHINE_TYPE:Sim EXTRUDER_COUNT:1\n"
    b"Cap:AUTOREPORT_TEMP:1\nCap:AUTOREPORT_SD_STATUS:1\nCap:SDCARD:1\nok\n"
)
M115_BARE = b"FIRMWARE_NAME:Marlin 2.0.0 (x)\nok\n"


def polls(driver: MarlinDriver, n: int = 1) -> list[bytes]:
    return [b for b in (driver.poll() for _ in range(n)) if b]


def test_handshake_then_auto_reports_then_one_command_at_a_time() -> None:
    driver = MarlinDriver(poll_interval_s=0.25)
    assert driver.poll() == b"N0 M110 N0*125\n"
    assert driver.poll() == b""  # waiting for the ok
    driver.feed(b"ok\n", 0, 0)
    assert driver.poll() == b"N1 M115*39\n"
    driver.feed(M115_FULL, 0, 0)
    sent = []
    for _ in range(3):
        request = driver.poll()
        assert request
        assert driver.poll() == b""  # one command in flight
        sent.append(request)
        driver.feed(b"ok\n", 0, 0)
    assert [s.split(b" ", 1)[1].split(b"*")[0] for s in sent] == [b"M155 S2", b"M27 S2", b"M27"]


def test_without_autoreport_caps_it_polls_m105_and_m27() -> None:
    driver = MarlinDriver(
        MarlinOptions(line_numbers=False, status_poll_s=1.0), poll_interval_s=0.25
    )
    assert driver.poll() == b"M115\n"
    driver.feed(M115_BARE, 0, 0)
    seen: list[bytes] = []
    for _ in range(40):  # 10 s
        request = driver.poll()
        if request:
            seen.append(request)
            driver.feed(
                b"ok T:20.0 /0.0\n" if request == b"M105\n" else b"Not SD printing\nok\n", 0, 0
            )
    assert b"M155 S2\n" not in seen
    assert 8 <= seen.count(b"M105\n") <= 12
    assert 8 <= seen.count(b"M27\n") <= 12


def test_auto_report_zero_means_always_poll() -> None:
    driver = MarlinDriver(MarlinOptions(auto_report_s=0, line_numbers=False))
    driver.poll()
    driver.feed(M115_FULL, 0, 0)
    assert driver.poll() == b"M105\n"


def test_resend_sends_the_line_again_and_swallows_one_ok() -> None:
    driver = MarlinDriver()
    first = driver.poll()
    driver.feed(b"ok\n", 0, 0)
    m115 = driver.poll()
    assert first
    assert m115 == b"N1 M115*39\n"
    driver.feed(b"Error:checksum mismatch, Last Line: 0\nResend: 1\nok\n", 0, 0)
    assert driver.poll() == m115
    assert driver.poll() == b""  # the ok after Resend: was not taken for this line
    assert driver.resends == 1


def test_resend_of_an_unknown_line_restarts_the_numbering() -> None:
    driver = MarlinDriver(MarlinOptions(ok_after_resend=False))
    driver.poll()
    driver.feed(b"ok\n", 0, 0)
    driver.poll()
    driver.feed(b"Resend: 57\n", 0, 0)
    assert driver.poll() == b"N0 M110 N0*125\n"
    driver.feed(b"ok\n", 0, 0)
    assert driver.poll() == b"N1 M115*39\n"


def test_an_unanswered_command_times_out_unless_the_printer_is_busy() -> None:
    driver = MarlinDriver(
        MarlinOptions(line_numbers=False, command_timeout_s=1.0), poll_interval_s=0.25
    )
    assert driver.poll() == b"M115\n"
    for _ in range(10):
        driver.feed(b"echo:busy: processing\n", 0, 0)
        assert driver.poll() == b""
    for _ in range(2):  # 4 polls of 0.25 s after the last keep-alive
        assert driver.poll() == b""
    assert driver.poll() == b"M115\n"
    assert driver.timeouts == 1


def test_start_banner_redoes_the_handshake() -> None:
    driver = MarlinDriver(MarlinOptions(line_numbers=False))
    driver.poll()
    driver.feed(M115_FULL, 0, 0)
    driver.poll()
    items = driver.feed(b"start\necho:PowerUp\n", 0, 0)
    assert any(isinstance(i, DeviceEvent) and i.event == "device_reset" for i in items)
    assert driver.poll() == b"M115\n"


def test_m27_answered_unknown_means_no_sd_support() -> None:
    driver = MarlinDriver(MarlinOptions(line_numbers=False, auto_report_s=0))
    driver.poll()
    driver.feed(b"FIRMWARE_NAME:Marlin 2.0.0 (x)\nok\n", 0, 0)
    assert driver.poll() == b"M105\n"
    driver.feed(b"ok T:20.0 /0.0 B:20.0 /0.0\n", 0, 0)
    assert driver.poll() == b"M27\n"
    items = driver.feed(b'echo:Unknown command: "M27"\nok\n', 0, 0)
    assert driver.adapter.status.sd == "not_printing"
    assert any(isinstance(i, Reading) for i in items)


def test_the_file_name_is_asked_when_a_print_appears() -> None:
    driver = MarlinDriver(MarlinOptions(line_numbers=False))
    driver.poll()
    driver.feed(M115_FULL, 0, 0)
    while request := driver.poll():
        driver.feed(b"Not SD printing\nok\n" if request == b"M27\n" else b"ok\n", 0, 0)
    driver.feed(b"SD printing byte 10/100\n", 0, 0)
    assert driver.poll() == b"M27 C\n"


def options_table(data: dict[str, object]) -> ConfigTable:
    return ConfigTable(data, "machines[0].options", "agent.toml", Path("."))


def test_parse_options() -> None:
    assert parse_options(options_table({})) == MarlinOptions()
    parsed = parse_options(options_table({"auto_report_s": 5, "line_numbers": False}))
    assert (parsed.auto_report_s, parsed.line_numbers) == (5, False)
    with pytest.raises(ConfigError, match="auto_report_s"):
        parse_options(options_table({"auto_report": 5}))
    with pytest.raises(ConfigError, match="out of range"):
        parse_options(options_table({"status_poll_s": 0}))


def test_registry_entry() -> None:
    entry = protocol_entry("marlin")
    assert entry is ENTRY
    assert entry.name == "marlin"
    assert entry.default_baudrate == 115200


# --------------------------------------------------------------------- over a real pty


@dataclass
class Watch:
    """Feeds a session's items into a tracker and keeps what happened."""

    tracker: MachineTracker = field(default_factory=lambda: MachineTracker("p1", kind="printer_3d"))
    states: list[tuple[float, MachineState, str]] = field(default_factory=list)
    events: list[DeviceEvent] = field(default_factory=list)
    progress: list[float] = field(default_factory=list)
    infos: list[DeviceInfo] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def add(self, item: SessionItem) -> None:
        self.tracker.update(item)
        if isinstance(item, DeviceEvent):
            self.events.append(item)
        elif isinstance(item, DeviceInfo):
            self.infos.append(item)
        elif "progress_pct" in item.values:
            self.progress.append(item.values["progress_pct"])
        here = (self.tracker.state, self.tracker.detail)
        if not self.states or self.states[-1][1:] != here:
            self.states.append((time.monotonic() - self.t0, *here))

    def seen(self, state: MachineState) -> bool:
        return any(s is state for _, s, _ in self.states)

    def events_named(self, name: str) -> list[DeviceEvent]:
        return [e for e in self.events if e.event == name]


async def watch_until(
    session: MarlinSession, watch: Watch, done: Callable[[Watch], bool], limit_s: float
) -> None:
    async def consume() -> None:
        async for item in session.readings():
            watch.add(item)
            if done(watch):
                return

    try:
        await asyncio.wait_for(consume(), limit_s)
    except TimeoutError:
        pytest.fail(f"timed out; states were {watch.states}")


@pytest.fixture
async def printer(tmp_path: Path) -> AsyncIterator[Callable[..., PtyRunner]]:
    runners: list[PtyRunner] = []

    def make(**kwargs: object) -> PtyRunner:
        faults = tuple(parse_fault(s) for s in kwargs.pop("faults", ()))  # type: ignore[attr-defined]
        config = MarlinSimConfig(
            file_size=100_000,
            print_s=24.0,
            time_scale=4.0,
            start_delay_s=1.0,
            faults=faults,
            seed=7,
            **kwargs,  # type: ignore[arg-type]
        )
        runner = PtyRunner(MarlinMachine(config), tmp_path / "ttyMARLIN")
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        await runner.aclose()


def session_for(runner: PtyRunner, **options: object) -> MarlinSession:
    path = str(runner.path)
    return MarlinSession(
        "p1",
        lambda: SerialLink(path),
        clock=SystemClock(),
        options=MarlinOptions(**{"auto_report_s": 1, **options}),  # type: ignore[arg-type]
        poll_interval_s=0.05,
        silence_timeout_s=3.0,
        reconnect_backoff=(0.05, 0.3),
    )


def completed(watch: Watch) -> bool:
    return any(e.data.get("outcome") == "completed" for e in watch.events_named("job_ended"))


@pytest.mark.slow
async def test_a_print_from_sd_over_a_pty(printer: Callable[..., PtyRunner]) -> None:
    runner = printer(auto_start=True)
    async with runner, session_for(runner) as session:
        watch = Watch()
        await watch_until(
            session, watch, lambda w: completed(w) and w.tracker.state is MachineState.IDLE, 30
        )
    states = [s for _, s, _ in watch.states if s is not MachineState.OFFLINE]
    assert states[0] is MachineState.IDLE
    assert MachineState.RUNNING in states
    assert states[-1] is MachineState.IDLE
    details = [d for _, s, d in watch.states if s is MachineState.RUNNING]
    # The file's own heat-up (M190/M109) shows as RUNNING "heating", before the printing.
    assert "heating" in details
    assert details.index("heating") < len(details) - 1 - details[::-1].index("printing")
    assert watch.progress == sorted(watch.progress)
    assert len(set(watch.progress)) >= 5
    (started,) = watch.events_named("job_started")
    assert started.data["program"] == "benchy.gcode"
    assert started.data["total"] == 100_000
    progress = watch.events_named("job_progress")
    assert len(progress) >= 3
    assert any("eta_s" in p.data for p in progress)
    (ended,) = watch.events_named("job_ended")
    assert ended.data == {
        "job": started.data["job"],
        "outcome": "completed",
        "done": 100_000,
        "total": 100_000,
    }
    assert watch.infos[0].options["machine_type"] == "Shopfloor Sim i3"
    assert "AUTOREPORT_TEMP" in watch.infos[0].options["capabilities"]
    assert runner.machine.prints[-1][2] == "completed"


@pytest.mark.slow
async def test_pause_shows_paused_then_running_again(printer: Callable[..., PtyRunner]) -> None:
    runner = printer(auto_start=True, faults=["pause@30%+3", "user-pause@60%+3"])
    async with runner, session_for(runner) as session:
        watch = Watch()
        await watch_until(session, watch, completed, 40)
    paused = [d for _, s, d in watch.states if s is MachineState.PAUSED]
    assert "paused" in paused
    assert "paused for user" in paused
    assert not [e for e in watch.events_named("job_ended") if e.data["outcome"] != "completed"]


@pytest.mark.slow
async def test_thermal_runaway_is_alarm_until_reset(printer: Callable[..., PtyRunner]) -> None:
    runner = printer(auto_start=True, faults=["thermal-runaway@40%+5"])
    async with runner, session_for(runner) as session:
        watch = Watch()

        def recovered(w: Watch) -> bool:
            return w.seen(MachineState.ALARM) and w.tracker.state is MachineState.IDLE

        await watch_until(session, watch, recovered, 40)
    alarm_at = next(i for i, (_, s, _) in enumerate(watch.states) if s is MachineState.ALARM)
    # Silence after the halt stays ALARM (not OFFLINE) until the reset.
    assert all(s is MachineState.ALARM for _, s, _ in watch.states[alarm_at:-1])
    assert "Thermal Runaway" in watch.states[alarm_at][2]
    (ended,) = watch.events_named("job_ended")
    assert ended.data["outcome"] == "failed"
    assert len(watch.events_named("alarm_raised")) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "offline"),
    [
        ("vanish@3+2", True),
        ("stall@3+5", True),
        ("noise@2+6", False),
        ("vanish@3+2!", True),
    ],
)
async def test_recovers_after_faults(
    printer: Callable[..., PtyRunner], fault: str, offline: bool
) -> None:
    runner = printer(auto_start=True, faults=[fault])
    async with runner, session_for(runner) as session:
        watch = Watch()

        def done(w: Watch) -> bool:
            return bool(w.events_named("job_ended")) and w.tracker.state is MachineState.IDLE

        await watch_until(session, watch, done, 45)
    if offline:
        assert watch.seen(MachineState.OFFLINE)
    assert watch.tracker.state is MachineState.IDLE
    ended = watch.events_named("job_ended")
    # A board reset while the port was gone: its `start` was said to nobody, so the agent
    # only sees the file closed (failed if it caught the banner, aborted otherwise).
    outcomes = {"failed", "aborted"} if fault.endswith("!") else {"completed"}
    assert len(ended) == 1
    assert ended[0].data["outcome"] in outcomes


@pytest.mark.slow
async def test_reboot_mid_print(printer: Callable[..., PtyRunner]) -> None:
    runner = printer(auto_start=True, faults=["reboot@50%"])
    async with runner, session_for(runner) as session:
        watch = Watch()

        def done(w: Watch) -> bool:
            return bool(w.events_named("job_ended")) and w.tracker.state is MachineState.IDLE

        await watch_until(session, watch, done, 30)
    assert watch.events_named("device_reset")
    assert [e.data["outcome"] for e in watch.events_named("job_ended")] == ["failed"]


@pytest.mark.slow
async def test_old_firmware_without_autoreport_or_ok_after_resend(
    printer: Callable[..., PtyRunner],
) -> None:
    runner = printer(
        auto_start=True,
        autoreport_temp=False,
        autoreport_sd=False,
        ok_after_resend=False,
        faults=["noise@20%+4"],
        noise_flip=0.08,
        noise_drop=0.04,
    )
    async with runner, session_for(runner, ok_after_resend=False, status_poll_s=0.5) as session:
        watch = Watch()
        await watch_until(session, watch, completed, 40)
    assert MachineState.RUNNING in [s for _, s, _ in watch.states]
    assert "M105" in session.marlin.sent
    assert [f.kind.value for _, f in runner.machine.fired] == ["noise"]


def test_a_config_file_with_a_marlin_printer() -> None:
    config = parse_config(
        """
[agent]
id = "pi-1"
site = "shop"

[[machines]]
id = "printer-1"
kind = "printer_3d"
protocol = "marlin"
port = "/dev/ttyACM0"

[machines.options]
auto_report_s = 3
ok_after_resend = false
"""
    )
    (machine,) = config.machines
    assert machine.baudrate == 115200
    assert machine.options == MarlinOptions(auto_report_s=3, ok_after_resend=False)
