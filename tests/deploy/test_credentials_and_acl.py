"""deploy/make-credentials, mosquitto.conf and the ACL, run for real: a Mosquitto started
with the stack's own config (paths moved to a temporary folder) lets each agent write only
under its own id and read only its own acks and commands."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"mosquitto did not listen on {port}")


pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd (mosquitto)"
)


def make_credentials(out: Path, env_file: Path, *agents: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DEPLOY / "make-credentials"), "--out", str(out), "--env", str(env_file), *agents],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_make_credentials_writes_every_secret_compose_mounts(tmp_path: Path) -> None:
    out, env_file = tmp_path / "secrets", tmp_path / ".env"
    result = make_credentials(out, env_file)
    assert result.returncode == 0, result.stderr
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for secret in compose["secrets"].values():
        name = Path(secret["file"]).name
        assert (out / name).is_file(), f"{name} was not made"
        assert (out / name).read_text().strip()
    assert oct((out).stat().st_mode & 0o777) == "0o700"
    users = [line.split(":")[0] for line in (out / "mosquitto_passwd").read_text().splitlines()]
    assert sorted(users) == ["health", "hub", "pi-metal", "pi-studio", "pi-wood"]
    assert all("$7$" in line for line in (out / "mosquitto_passwd").read_text().splitlines())
    env = env_file.read_text()
    reader = (out / "grafana_db_password").read_text().strip()
    assert f"SHOPFLOOR_GRAFANA_DB_PASSWORD={reader}\n" in env
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"

    # again, with one more agent: old passwords kept, the new one added
    before = (out / "mqtt_pi-wood").read_text()
    assert make_credentials(out, env_file, "pi-wood", "pi-laser").returncode == 0
    assert (out / "mqtt_pi-wood").read_text() == before
    users = [line.split(":")[0] for line in (out / "mosquitto_passwd").read_text().splitlines()]
    assert "pi-laser" in users
    assert len(users) == 6


@pytest.mark.parametrize("bad", ["Pi Wood", "hub", "../x"])
def test_make_credentials_refuses_bad_agent_ids(tmp_path: Path, bad: str) -> None:
    result = make_credentials(tmp_path / "s", tmp_path / ".env", bad)
    assert result.returncode == 2
    assert bad in result.stderr
    assert not (tmp_path / "s").exists()


@dataclass
class StackBroker:
    port: int
    secrets: Path

    def password(self, user: str) -> str:
        return (self.secrets / f"mqtt_{user}").read_text().strip()

    def args(self, user: str | None, password: str | None = None) -> list[str]:
        args = ["-h", "127.0.0.1", "-p", str(self.port), "-V", "mqttv5"]
        if user is not None:
            args += ["-u", user, "-P", password if password is not None else self.password(user)]
        return args

    def pub(self, user: str, topic: str, message: str = "x") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["mosquitto_pub", *self.args(user), "-q", "1", "-t", topic, "-m", message],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )

    def subscriber(self, user: str, *topics: str) -> subprocess.Popen[str]:
        cmd = ["mosquitto_sub", *self.args(user), "-q", "1", "-v"]
        for topic in topics:
            cmd += ["-t", topic]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)  # subscribed
        return proc


def _stack_conf(tmp: Path, port: int, secrets: Path) -> Path:
    """mosquitto.conf from deploy/, with the container paths moved to ``tmp``."""
    text = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    replacements = {
        r"^listener 1883$": f"listener {port} 127.0.0.1",
        r"^password_file .*$": f"password_file {secrets / 'mosquitto_passwd'}",
        r"^acl_file .*$": f"acl_file {DEPLOY / 'mosquitto' / 'acl'}",
        r"^persistence_location .*$": f"persistence_location {tmp}/",
        r"^log_dest .*$": f"log_dest file {tmp / 'mosquitto.log'}",
    }
    for pattern, value in replacements.items():
        text, n = re.subn(pattern, value, text, flags=re.MULTILINE)
        assert n == 1, pattern
    if os.geteuid() == 0:
        # as root, mosquitto drops to its own user, which cannot read pytest's 0700 tmp dirs
        text += "user root\n"
    conf = tmp / "mosquitto.conf"
    conf.write_text(text)
    return conf


@pytest.fixture
def stack_broker(tmp_path: Path) -> Iterator[StackBroker]:
    secrets = tmp_path / "secrets"
    assert make_credentials(secrets, tmp_path / ".env").returncode == 0
    port = free_port()
    conf = _stack_conf(tmp_path, port, secrets)
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port)
        yield StackBroker(port, secrets)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _stop(proc: subprocess.Popen[str]) -> list[str]:
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    return out.splitlines()


ROOT = "shopfloor/v1/shop1"


def test_an_agent_writes_only_its_own_topics(stack_broker: StackBroker) -> None:
    b = stack_broker
    hub = b.subscriber("hub", "shopfloor/v1/#")
    try:
        forbidden = [
            f"{ROOT}/pi-metal/mill/state",  # another agent's machine
            f"{ROOT}/pi-metal/_status",  # another agent's status
            f"{ROOT}/pi-wood/_ack",  # acks come from the hub only
            f"{ROOT}/pi-wood/_cmd/replay",  # so do commands
            f"{ROOT}/_hub/status",  # and the hub's status
            "elsewhere/pi-wood/router/state",  # outside the root
        ]
        for topic in forbidden:
            b.pub("pi-wood", topic, "forbidden")
        allowed = [
            f"{ROOT}/pi-wood/router/state",
            f"{ROOT}/pi-wood/router/telemetry",
            f"{ROOT}/pi-wood/router/event",
            f"{ROOT}/pi-wood/router/meta",
            f"{ROOT}/pi-wood/_status",
        ]
        for topic in allowed:
            assert b.pub("pi-wood", topic, "allowed").returncode == 0
        time.sleep(0.5)
    finally:
        lines = _stop(hub)
    received = {line.split(" ")[0] for line in lines}
    assert received == set(allowed), lines


def test_an_agent_reads_only_its_own_acks_and_commands(stack_broker: StackBroker) -> None:
    b = stack_broker
    wood = b.subscriber("pi-wood", f"{ROOT}/+/_ack", f"{ROOT}/+/_cmd/#", f"{ROOT}/_hub/status")
    try:
        for topic in (
            f"{ROOT}/pi-metal/_ack",
            f"{ROOT}/pi-metal/_cmd/replay",
            f"{ROOT}/pi-wood/_ack",
            f"{ROOT}/pi-wood/_cmd/replay",
            f"{ROOT}/_hub/status",
        ):
            assert b.pub("hub", topic).returncode == 0
        time.sleep(0.5)
    finally:
        lines = _stop(wood)
    received = sorted(line.split(" ")[0] for line in lines)
    assert received == [
        f"{ROOT}/_hub/status",
        f"{ROOT}/pi-wood/_ack",
        f"{ROOT}/pi-wood/_cmd/replay",
    ]


def test_no_one_gets_in_without_the_right_password(stack_broker: StackBroker) -> None:
    b = stack_broker
    for args in (b.args(None), b.args("pi-wood", "wrong"), b.args("nobody", "x")):
        result = subprocess.run(
            ["mosquitto_pub", *args, "-t", f"{ROOT}/pi-wood/_status", "-m", "x"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
        assert result.returncode != 0
        assert "not authori" in result.stderr.lower() or "bad user" in result.stderr.lower()


def test_the_compose_healthcheck_command_works(stack_broker: StackBroker) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    test = compose["services"]["mosquitto"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    command = test[1].replace("$$", "$")  # compose's escape for a literal $
    command = command.replace(
        "/run/secrets/mqtt_health", shlex.quote(str(stack_broker.secrets / "mqtt_health"))
    )
    command = command.replace("-p 1883", f"-p {stack_broker.port}")
    result = subprocess.run(
        ["sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().split()[0].isdigit()  # the broker's uptime in seconds
    # and it is refused with a wrong password
    bad = command.replace(shlex.quote(str(stack_broker.secrets / "mqtt_health")), "/dev/null")
    assert (
        subprocess.run(["sh", "-c", bad], capture_output=True, timeout=30, check=False).returncode
        != 0
    )
