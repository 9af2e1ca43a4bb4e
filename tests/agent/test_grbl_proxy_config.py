"""``[machines.options]`` of a GRBL machine: proxy mode on, off, and every mistake named."""

from __future__ import annotations

from pathlib import Path

import pytest

from shopfloor.agent.clock import SystemClock
from shopfloor.agent.config import parse_config
from shopfloor.agent.errors import ConfigError
from shopfloor.agent.links import open_link
from shopfloor.agent.proxy.options import GrblOptions, ProxyOptions
from shopfloor.agent.proxy.session import GrblProxySession
from shopfloor.agent.sessions.base import SessionContext
from shopfloor.agent.sessions.grbl import GrblSession
from shopfloor.agent.sessions.registry import protocol_entry

BASE = """
[agent]
id = "pi-1"
site = "shop"
[[machines]]
id = "router-1"
protocol = "grbl"
port = "/dev/ttyUSB0"
"""


def machine_options(options: str) -> object:
    config = parse_config(BASE + "[machines.options]\n" + options, source="agent.toml")
    return config.machines[0].options


def test_no_options_means_polling() -> None:
    config = parse_config(BASE, source="agent.toml")
    assert config.machines[0].options == GrblOptions()


def test_proxy_options_with_defaults(tmp_path: Path) -> None:
    options = machine_options(f'proxy_pty = "{tmp_path}/router-1"\nproxy_tcp = 2323\n')
    assert isinstance(options, GrblOptions)
    proxy = options.proxy
    assert proxy is not None
    assert proxy.pty == tmp_path / "router-1"
    assert proxy.tcp_port == 2323
    assert proxy.tcp_host == "127.0.0.1"
    assert (proxy.end_idle_s, proxy.end_quiet_s, proxy.stalled_end_s) == (0.5, 2.0, 300.0)
    assert proxy.min_job_lines == 3


def test_custom_patterns() -> None:
    options = machine_options(
        'proxy_tcp = 2323\ntotal_patterns = ["N_LINES=(?P<total>\\\\d+)"]\n'
        'program_patterns = ["JOB (?P<program>\\\\S+)"]\n'
    )
    assert isinstance(options, GrblOptions)
    assert options.proxy is not None
    assert options.proxy.total_patterns == ("N_LINES=(?P<total>\\d+)",)


@pytest.mark.parametrize(
    ("options", "key", "words"),
    [
        ("proxy_ptty = '/x'\n", "proxy_ptty", "Did you mean 'proxy_pty'"),
        ("proxy_pty = 'relative'\n", "proxy_pty", "absolute"),
        ("proxy_tcp = 70000\n", "proxy_tcp", "1 to 65535"),
        ("proxy_tcp = '2323'\n", "proxy_tcp", "must be"),
        ("job_end_quiet_s = 2\n", "job_end_quiet_s", "only applies in proxy mode"),
        ("proxy_tcp = 1\ntotal_patterns = ['(']\n", "total_patterns", "not a valid regular"),
        ("proxy_tcp = 1\ntotal_patterns = ['x']\n", "total_patterns", "(?P<total>"),
        ("proxy_tcp = 1\njob_min_lines = 0\n", "job_min_lines", "out of range"),
    ],
)
def test_mistakes_name_file_key_and_fix(options: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        machine_options(options)
    message = str(info.value)
    assert message.startswith("agent.toml: machines[0].options.")
    assert info.value.key == f"machines[0].options.{key}"
    assert words in message


def test_a_real_file_at_the_pty_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "router-1").write_text("not a symlink")
    with pytest.raises(ConfigError, match="is not a symlink"):
        machine_options(f'proxy_pty = "{tmp_path}/router-1"\n')


def test_the_registry_opens_a_proxy_session_when_configured(tmp_path: Path) -> None:
    config = parse_config(
        BASE + f'[machines.options]\nproxy_pty = "{tmp_path}/router-1"\n', source="agent.toml"
    )
    machine = config.machines[0]
    context = SessionContext(
        machine=machine, open_link=lambda: open_link(machine.port), clock=SystemClock()
    )
    session = protocol_entry("grbl").open_session(context)
    assert isinstance(session, GrblProxySession)
    assert session.options == ProxyOptions(pty=tmp_path / "router-1")

    plain = parse_config(BASE, source="agent.toml").machines[0]
    context = SessionContext(
        machine=plain, open_link=lambda: open_link(plain.port), clock=SystemClock()
    )
    assert isinstance(protocol_entry("grbl").open_session(context), GrblSession)


async def test_the_item_queue_never_waits_and_drops_telemetry_first() -> None:
    from shopfloor.agent.proxy.session import _DropQueue
    from shopfloor.agent.readings import DeviceEvent, Reading
    from shopfloor.contract.states import Observation

    queue = _DropQueue(3)
    reading = Reading(1, 1, Observation.REPORTS_IDLE)
    events = [DeviceEvent(i, i, "job_progress", data={"done": i}) for i in range(4)]
    queue.put(reading)
    for event in events[:3]:
        queue.put(event)  # full: the telemetry reading goes first
    assert queue.dropped == 1
    assert queue.dropped_events == 0
    queue.put(events[3])  # full of events: the oldest event goes, put still does not wait
    assert queue.dropped_events == 1
    got = [await queue.get() for _ in range(3)]
    assert got == events[1:]
    queue.close()
    assert await queue.get() is None
