"""The agent's TOML configuration, validated on load into frozen dataclasses.

Every problem is a :class:`~shopfloor.agent.errors.ConfigError` whose message names the
file, the key (``machines[1].protocol``) and the fix. Unknown keys are errors, with the
closest valid key suggested, so a typo never silently falls back to a default.

Relative paths (``data_dir``, ``password_file``, TLS files) are resolved against the
directory of the config file, so a config works the same whatever the working directory.
"""

from __future__ import annotations

import difflib
import enum
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from shopfloor.agent.errors import ConfigError
from shopfloor.agent.sessions.registry import PROTOCOL_NAMES, protocol_entry
from shopfloor.contract.errors import ContractError
from shopfloor.contract.topics import DEFAULT_ROOT, validate_id, validate_root

#: Protocols the agent can speak (see ``shopfloor.agent.sessions.registry``).
PROTOCOLS: Final = PROTOCOL_NAMES
#: What a machine is, for the wall page and the hub's defaults.
MACHINE_KINDS: Final = frozenset(
    {"cnc_router", "cnc_mill", "cnc_lathe", "laser", "kiln", "printer_3d", "other"}
)
DEFAULT_DATA_DIR: Final = "/var/lib/shopfloor"
DEFAULT_MQTT_PORT: Final = 1883
DEFAULT_MQTTS_PORT: Final = 8883


class MqttProtocol(enum.StrEnum):
    V5 = "5"
    V311 = "3.1.1"


@dataclass(frozen=True, slots=True)
class AgentSettings:
    id: str
    site: str
    topic_root: str = DEFAULT_ROOT
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    #: Outbox cap (DESIGN.md section 3): past either, the oldest telemetry is dropped and
    #: declared in a data_loss event.
    outbox_max_rows: int = 200_000
    outbox_max_mb: int = 256
    #: Replayed (backlog) records per second, after a reconnect or a hub replay request.
    replay_rate: float = 200.0


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """How to reach the broker. ``password`` never appears in ``repr`` (and so in logs)."""

    host: str
    port: int
    tls: bool
    client_id: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    keepalive_s: int = 30
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False
    protocol: MqttProtocol = MqttProtocol.V5
    session_expiry_s: int = 3600
    will_delay_s: int = 15
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class MachineConfig:
    id: str
    name: str
    kind: str
    protocol: str
    port: str
    baudrate: int = 115200
    poll_interval_s: float = 0.25
    silence_timeout_s: float = 5.0
    laser_mode: bool = False
    telemetry_interval_s: float = 5.0
    #: The protocol's own settings from ``[machines.options]``, typed by its parser.
    options: object = None


@dataclass(frozen=True, slots=True)
class AgentConfig:
    agent: AgentSettings
    mqtt: MqttSettings
    machines: tuple[MachineConfig, ...]
    path: Path | None = None


_T = TypeVar("_T")


class ConfigTable:
    """One TOML table being read: tracks the keys used so unknown ones can be reported."""

    def __init__(self, data: Mapping[str, Any], prefix: str, source: str, base: Path) -> None:
        self.data = data
        self.prefix = prefix
        self.source = source
        self.base = base

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str, fix: str) -> ConfigError:
        key = self.key(name)
        return ConfigError(f"{self.source}: {key}: {problem}. {fix}", path=self.source, key=key)

    def check_keys(self, allowed: tuple[str, ...]) -> None:
        for name in self.data:
            if name in allowed:
                continue
            close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
            hint = (
                f"Did you mean '{close[0]}'?"
                if close
                else f"Valid keys here: {', '.join(allowed)}."
            )
            raise self.error(name, "unknown key", hint)

    def get(self, name: str, kind: type[_T], default: _T | None, *, what: str) -> _T:
        if name not in self.data:
            if default is None:
                raise self.error(name, "is missing", f"Add it: {name} = {what}.")
            return default
        value = self.data[name]
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            ok = True
        if not ok:
            raise self.error(
                name,
                f"must be {what}, got {type(value).__name__} {value!r}",
                f"Write it as {name} = {_example(kind)}.",
            )
        return value  # type: ignore[no-any-return]

    def optional(self, name: str, kind: type[_T], *, what: str) -> _T | None:
        if name not in self.data:
            return None
        return self.get(name, kind, None, what=what)

    def number(
        self, name: str, default: float, *, low: float, high: float, unit: str = "s"
    ) -> float:
        value = self.get(name, float, default, what="a number")
        if not low <= value <= high:
            raise self.error(
                name, f"{value:g} is out of range", f"Use a value from {low:g} to {high:g} {unit}."
            )
        return value

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        value = self.get(name, int, default, what="an integer")
        if not low <= value <= high:
            raise self.error(name, f"{value} is out of range", f"Use {low} to {high}.")
        return value

    def ident(self, name: str, default: str | None, *, what: str) -> str:
        value = self.get(name, str, default, what=f'an id, e.g. "{what}"')
        try:
            return validate_id(value, name)
        except ContractError as exc:
            raise self.error(
                name,
                f"{value!r} is not a valid id",
                f'Use 1-64 lower-case letters, digits, "-" or "_", starting with a letter or '
                f'digit, e.g. "{what}".',
            ) from exc

    def choice(self, name: str, default: str | None, choices: frozenset[str]) -> str:
        options = sorted(choices)
        value = self.get(name, str, default, what=f'one of "{options[0]}"')
        if value not in choices:
            close = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
            hint = f"Did you mean '{close[0]}'? " if close else ""
            raise self.error(
                name,
                f"{value!r} is not supported",
                f"{hint}Use one of: {', '.join(options)}.",
            )
        return value

    def path(self, name: str, *, must_exist: bool) -> Path | None:
        raw = self.optional(name, str, what="a file path")
        if raw is None:
            return None
        path = (self.base / Path(raw).expanduser()).resolve()
        if must_exist and not path.is_file():
            raise self.error(name, f"file {str(path)!r} does not exist", "Fix the path.")
        return path

    def table(self, name: str, *, required: bool) -> ConfigTable:
        if name not in self.data:
            if required:
                raise self.error(name, "table is missing", f"Add a [{name}] table.")
            return ConfigTable({}, self.key(name), self.source, self.base)
        value = self.data[name]
        if not isinstance(value, dict):
            raise self.error(name, "must be a table", f"Write it as [{name}].")
        return ConfigTable(value, self.key(name), self.source, self.base)


def _example(kind: type[Any]) -> str:
    return {str: '"text"', int: "30", float: "0.25", bool: "true", list: "[...]"}.get(
        kind, kind.__name__
    )


_AGENT_KEYS: Final = (
    "id",
    "site",
    "topic_root",
    "data_dir",
    "outbox_max_rows",
    "outbox_max_mb",
    "replay_rate",
)
_MQTT_KEYS: Final = (
    "url",
    "username",
    "password",
    "password_file",
    "client_id",
    "keepalive_s",
    "ca_file",
    "cert_file",
    "key_file",
    "insecure",
    "protocol",
    "session_expiry_s",
    "will_delay_s",
    "reconnect_min_s",
    "reconnect_max_s",
)
_MACHINE_KEYS: Final = (
    "id",
    "name",
    "kind",
    "protocol",
    "port",
    "baudrate",
    "poll_interval_s",
    "silence_timeout_s",
    "laser_mode",
    "telemetry_interval_s",
    "options",
)


def _read_agent(t: ConfigTable) -> AgentSettings:
    t.check_keys(_AGENT_KEYS)
    root = t.get("topic_root", str, DEFAULT_ROOT, what="a topic root")
    try:
        validate_root(root)
    except ContractError as exc:
        raise t.error(
            "topic_root",
            f"{root!r} is not a valid topic root",
            'Use letters, digits, "-", "_" separated by "/", no wildcards, e.g. "shopfloor/v1".',
        ) from exc
    data_dir = t.get("data_dir", str, DEFAULT_DATA_DIR, what="a directory path")
    return AgentSettings(
        id=t.ident("id", None, what="pi-1"),
        site=t.ident("site", None, what="main-shop"),
        topic_root=root,
        data_dir=(t.base / Path(data_dir).expanduser()).resolve(),
        outbox_max_rows=t.integer("outbox_max_rows", 200_000, low=100, high=100_000_000),
        outbox_max_mb=t.integer("outbox_max_mb", 256, low=1, high=1_000_000),
        replay_rate=t.number("replay_rate", 200.0, low=1, high=100_000, unit="records per second"),
    )


def _read_mqtt(t: ConfigTable, agent_id: str) -> MqttSettings:
    t.check_keys(_MQTT_KEYS)
    url = t.get("url", str, "mqtt://localhost:1883", what='a URL like "mqtt://host:1883"')
    parts = urlsplit(url)
    fix = 'Write it as "mqtt://host:1883" or "mqtts://host:8883".'
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise t.error("url", f"{url!r} is not an mqtt:// or mqtts:// URL", fix)
    if parts.username or parts.password:
        raise t.error(
            "url",
            "credentials in the URL would end up in logs",
            "Move them to username = ... and password_file = ... in [mqtt].",
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise t.error("url", f"{url!r} has a path or query", fix)
    try:
        port = parts.port
    except ValueError as exc:
        raise t.error("url", f"{url!r} has an invalid port", fix) from exc
    tls = parts.scheme == "mqtts"
    if port is None:
        port = DEFAULT_MQTTS_PORT if tls else DEFAULT_MQTT_PORT

    password = t.optional("password", str, what="a string")
    password_path = t.path("password_file", must_exist=True)
    if password is not None and password_path is not None:
        raise t.error("password", "both password and password_file are set", "Keep one.")
    if password_path is not None:
        password = password_path.read_text(encoding="utf-8").strip()

    ca_file = t.path("ca_file", must_exist=True)
    cert_file = t.path("cert_file", must_exist=True)
    key_file = t.path("key_file", must_exist=True)
    insecure = t.get("insecure", bool, False, what="true or false")
    if not tls:
        for name, value in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
            if value is not None:
                raise t.error(name, "TLS options need TLS", 'Use an "mqtts://" url.')
        if insecure:
            raise t.error("insecure", "TLS options need TLS", 'Use an "mqtts://" url.')
    if key_file is not None and cert_file is None:
        raise t.error("key_file", "a client key needs its certificate", "Set cert_file too.")

    client_id = t.get("client_id", str, agent_id, what="a string")
    if not client_id:
        raise t.error("client_id", "is empty", "Remove it to use the agent id.")
    reconnect_min = t.number("reconnect_min_s", 1.0, low=0.1, high=600)
    return MqttSettings(
        host=parts.hostname,
        port=port,
        tls=tls,
        client_id=client_id,
        username=t.optional("username", str, what="a string"),
        password=password,
        keepalive_s=t.integer("keepalive_s", 30, low=5, high=65535),
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        tls_insecure=insecure,
        protocol=MqttProtocol(t.choice("protocol", "5", frozenset(p.value for p in MqttProtocol))),
        session_expiry_s=t.integer("session_expiry_s", 3600, low=0, high=0xFFFFFFFF),
        will_delay_s=t.integer("will_delay_s", 15, low=0, high=3600),
        reconnect_min_s=reconnect_min,
        reconnect_max_s=t.number("reconnect_max_s", 60.0, low=reconnect_min, high=3600),
    )


def _check_port(t: ConfigTable, port: str) -> str:
    fix = 'Use a device path ("/dev/ttyUSB0"), "tcp://host:port" or "pty:/path".'
    if port.startswith("tcp://"):
        parts = urlsplit(port)
        try:
            ok = bool(parts.hostname) and parts.port is not None
        except ValueError:
            ok = False
        if not ok:
            raise t.error("port", f"{port!r} is not a valid TCP address", fix)
    elif port.startswith("pty:"):
        if not port[4:].startswith("/"):
            raise t.error("port", f"{port!r} needs an absolute path after 'pty:'", fix)
    elif not port.startswith("/"):
        raise t.error("port", f"{port!r} is not a device path", fix)
    return port


def _read_machine(t: ConfigTable) -> MachineConfig:
    t.check_keys(_MACHINE_KEYS)
    machine_id = t.ident("id", None, what="router-1")
    kind = t.choice("kind", "other", MACHINE_KINDS)
    protocol = t.choice("protocol", None, PROTOCOLS)
    entry = protocol_entry(protocol)
    low_poll = entry.min_poll_interval_s
    poll = t.number("poll_interval_s", max(0.25, low_poll), low=low_poll, high=60)
    silence = t.number("silence_timeout_s", max(5.0, 4 * poll), low=0.5, high=3600)
    if silence <= poll:
        raise t.error(
            "silence_timeout_s",
            f"{silence:g} s is not longer than poll_interval_s ({poll:g} s)",
            "Make it at least a few poll intervals long.",
        )
    name = t.get("name", str, machine_id, what="a display name")
    return MachineConfig(
        id=machine_id,
        name=name,
        kind=kind,
        protocol=protocol,
        port=_check_port(t, t.get("port", str, None, what='"/dev/ttyUSB0"')),
        baudrate=t.integer("baudrate", entry.default_baudrate, low=300, high=4_000_000),
        poll_interval_s=poll,
        silence_timeout_s=silence,
        laser_mode=t.get("laser_mode", bool, kind == "laser", what="true or false"),
        telemetry_interval_s=t.number("telemetry_interval_s", 5.0, low=0.1, high=3600),
        options=entry.parse_options(t.table("options", required=False)),
    )


def parse_config(text: str, *, source: str = "<config>", base: Path | None = None) -> AgentConfig:
    """Validate TOML ``text``. ``source`` names it in errors; ``base`` resolves relative paths."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{source}: not valid TOML: {exc}. Fix the syntax at that line.", path=source
        ) from exc
    root = ConfigTable(data, "", source, base or Path.cwd())
    root.check_keys(("agent", "mqtt", "machines"))
    agent = _read_agent(root.table("agent", required=True))
    mqtt = _read_mqtt(root.table("mqtt", required=False), agent.id)

    raw_machines = data.get("machines", [])
    if not isinstance(raw_machines, list) or not all(isinstance(m, dict) for m in raw_machines):
        raise root.error("machines", "must be an array of tables", "Write each as [[machines]].")
    machines: list[MachineConfig] = []
    seen_ids: dict[str, int] = {}
    seen_ports: dict[str, int] = {}
    for index, raw in enumerate(raw_machines):
        table = ConfigTable(raw, f"machines[{index}]", source, root.base)
        machine = _read_machine(table)
        if machine.id in seen_ids:
            raise table.error(
                "id",
                f"{machine.id!r} is already used by machines[{seen_ids[machine.id]}]",
                "Give every machine its own id.",
            )
        if machine.port in seen_ports:
            raise table.error(
                "port",
                f"{machine.port!r} is already used by machines[{seen_ports[machine.port]}]",
                "Each port serves one machine.",
            )
        seen_ids[machine.id] = index
        seen_ports[machine.port] = index
        machines.append(machine)
    return AgentConfig(agent=agent, mqtt=mqtt, machines=tuple(machines))


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate the agent's config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path}: file not found. Pass the path of an existing file to --config "
            "(`shopfloor agent run --config /etc/shopfloor/agent.toml`).",
            path=str(path),
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc}). Check it.", path=str(path)) from exc
    config = parse_config(text, source=str(path), base=path.resolve().parent)
    return replace(config, path=path)


def example_config(
    *,
    agent_id: str = "pi-1",
    site: str = "main-shop",
    url: str = "mqtt://localhost:1883",
    data_dir: str = "/var/lib/shopfloor",
    topic_root: str = DEFAULT_ROOT,
    port: str = "/dev/serial/by-id/usb-1a86_USB_Serial-if00-port0",
) -> str:
    """A commented config that validates; used by the docs and the tests."""
    return f'''\
# Shopfloor agent configuration. Relative paths are relative to this file.
[agent]
id = "{agent_id}"                 # lower-case letters, digits, - and _; also the MQTT user
site = "{site}"
topic_root = "{topic_root}"
data_dir = "{data_dir}"           # sequence store (and later the outbox) live here

[mqtt]
url = "{url}"                     # mqtts://host:8883 for TLS
# username = "{agent_id}"
# password_file = "mqtt-password"  # or password = "..."; never put it in the url
keepalive_s = 30
# ca_file = "ca.crt"              # TLS only; insecure = false by default

[[machines]]
id = "router-1"
name = "Big router"
kind = "cnc_router"               # {", ".join(sorted(MACHINE_KINDS))}
protocol = "grbl"                 # {", ".join(sorted(PROTOCOLS))}
port = "{port}"                   # a device path, "tcp://host:port" or "pty:/path"
baudrate = 115200
poll_interval_s = 0.25            # GRBL: at most 5 Hz, so >= 0.2
silence_timeout_s = 5.0
laser_mode = false
telemetry_interval_s = 5.0
'''


__all__ = [
    "MACHINE_KINDS",
    "PROTOCOLS",
    "AgentConfig",
    "AgentSettings",
    "ConfigTable",
    "MachineConfig",
    "MqttProtocol",
    "MqttSettings",
    "example_config",
    "load_config",
    "parse_config",
]
