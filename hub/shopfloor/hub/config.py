"""The hub's TOML configuration, validated into frozen dataclasses.

Every error names the file, the key and the fix. Unknown keys are errors (a typo must not
silently fall back to a default), with the closest known key suggested.

```toml
[hub]
site = "shop1"            # this hub's own site: default client id, hub status topic
sites = ["shop1"]         # sites to ingest, or "+" for every site (default: [site])
topic_root = "shopfloor/v1"  # topic root, the same as every agent's
data_dir = "data"         # relative paths are relative to this file
database = "hub.sqlite3"  # relative to data_dir; or postgresql://user@host:5432/dbname
database_pool = 5         # PostgreSQL only: reader connections (plus one writer)
database_password_file = "pg-password"  # PostgreSQL only: the password, kept out of this file
stale_after_s = 60        # a machine with no data for this long is OFFLINE

[mqtt]
url = "mqtt://127.0.0.1:1883"   # mqtts:// for TLS
client_id = "hub-shop1"
username = "hub"
password = "..."              # or password_file = "mqtt-password" (keeps it out of this file)
ca_file = "ca.pem"
cert_file = "hub.pem"
key_file = "hub.key"
session_expiry_s = 86400
keepalive_s = 30
protocol = "5"                  # or "3.1.1" for a 3.1.1-only broker (amqtt)

[api]
host = "127.0.0.1"
port = 8470

[[api.tokens]]
name = "wall-tv"
# the token's hex SHA-256, never the token itself:
# python -c "import hashlib;print(hashlib.sha256(b'TOKEN').hexdigest())"
sha256 = "<64 hex digits>"
scopes = ["read"]
```
"""

from __future__ import annotations

import difflib
import enum
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from shopfloor.contract import DEFAULT_ROOT, ContractError, validate_id
from shopfloor.contract.topics import validate_root
from shopfloor.hub.database_url import (
    EXAMPLE,
    PostgresUrl,
    UrlError,
    is_postgres_url,
    parse_postgres_url,
)
from shopfloor.hub.env import apply_env
from shopfloor.hub.errors import ConfigError
from shopfloor.hub.mirror.settings import MirrorSection, parse_mirror
from shopfloor.hub.orders.settings import OrdersSection, parse_orders
from shopfloor.hub.shifts import UtilizationSection, parse_utilization

ALL_SITES: Final = "+"
MQTT_PROTOCOLS: Final = ("5", "3.1.1")
_HEX64: Final = re.compile(r"[0-9a-f]{64}")


class Scope(enum.StrEnum):
    """What a bearer token may do. Scopes are explicit (a write-only token cannot read);
    ``admin`` grants everything."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


_IMPLIED: Final = {
    Scope.READ: frozenset({Scope.READ}),
    Scope.WRITE: frozenset({Scope.WRITE}),
    Scope.ADMIN: frozenset({Scope.READ, Scope.WRITE, Scope.ADMIN}),
}


@dataclass(frozen=True, slots=True)
class ApiToken:
    name: str
    sha256: str = field(repr=False)
    scopes: frozenset[Scope]

    def allows(self, scope: Scope) -> bool:
        return any(scope in _IMPLIED[granted] for granted in self.scopes)


@dataclass(frozen=True, slots=True)
class HubSection:
    site: str
    sites: tuple[str, ...] | None  # None = every site ("+")
    root: str = DEFAULT_ROOT
    database: Path = Path("data/hub.sqlite3")  # the SQLite file, unless database_url is set
    stale_after_s: float = 60.0
    #: Set when ``database`` is a ``postgresql://`` URL: the store is PostgreSQL, not SQLite.
    database_url: PostgresUrl | None = None
    database_pool: int = 5  # PostgreSQL reader connections (the writer has its own)


@dataclass(frozen=True, slots=True)
class MqttSection:
    host: str
    port: int
    tls: bool
    client_id: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    session_expiry_s: int = 86400
    keepalive_s: int = 30
    protocol: str = "5"  # "5" or "3.1.1" (amqtt and other 3.1.1-only brokers)


@dataclass(frozen=True, slots=True)
class ApiSection:
    host: str = "127.0.0.1"
    port: int = 8470
    tokens: tuple[ApiToken, ...] = ()


#: The default ``[jobs] order_pattern``: "ORDER" as a word, then a reference with a digit
#: ("(ORDER 1042)", "order: A-77", "Order#SO1042"); the first group is the reference.
DEFAULT_ORDER_PATTERN: Final = r"(?i)\border\b[\s:#=-]*([a-z0-9_-]*\d[a-z0-9_-]*)"


@dataclass(frozen=True, slots=True)
class JobsSection:
    """``[jobs]``: how jobs link to orders and how much history the ETA learns from."""

    #: Searched in the program name, then in the program's header comment; the group
    #: named ``ref``, else the first group, is the order reference. None: no linking.
    order_pattern: re.Pattern[str] | None = field(
        default_factory=lambda: re.compile(DEFAULT_ORDER_PATTERN)
    )
    #: Past completed runs of the same program on the same machine the ETA learns from.
    history_runs: int = 10


@dataclass(frozen=True, slots=True)
class HubConfig:
    hub: HubSection
    mqtt: MqttSection
    api: ApiSection
    source: str = "<memory>"
    #: Shift calendars, machine groups and the utilization definition (all optional).
    utilization: UtilizationSection = field(default_factory=UtilizationSection)
    #: Jobs: the order reference pattern and the ETA's history (all optional).
    jobs: JobsSection = field(default_factory=JobsSection)
    #: The metrics mirror to InfluxDB/VictoriaMetrics; None when ``[mirror]`` is absent.
    mirror: MirrorSection | None = None
    #: Order roll-up and webhook delivery settings (``[orders]``, ``[webhooks]``).
    orders: OrdersSection = field(default_factory=OrdersSection)


_SECTIONS: Final = (
    "hub",
    "mqtt",
    "api",
    "utilization",
    "groups",
    "calendars",
    "mirror",
    "orders",
    "webhooks",
    "jobs",
)
_HUB_KEYS: Final = (
    "site",
    "sites",
    "topic_root",
    "data_dir",
    "database",
    "database_pool",
    "database_password_file",
    "stale_after_s",
)
_MQTT_KEYS: Final = (
    "url",
    "client_id",
    "username",
    "password",
    "password_file",
    "ca_file",
    "cert_file",
    "key_file",
    "session_expiry_s",
    "keepalive_s",
    "protocol",
)
_API_KEYS: Final = ("host", "port", "tokens")
_TOKEN_KEYS: Final = ("name", "sha256", "scopes")
_JOBS_KEYS: Final = ("order_pattern", "history_runs")


class _Reader:
    """Typed access to one table of the file, raising ConfigError that names the key."""

    def __init__(self, path: str, prefix: str, table: Mapping[str, Any], known: tuple[str, ...]):
        self.path = path
        self.prefix = prefix
        self.table = table
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                fix = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
                raise ConfigError("unknown key", path=path, key=self.name(key), fix=fix)

    def name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(problem, path=self.path, key=self.name(key), fix=fix)

    def str_(self, key: str, default: str | None = None) -> str | None:
        value = self.table.get(key, default)
        if value is not None and (not isinstance(value, str) or not value):
            raise self.error(key, f"must be a non-empty string, got {value!r}", "quote the value")
        return value

    def required_str(self, key: str, fix: str) -> str:
        value = self.str_(key)
        if value is None:
            raise self.error(key, "is required", fix)
        return value

    def number(self, key: str, default: float, *, low: float, high: float) -> float:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, got {value!r}", f"use e.g. {key} = {default}")
        if not low <= value <= high:
            raise self.error(key, f"= {value} is outside {low}..{high}", "pick a value in range")
        return float(value)

    def integer(self, key: str, default: int, *, low: int, high: int) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(
                key, f"must be an integer, got {value!r}", f"use e.g. {key} = {default}"
            )
        if not low <= value <= high:
            raise self.error(key, f"= {value} is outside {low}..{high}", "pick a value in range")
        return value

    def table_(self, key: str) -> Mapping[str, Any]:
        value = self.table.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, "must be a table", f"write it as a [{self.name(key)}] section")
        return value

    def id_(self, key: str, value: str) -> str:
        try:
            return validate_id(value, key)
        except ContractError as exc:
            raise self.error(
                key, exc.reason, "use the id exactly as the agents publish it"
            ) from None


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def parse_config(
    text: str,
    *,
    source: str = "<memory>",
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> HubConfig:
    """Validate the TOML ``text``. ``source`` names the file in errors. With ``environ``,
    the variables of :mod:`shopfloor.hub.env` override their keys."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"is not valid TOML: {exc}", path=source, fix="check the syntax") from exc
    if environ is not None:
        raw = apply_env(raw, environ)
    base = base_dir if base_dir is not None else Path.cwd()
    top = _Reader(source, "", raw, _SECTIONS)
    hub = _parse_hub(_Reader(source, "hub", top.table_("hub"), _HUB_KEYS), base)
    mqtt = _parse_mqtt(_Reader(source, "mqtt", top.table_("mqtt"), _MQTT_KEYS), base, hub.site)
    api = _parse_api(_Reader(source, "api", top.table_("api"), _API_KEYS))
    utilization = parse_utilization(top)
    mirror = parse_mirror(top, base)
    orders = parse_orders(top)
    jobs = _parse_jobs(_Reader(source, "jobs", top.table_("jobs"), _JOBS_KEYS))
    return HubConfig(
        hub=hub,
        mqtt=mqtt,
        api=api,
        source=source,
        utilization=utilization,
        mirror=mirror,
        orders=orders,
        jobs=jobs,
    )


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> HubConfig:
    """Read and validate the configuration file at ``path`` (with ``environ``'s overrides)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", path=str(file), fix="pass --config FILE") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot be read: {exc}", path=str(file)) from exc
    return parse_config(text, source=str(file), base_dir=file.resolve().parent, environ=environ)


def _parse_hub(r: _Reader, base: Path) -> HubSection:
    site = r.id_("site", r.required_str("site", 'add site = "<your site id>" under [hub]'))
    raw_sites = r.table.get("sites")
    sites: tuple[str, ...] | None
    if raw_sites is None:
        sites = (site,)
    elif raw_sites == ALL_SITES:
        sites = None
    elif isinstance(raw_sites, list) and raw_sites and all(isinstance(s, str) for s in raw_sites):
        sites = tuple(r.id_("sites", s) for s in raw_sites)
    else:
        raise r.error(
            "sites",
            f'must be a list of site ids or "+", got {raw_sites!r}',
            'write sites = ["shop1"] or sites = "+"',
        )
    root = r.str_("topic_root", DEFAULT_ROOT)
    assert root is not None
    try:
        validate_root(root)
    except ContractError as exc:
        raise r.error("topic_root", exc.reason, f'use e.g. topic_root = "{DEFAULT_ROOT}"') from None
    data_dir = _resolve(base, r.str_("data_dir", "data") or "data")
    raw_database = r.str_("database", "hub.sqlite3") or "hub.sqlite3"
    url = _database_url(r, base, raw_database)
    database = _resolve(data_dir, "hub.sqlite3" if url else raw_database)
    stale = r.number("stale_after_s", 60.0, low=1.0, high=86400.0)
    return HubSection(
        site=site,
        sites=sites,
        root=root,
        database=database,
        stale_after_s=stale,
        database_url=url,
        database_pool=r.integer("database_pool", 5, low=1, high=100),
    )


def _database_url(r: _Reader, base: Path, raw: str) -> PostgresUrl | None:
    """The PostgreSQL URL when ``database`` is one (with the password from
    ``database_password_file``), else None; the PostgreSQL-only keys need a URL."""
    if not is_postgres_url(raw):
        for key in ("database_pool", "database_password_file"):
            if key in r.table:
                raise r.error(
                    key,
                    "applies only to PostgreSQL, but database is an SQLite file",
                    f'remove it, or set database = "{EXAMPLE}"',
                )
        return None
    try:
        url = parse_postgres_url(raw)
    except UrlError as exc:
        raise r.error("database", exc.problem, exc.fix) from None
    file = r.str_("database_password_file")
    if file is None:
        return url
    if url.password is not None:
        raise r.error(
            "database_password_file",
            "the database URL holds a password too",
            "remove the password from the URL (keep it in the file)",
        )
    path = _resolve(base, file)
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise r.error(
            "database_password_file",
            f"{path} cannot be read ({exc})",
            "point it at a readable file",
        ) from None
    if not secret:
        raise r.error("database_password_file", f"{path} is empty", "write the password into it")
    return url.with_password(secret)


def _parse_mqtt(r: _Reader, base: Path, site: str) -> MqttSection:
    url = r.str_("url", "mqtt://127.0.0.1:1883")
    assert url is not None
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise r.error(
            "url", f"{url!r} is not an MQTT URL", 'use "mqtt://host:1883" or "mqtts://host:8883"'
        )
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise r.error("url", f"{url!r} has an invalid port", "use a port in 1..65535") from None
    files = {k: r.str_(k) for k in ("ca_file", "cert_file", "key_file")}
    paths = {k: _resolve(base, v) if v else None for k, v in files.items()}
    for key, path in paths.items():
        if path is not None and not path.is_file():
            raise r.error(key, f"{path} does not exist", "point it at an existing PEM file")
    if (paths["cert_file"] is None) != (paths["key_file"] is None):
        raise r.error("cert_file", "cert_file and key_file go together", "set both or neither")
    client_id = r.str_("client_id", f"hub-{site}")
    assert client_id is not None
    return MqttSection(
        host=parts.hostname,
        port=port,
        tls=tls or paths["ca_file"] is not None,
        client_id=client_id,
        username=r.str_("username"),
        password=_password(r, base),
        ca_file=paths["ca_file"],
        cert_file=paths["cert_file"],
        key_file=paths["key_file"],
        session_expiry_s=r.integer("session_expiry_s", 86400, low=0, high=0xFFFFFFFF),
        keepalive_s=r.integer("keepalive_s", 30, low=5, high=3600),
        protocol=_protocol(r),
    )


def _password(r: _Reader, base: Path) -> str | None:
    """``password``, or the first line of ``password_file`` (which keeps it out of the file)."""
    password, file = r.str_("password"), r.str_("password_file")
    if file is None:
        return password
    if password is not None:
        raise r.error("password", "both password and password_file are set", "keep one")
    path = _resolve(base, file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise r.error(
            "password_file", f"{path} cannot be read ({exc})", "point it at a readable file"
        ) from None
    secret = text.strip()
    if not secret:
        raise r.error("password_file", f"{path} is empty", "write the password into it")
    return secret


def _protocol(r: _Reader) -> str:
    value = r.table.get("protocol", "5")
    if value not in MQTT_PROTOCOLS:
        raise r.error(
            "protocol",
            f"unknown MQTT protocol version {value!r}",
            'use protocol = "5", or "3.1.1" for a broker that speaks only 3.1.1 (amqtt)',
        )
    return str(value)


def _parse_jobs(r: _Reader) -> JobsSection:
    raw = r.table.get("order_pattern", DEFAULT_ORDER_PATTERN)
    fix = (
        "write a Python regular expression with one group for the reference, e.g. "
        "'(?i)\\(ORDER\\s+(\\d+)\\)', or \"\" to link no jobs by pattern"
    )
    if not isinstance(raw, str):
        raise r.error("order_pattern", f"must be a string, got {raw!r}", fix)
    pattern: re.Pattern[str] | None = None
    if raw:
        try:
            pattern = re.compile(raw)
        except re.error as exc:
            raise r.error(
                "order_pattern", f"{raw!r} is not a valid regular expression ({exc})", fix
            ) from None
        if pattern.groups < 1:
            raise r.error("order_pattern", f"{raw!r} has no group for the reference", fix)
    runs = r.integer("history_runs", 10, low=0, high=100)
    return JobsSection(order_pattern=pattern, history_runs=runs)


def _parse_api(r: _Reader) -> ApiSection:
    host = r.str_("host", "127.0.0.1")
    assert host is not None
    port = r.integer("port", 8470, low=0, high=65535)
    raw_tokens = r.table.get("tokens", [])
    if not isinstance(raw_tokens, list):
        raise r.error("tokens", "must be an array of tables", "write each token as [[api.tokens]]")
    tokens = []
    names: set[str] = set()
    for i, raw in enumerate(raw_tokens):
        if not isinstance(raw, dict):
            raise r.error(
                "tokens", "must be an array of tables", "write each token as [[api.tokens]]"
            )
        t = _Reader(r.path, f"api.tokens[{i}]", raw, _TOKEN_KEYS)
        name = t.required_str("name", 'give the token a name, e.g. name = "wall-tv"')
        if name in names:
            raise t.error(
                "name", f"token name {name!r} is used twice", "give each token its own name"
            )
        names.add(name)
        digest = t.required_str("sha256", "store the token's sha256 hex digest, never the token")
        if not _HEX64.fullmatch(digest):
            raise t.error(
                "sha256",
                "must be 64 lower-case hex digits (the token's SHA-256), not the token itself",
                "python -c \"import hashlib;print(hashlib.sha256(b'TOKEN').hexdigest())\"",
            )
        raw_scopes = raw.get("scopes", ["read"])
        valid = [s.value for s in Scope]
        if not isinstance(raw_scopes, list) or not raw_scopes:
            raise t.error(
                "scopes", f"must be a non-empty list, got {raw_scopes!r}", 'e.g. scopes = ["read"]'
            )
        scopes = set()
        for scope in raw_scopes:
            if scope not in valid:
                close = difflib.get_close_matches(str(scope), valid, n=1)
                fix = f"did you mean '{close[0]}'?" if close else f"use one of {', '.join(valid)}"
                raise t.error("scopes", f"unknown scope {scope!r}", fix)
            scopes.add(Scope(scope))
        tokens.append(ApiToken(name=name, sha256=digest, scopes=frozenset(scopes)))
    return ApiSection(host=host, port=port, tokens=tuple(tokens))
