"""HaasDriver with synthetic bytes, its options, the probe, and HaasSession over a REAL
pseudo-terminal (and TCP) against the Haas simulator, faults included."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shopfloor.agent.clock import SystemClock
from shopfloor.agent.config import parse_config
from shopfloor.agent.errors import ConfigError
from shopfloor.agent.links.serial import SerialLink
from shopfloor.agent.links.tcp import TcpLink
from shopfloor.agent.probe.haas import probe_haas
from shopfloor.agent.protocols.haas import frame_reply
from shopfloor.agent.readings import DeviceEvent, DeviceInfo, Reading
from shopfloor.agent.sessions.haas import (
    HaasDriver,
    HaasOptions,
    HaasSession,
    SessionItem,
)
from shopfloor.agent.sessions.registry import protocol_entry
from shopfloor.contract.states import Observation
from shopfloor.sim.haas import HaasMachine, HaasSimConfig, PtyRunner, TcpRunner

# ----------------------------------------------------------------------------- driver

REPLIES = [
    frame_reply(p)
    for p in (
        "PROGRAM, O01234, IDLE, PARTS, 3",
        "PROGRAM, O01234, IDLE, PARTS, 4",
        "PROGRAM, O05555, FEED HOLD, PARTS, 0",
        "PROGRAM, O01234, ALARM ON, PARTS, 4",
        "STATUS, BUSY",
        "MODE, (MEM)",
        "MODE, (MDI)",
        "MACRO, 3.0",
        "MACRO, 7",
        "UNKNOWN",
        "SERIAL NUMBER, 1",
    )
]


def test_driver_asks_info_then_alternates_q500_with_the_cycle() -> None:
    driver = HaasDriver(HaasOptions(q_commands=("Q104",), macro_variables={"rpm": 3027}))
    assert driver.poll() == b"?Q100\r\n"
    assert driver.poll() == b""  # waiting for the reply
    assert driver.poll() == b"?Q100\r\n"  # no reply by the next poll: asked a second time
    assert driver.timeouts == 1
    items = driver.feed(frame_reply("SERIAL NUMBER, 1098765"), 1, 1)
    assert isinstance(items[0], DeviceInfo)
    assert driver.poll() == b"?Q101\r\n"
    driver.feed(frame_reply("SOFTWARE VERSION, 100.21.000.1100"), 2, 2)
    assert driver.poll() == b"?Q102\r\n"
    (info,) = driver.feed(frame_reply("MODEL, VF-2"), 3, 3)
    assert info == DeviceInfo("haas", "100.21.000.1100", {"serial": "1098765", "model": "VF-2"})
    sent = []
    for t in range(6):
        sent.append(driver.poll())
        reply = {
            b"?Q500\r\n": "PROGRAM, O01234, IDLE, PARTS, 3",
            b"?Q104\r\n": "MODE, (MEM)",
            b"?Q600 3027\r\n": "MACRO, 8000.0",
        }[sent[-1]]
        driver.feed(frame_reply(reply), 10 + t, 10 + t)
    q500, q104, q600 = b"?Q500\r\n", b"?Q104\r\n", b"?Q600 3027\r\n"
    assert sent == [q500, q104, q500, q600, q500, q104]
    assert driver.adapter.values()["rpm"] == 8000.0


def test_driver_q100_is_tried_twice_then_given_up() -> None:
    driver = HaasDriver()
    assert driver.poll() == b"?Q100\r\n"
    driver.poll()
    assert driver.poll() == b"?Q100\r\n"
    driver.poll()
    assert driver.poll() == b"?Q101\r\n"  # Q101 is tried once
    driver.poll()
    assert driver.poll() == b"?Q102\r\n"
    assert driver.timeouts == 3


def skip_info(driver: HaasDriver) -> None:
    for reply in ("SERIAL NUMBER, 1", "SOFTWARE VERSION, 1", "MODEL, VF-2"):
        driver.poll()
        driver.feed(frame_reply(reply), 0, 0)


def test_rejected_query_leaves_the_cycle() -> None:
    driver = HaasDriver(HaasOptions(q_commands=("Q104", "Q201"), macro_variables={}))
    skip_info(driver)
    sent = []
    for _ in range(10):
        sent.append(driver.poll())
        if sent[-1] == b"?Q201\r\n":
            driver.feed(frame_reply("UNKNOWN"), 0, 0)
        elif sent[-1] == b"?Q104\r\n":
            driver.feed(frame_reply("MODE, (MEM)"), 0, 0)
        else:
            driver.feed(frame_reply("STATUS, BUSY"), 0, 0)
    assert sent.count(b"?Q201\r\n") == 1
    assert sent.count(b"?Q104\r\n") == 4


def test_macro_value_is_matched_to_the_variable_asked() -> None:
    driver = HaasDriver(HaasOptions(q_commands=(), macro_variables={}, parts_required_variable=500))
    skip_info(driver)
    # a stray MACRO reply while Q500 is outstanding is ignored, not misfiled
    assert driver.poll() == b"?Q500\r\n"
    assert driver.feed(frame_reply("MACRO, 7"), 0, 0) == []
    driver.feed(frame_reply("PROGRAM, O1, IDLE, PARTS, 0"), 0, 0)
    assert driver.poll() == b"?Q600 500\r\n"
    driver.feed(frame_reply("MACRO, 25.0000"), 0, 0)
    assert driver.adapter.values()["parts_required"] == 25.0


def test_garbled_reply_frees_the_request_and_is_counted() -> None:
    driver = HaasDriver()
    skip_info(driver)
    driver.poll()
    assert driver.feed(b"\x02PRO\xffGRAM, O1\x17\r\n>", 0, 0) == []
    assert driver.garbage == 1
    assert driver.outstanding is None


def test_driver_reset_starts_over() -> None:
    driver = HaasDriver()
    skip_info(driver)
    driver.poll()
    driver.feed(b"\x02PROGRAM, O1, ID", 0, 0)  # half a reply, then the link drops
    driver.reset()
    assert driver.poll() == b"?Q100\r\n"
    assert driver.feed(frame_reply("SERIAL NUMBER, 9"), 0, 0)


# ----------------------------------------------------------------------------- options

CONFIG = """
[agent]
id = "pi-1"
site = "shop"

[[machines]]
id = "mill-1"
kind = "cnc_mill"
protocol = "haas"
port = "tcp://10.0.0.20:5051"
{options}
"""


def parse(options: str = "") -> HaasOptions:
    config = parse_config(CONFIG.format(options=options), source="agent.toml")
    machine = config.machines[0]
    assert isinstance(machine.options, HaasOptions)
    assert machine.baudrate == 9600
    return machine.options


def test_default_options() -> None:
    options = parse()
    assert options == HaasOptions()
    assert options.cycle() == ("Q104", "Q303", "Q600 3027", "Q600 1098")
    assert protocol_entry("haas").default_baudrate == 9600


def test_all_options() -> None:
    options = parse(
        """
[machines.options]
q_commands = ["Q104", "?q402", "Q303"]
macro_variables = { spindle_load_pct = 1098 }
part_counter_variable = 3901
parts_required_variable = 500
parts_required = 40
line_ending = "lf"
query_prefix = ""
reply_timeout_polls = 3
status_states = { "SINGLE BLOCK" = "paused" }
setup_modes = ["(JOG)", "zero ret"]
"""
    )
    assert options.q_commands == ("Q104", "Q402", "Q303")
    assert dict(options.macro_variables) == {"spindle_load_pct": 1098}
    assert options.cycle()[-3:] == ("Q600 500", "Q600 3901", "Q600 1098")
    assert (options.part_counter_variable, options.parts_required) == (3901, 40)
    assert (options.line_ending, options.query_prefix, options.reply_timeout_polls) == (
        "lf",
        "",
        3,
    )
    assert options.status_states["SINGLE BLOCK"] is Observation.REPORTS_PAUSED
    assert options.status_states["BUSY"] is Observation.REPORTS_RUNNING
    assert options.setup_modes == frozenset({"JOG", "ZERO RET"})
    driver = HaasDriver(options)
    assert driver.poll() == b"Q100\n"


@pytest.mark.parametrize(
    ("options", "key", "hint"),
    [
        ('q_command = ["Q104"]', "q_command", "q_commands"),
        ('q_commands = ["E3901 5"]', "q_commands", "Q104"),
        ('q_commands = ["Q600 100"]', "q_commands", "macro_variables"),
        ("macro_variables = { Rpm = 3027 }", "macro_variables", "lower-case"),
        ("macro_variables = { rpm = 0 }", "macro_variables", "3027"),
        ("part_counter_variable = 0", "part_counter_variable", "1 to 99999"),
        ("parts_required = 0", "parts_required", "1 to"),
        ('line_ending = "crcr"', "line_ending", "crlf"),
        ('status_states = { BUSY = "working" }', "status_states", "running"),
        ("setup_modes = [1]", "setup_modes", "MDI"),
    ],
)
def test_option_errors_name_file_key_and_fix(options: str, key: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse("[machines.options]\n" + options)
    message = str(info.value)
    assert message.startswith("agent.toml: ")
    assert f"machines[0].options.{key}" in message
    assert hint in message


# ----------------------------------------------------------------------------- over a pty

FAST = HaasSimConfig(cycle_s=0.5, load_s=0.25, parts_required=3, next_batch_s=1.0, seed=7)
OPTIONS = HaasOptions(parts_required_variable=500)


def new_session(open_link: Callable[[], SerialLink | TcpLink]) -> HaasSession:
    return HaasSession(
        "mill-1",
        open_link,
        clock=SystemClock(),
        options=OPTIONS,
        poll_interval_s=0.02,
        silence_timeout_s=0.4,
        reconnect_backoff=(0.05, 0.2),
    )


async def next_item(
    items: AsyncIterator[SessionItem],
    match: Callable[[SessionItem], bool],
    within: float = 3.0,
) -> tuple[SessionItem, list[SessionItem]]:
    seen: list[SessionItem] = []
    async with asyncio.timeout(within):
        async for item in items:
            if match(item):
                return item, seen
            seen.append(item)
    raise AssertionError("session ended")


def is_obs(*observations: Observation) -> Callable[[SessionItem], bool]:
    return lambda item: isinstance(item, Reading) and item.observation in observations


def is_event(name: str) -> Callable[[SessionItem], bool]:
    return lambda item: isinstance(item, DeviceEvent) and item.event == name


async def test_idle_to_running_with_parts_and_a_batch_job(tmp_path: Path) -> None:
    path = tmp_path / "ttyHAAS"
    machine = HaasMachine(FAST)
    async with (
        PtyRunner(machine, path, tick_s=0.005, name="haas"),
        new_session(lambda: SerialLink(str(path), 9600)) as session,
        contextlib.aclosing(session.readings()) as items,
    ):
        info, _ = await next_item(
            items, lambda i: isinstance(i, DeviceInfo) and "model" in i.options
        )
        assert isinstance(info, DeviceInfo)
        assert info.options == {"serial": "1098765", "model": "VF-2"}
        assert info.firmware == "100.21.000.1100"
        idle, _ = await next_item(items, is_obs(Observation.REPORTS_IDLE))
        assert isinstance(idle, Reading)
        assert idle.program == "O01234"
        started, _ = await next_item(items, is_event("job_started"))
        assert isinstance(started, DeviceEvent)
        assert started.data["program"] == "O01234"
        assert started.data["unit"] == "parts"
        assert started.data["total"] in (None, 3)  # 3 once #500 has been read
        ended, seen = await next_item(items, is_event("job_ended"), within=6.0)
        assert isinstance(ended, DeviceEvent)
        assert ended.data["outcome"] == "completed"
        assert (ended.data["done"], ended.data["total"]) == (3, 3)
        seen_events = [i for i in seen if isinstance(i, DeviceEvent)]
        counts = [i.data["count"] for i in seen_events if i.event == "part_counted"]
        assert counts == [1, 2, 3]
        progress = [i.data["done"] for i in seen_events if i.event == "job_progress"]
        assert progress[-3:] == [1, 2, 3]  # after a 0 if the quantity came after the start
        running = [i for i in seen if is_obs(Observation.REPORTS_RUNNING)(i)]
        assert running
        parts = [i.values.get("parts_count") for i in seen if isinstance(i, Reading)]
        assert sorted(p for p in parts if p is not None) == [p for p in parts if p is not None]
        assert any(isinstance(i, Reading) and i.values.get("spindle_rpm") == 8000.0 for i in seen)
    assert session.connects == 1


async def recover(
    items: AsyncIterator[SessionItem], lost: Observation, within: float = 4.0
) -> None:
    """OFFLINE (silent or link lost) while the fault lasts, then reports again."""
    await next_item(items, is_obs(lost), within=within)
    await next_item(
        items,
        is_obs(Observation.REPORTS_IDLE, Observation.REPORTS_RUNNING),
        within=within,
    )


async def test_recovers_from_vanish_stall_noise_and_reboot(tmp_path: Path) -> None:
    path = tmp_path / "ttyHAAS"
    machine = HaasMachine(FAST)
    async with (
        PtyRunner(machine, path, tick_s=0.005, name="haas") as runner,
        new_session(lambda: SerialLink(str(path), 9600)) as session,
        contextlib.aclosing(session.readings()) as items,
    ):
        loop = asyncio.get_running_loop()
        await next_item(items, is_obs(Observation.REPORTS_IDLE, Observation.REPORTS_RUNNING))
        runner.vanish(0.8)  # unplugged, and back
        await recover(items, Observation.LINK_LOST)
        machine.stall(1.0, loop.time())  # stops answering
        await recover(items, Observation.SILENT)
        machine.noise(0.6, 1.0, loop.time())  # most replies garbled
        await recover(items, Observation.SILENT)
        machine.reboot(1.0, loop.time())  # power cycle in the middle of a part
        await recover(items, Observation.SILENT)
        runner.vanish(0.8, reboot=True)
        await recover(items, Observation.LINK_LOST)
        # and the machine keeps making parts
        await next_item(items, is_event("part_counted"), within=4.0)
    assert session.connects >= 3
    assert session.driver.name == "haas"


async def test_session_over_tcp_like_ngc_mdc() -> None:
    machine = HaasMachine(HaasSimConfig(auto_run=False, framing="line"))
    async with TcpRunner(machine, 0, tick_s=0.005, name="haas") as server:
        port = server.port
        async with (
            new_session(lambda: TcpLink("127.0.0.1", port)) as session,
            contextlib.aclosing(session.readings()) as items,
        ):
            idle, _ = await next_item(items, is_obs(Observation.REPORTS_IDLE))
            assert isinstance(idle, Reading)
            assert idle.detail.startswith("IDLE")


async def test_probe_identifies_the_mill_and_config_snippet_parses(tmp_path: Path) -> None:
    path = tmp_path / "ttyHAAS"
    machine = HaasMachine(HaasSimConfig(auto_run=False))  # swallows the first ?Q100
    async with PtyRunner(machine, path, tick_s=0.005, name="haas"):
        link = SerialLink(str(path), 9600)
        await link.open()
        try:
            result = await probe_haas(link, timeout_s=0.3)
        finally:
            await link.close()
    assert result is not None
    assert result.protocol == "haas"
    assert result.firmware == "100.21.000.1100"
    assert result.details == {"serial": "1098765", "model": "VF-2"}
    config = parse_config(
        '[agent]\nid = "pi-1"\nsite = "shop"\n\n' + result.config_snippet, source="probe"
    )
    assert config.machines[0].protocol == "haas"
    assert config.machines[0].port == str(path)
    # read-only: nothing but queries was sent
    assert machine.answered == 3


async def test_probe_says_none_when_nothing_answers(tmp_path: Path) -> None:
    path = tmp_path / "ttyHAAS"
    machine = HaasMachine(HaasSimConfig(auto_run=False))
    machine.stall(0, 0.0)
    async with PtyRunner(machine, path, tick_s=0.005, name="haas"):
        link = SerialLink(str(path), 9600)
        await link.open()
        try:
            assert await probe_haas(link, timeout_s=0.1) is None
        finally:
            await link.close()


@given(
    steps=st.lists(
        st.one_of(st.none(), st.binary(max_size=300), st.sampled_from(list(REPLIES))),
        max_size=60,
    )
)
@settings(max_examples=200, deadline=None)
def test_driver_garbage_in_never_raises(steps: list[bytes | None]) -> None:
    driver = HaasDriver(HaasOptions(parts_required_variable=500, part_counter_variable=3901))
    for t, step in enumerate(steps):
        if step is None:
            request = driver.poll()
            assert request == b"" or request.startswith(b"?Q")
        else:
            for item in driver.feed(step, t, t):
                assert isinstance(item, Reading | DeviceEvent | DeviceInfo)
    assert driver.outstanding is None or driver.outstanding.startswith("Q")


@pytest.mark.parametrize("command", ["Q999", "E3901 1", "Q600"])
def test_driver_refuses_bad_queries_up_front(command: str) -> None:
    with pytest.raises(ValueError, match="Haas"):
        HaasDriver(HaasOptions(q_commands=(command,)))
