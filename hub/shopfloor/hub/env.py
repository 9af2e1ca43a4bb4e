"""Environment variables the hub reads: each one sets a key of ``hub.toml``.

Containers and service managers configure programs through the environment, so the hub
reads the variables in :data:`HUB_ENVIRONMENT`. A variable that is set (and not empty)
wins over the same key in the file; an unset or empty one changes nothing. Paths given
in the environment should be absolute (a relative one is taken relative to the config
file, like the same key in the file). A bad value is a :class:`ConfigError` that names the
variable and the fix.

The variables, their keys and examples are :data:`HUB_ENVIRONMENT` below.
``SHOPFLOOR_HUB_CONFIG`` names the file itself when ``--config`` is not given, and
``SHOPFLOOR_LOG_FORMAT`` chooses the log output; the others each set one key.

``docs/deploy.md`` shows them as a table; ``tests/deploy`` checks that docker-compose.yml
uses no other ``SHOPFLOOR_*`` name for the hub.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from shopfloor.hub.errors import ConfigError
from shopfloor.logs import LOG_FORMAT_VARIABLE, LogFormatError, parse_log_format

#: Where errors about a variable say the value came from.
ENVIRONMENT: Final = "environment"


@dataclass(frozen=True, slots=True)
class EnvVar:
    """One variable: the config key it sets (``section.key``), or None for a variable that
    is not a key of the file, and what it means."""

    name: str
    key: str | None
    meaning: str
    example: str
    #: Turns the text into the TOML value; raises ValueError with the problem and fix.
    convert: Callable[[str], Any] = str


def _text(value: str) -> str:
    return value.strip()


def _port(value: str) -> int:
    try:
        port = int(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a port number (fix: use e.g. 8470)") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{port} is outside 0..65535 (fix: use e.g. 8470)")
    return port


def _mqtt_url(value: str) -> str:
    url = value.strip()
    parts = urlsplit(url)
    fix = 'use "mqtt://host:1883" or "mqtts://host:8883"'
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"{url!r} is not an MQTT URL (fix: {fix})")
    if parts.username or parts.password:
        raise ValueError(
            "credentials in the URL would end up in logs (fix: set SHOPFLOOR_MQTT_USERNAME "
            "and SHOPFLOOR_MQTT_PASSWORD_FILE instead)"
        )
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port (fix: {fix})") from None
    return url


def _http_url(value: str) -> str:
    url = value.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL (fix: use e.g. http://host:8428)")
    return url


def _existing_file(value: str) -> str:
    path = Path(value.strip())
    if path.is_absolute() and not path.is_file():
        raise ValueError(f"{path} does not exist (fix: point it at a file with the password)")
    return str(path)


def _log_format(value: str) -> str:
    try:
        return str(parse_log_format(value))
    except LogFormatError as exc:
        raise ValueError(str(exc).partition(": ")[2]) from None


#: Every variable the hub reads. docker-compose.yml may give the hub only these.
HUB_ENVIRONMENT: Final[tuple[EnvVar, ...]] = (
    EnvVar(
        "SHOPFLOOR_HUB_CONFIG",
        None,
        "the hub's TOML file, when `shopfloor hub run` is given no --config",
        "/etc/shopfloor/hub.toml",
    ),
    EnvVar(
        "SHOPFLOOR_DATABASE",
        "hub.database",
        "the event store: an SQLite file (relative to data_dir) or a postgresql:// URL",
        "postgresql://shopfloor@postgres:5432/shopfloor",
        _text,
    ),
    EnvVar(
        "SHOPFLOOR_DATABASE_PASSWORD_FILE",
        "hub.database_password_file",
        "a file holding the PostgreSQL password",
        "/run/secrets/hub_db_password",
        _existing_file,
    ),
    EnvVar("SHOPFLOOR_MQTT_URL", "mqtt.url", "the broker", "mqtt://mosquitto:1883", _mqtt_url),
    EnvVar("SHOPFLOOR_MQTT_USERNAME", "mqtt.username", "the hub's MQTT user", "hub", _text),
    EnvVar(
        "SHOPFLOOR_MQTT_PASSWORD_FILE",
        "mqtt.password_file",
        "a file holding the hub's MQTT password (replaces password in the file)",
        "/run/secrets/mqtt_hub",
        _existing_file,
    ),
    EnvVar("SHOPFLOOR_API_HOST", "api.host", "the address the API listens on", "0.0.0.0", _text),  # noqa: S104 - an example
    EnvVar("SHOPFLOOR_API_PORT", "api.port", "the API's TCP port", "8470", _port),
    EnvVar(
        "SHOPFLOOR_MIRROR_URL",
        "mirror.url",
        "turns the metrics mirror on: InfluxDB or VictoriaMetrics to write to",
        "http://victoriametrics:8428",
        _http_url,
    ),
    EnvVar(
        LOG_FORMAT_VARIABLE,
        None,
        "log lines: json, text, or auto (text on a terminal, JSON otherwise)",
        "json",
        _log_format,
    ),
)

#: Keys that a variable replaces besides its own: a password file replaces a password.
_REPLACES: Final = {"mqtt.password_file": "password"}


def variable_names() -> frozenset[str]:
    return frozenset(var.name for var in HUB_ENVIRONMENT)


def _value(var: EnvVar, environ: Mapping[str, str]) -> Any | None:
    text = environ.get(var.name, "")
    if not text.strip():
        return None
    try:
        return var.convert(text)
    except ValueError as exc:
        problem, _, fix = str(exc).partition(" (fix: ")
        raise ConfigError(
            problem, path=ENVIRONMENT, key=var.name, fix=fix.rstrip(")") or None
        ) from None


def apply_env(raw: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """A copy of the parsed TOML ``raw`` with every set variable's key replaced."""
    merged = copy.deepcopy(dict(raw))
    for var in HUB_ENVIRONMENT:
        value = _value(var, environ)
        if value is None or var.key is None:
            continue
        section, _, key = var.key.partition(".")
        table = merged.setdefault(section, {})
        if not isinstance(table, dict):
            continue  # the file's own error ("must be a table") comes from the parser
        table[key] = value
        replaced = _REPLACES.get(var.key)
        if replaced:
            table.pop(replaced, None)
    return merged


def config_path(given: Path | None, environ: Mapping[str, str]) -> Path:
    """The config file: ``--config`` if given, else ``SHOPFLOOR_HUB_CONFIG``."""
    if given is not None:
        return given
    value = environ.get("SHOPFLOOR_HUB_CONFIG", "").strip()
    if not value:
        raise ConfigError(
            "no configuration file given",
            path="shopfloor hub run",
            fix="pass --config /etc/shopfloor/hub.toml or set SHOPFLOOR_HUB_CONFIG",
        )
    return Path(value)


def log_format(environ: Mapping[str, str]) -> str:
    """``SHOPFLOOR_LOG_FORMAT`` checked (``auto`` when unset)."""
    var = next(v for v in HUB_ENVIRONMENT if v.name == LOG_FORMAT_VARIABLE)
    value = _value(var, environ)
    return "auto" if value is None else str(value)


__all__ = [
    "ENVIRONMENT",
    "HUB_ENVIRONMENT",
    "EnvVar",
    "apply_env",
    "config_path",
    "log_format",
    "variable_names",
]
