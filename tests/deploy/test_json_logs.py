"""Structured logs: JSON lines off a terminal (containers, journald), text on one."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shopfloor.logs import (
    JsonFormatter,
    LogFormat,
    LogFormatError,
    TextFormatter,
    choose_format,
    setup_logging,
)


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("shopfloor.test", logging.WARNING, __file__, 1, "x=%d", (5,), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_line_has_the_fields_and_the_extras() -> None:
    def fail() -> None:
        raise RuntimeError("boom")

    try:
        fail()
    except RuntimeError:
        record = _record(machine="router", exc_info=sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "WARNING"
    assert data["logger"] == "shopfloor.test"
    assert data["message"] == "x=5"
    assert data["machine"] == "router"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["ts"])
    assert "RuntimeError: boom" in data["exception"]


def test_text_line_appends_extras_as_key_value() -> None:
    line = TextFormatter().format(_record(machine="router"))
    assert line.endswith("WARNING shopfloor.test: x=5 machine=router")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_format_follows_the_variable_then_the_terminal() -> None:
    assert choose_format(stream=io.StringIO()) is LogFormat.JSON
    assert choose_format(stream=_Tty()) is LogFormat.TEXT
    env = {"SHOPFLOOR_LOG_FORMAT": "json"}
    assert choose_format(environ=env, stream=_Tty()) is LogFormat.JSON
    assert choose_format(environ={"SHOPFLOOR_LOG_FORMAT": "TEXT"}) is LogFormat.TEXT
    assert choose_format("text", environ=env) is LogFormat.TEXT  # an explicit choice wins
    with pytest.raises(LogFormatError, match="SHOPFLOOR_LOG_FORMAT: 'yaml' is not a log format"):
        choose_format(environ={"SHOPFLOOR_LOG_FORMAT": "yaml"})


def test_a_host_that_set_up_logging_is_left_alone() -> None:
    # pytest's capture handlers are on the root logger here
    root = logging.getLogger()
    before = list(root.handlers)
    assert before
    assert setup_logging("json") is None
    assert root.handlers == before


# --- the agent as a process ----------------------------------------------------------------


@pytest.fixture
def agent_toml(tmp_path: Path) -> Iterator[Path]:
    root = f"t{uuid.uuid4().hex[:10]}/v1"
    file = tmp_path / "agent.toml"
    file.write_text(
        f'[agent]\nid = "pi-logs"\nsite = "shop1"\ntopic_root = "{root}"\ndata_dir = "data"\n'
        '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
        '[[machines]]\nid = "router"\nprotocol = "grbl"\nport = "/dev/ttyNOPE-shopfloor"\n'
    )
    yield file
    subprocess.run(  # clear the retained status it left on the shared broker
        ["mosquitto_pub", "-h", "127.0.0.1", "-r", "-n", "-t", f"{root}/shop1/pi-logs/_status"],
        check=False,
        timeout=10,
    )


def _run_agent(config: Path, env: dict[str, str], stderr: int) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHOPFLOOR_")}
    return subprocess.Popen(
        [sys.executable, "-m", "shopfloor", "agent", "run", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env=base | env,
    )


@pytest.mark.mqtt
def test_agent_logs_json_lines_into_a_pipe(agent_toml: Path) -> None:
    proc = _run_agent(agent_toml, {}, subprocess.PIPE)
    assert proc.stderr is not None
    lines = []
    for raw in proc.stderr:
        lines.append(raw.decode())
        if "mqtt: connected" in lines[-1]:
            break
    proc.terminate()
    _, rest = proc.communicate(timeout=20)
    assert proc.returncode == 0
    lines += rest.decode().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    link = [r for r in records if r["logger"] == "shopfloor.agent.sessions.polling"]
    assert link, records
    assert link[0]["machine"] == "router"
    assert link[0]["level"] == "WARNING"
    assert any("stopped" in r["message"] for r in records)


@pytest.mark.mqtt
def test_agent_logs_text_on_a_terminal(agent_toml: Path) -> None:
    controller, terminal = pty.openpty()
    try:
        proc = _run_agent(agent_toml, {}, terminal)
        os.close(terminal)
        terminal = -1
        text = b""
        while b"mqtt: connected" not in text:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                break
            if not chunk:
                break
            text += chunk
        proc.terminate()
        proc.wait(timeout=20)
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    first = text.decode().splitlines()[0]
    assert not first.startswith("{")
    assert " INFO shopfloor.agent.app: agent pi-logs" in first
    assert "machine=router" in text.decode()


def test_agent_refuses_an_unknown_log_format(agent_toml: Path) -> None:
    proc = _run_agent(agent_toml, {"SHOPFLOOR_LOG_FORMAT": "xml"}, subprocess.PIPE)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "SHOPFLOOR_LOG_FORMAT: 'xml' is not a log format" in err.decode()
