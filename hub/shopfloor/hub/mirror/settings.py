"""The ``[mirror]`` section of the hub config. Absent = no metrics mirror.

```toml
[mirror]
url = "http://127.0.0.1:8428"   # InfluxDB 2.x/3.x, InfluxDB 1.8+ or VictoriaMetrics (required)
org = "shop"                    # InfluxDB 2.x organisation (default "-": others ignore it)
bucket = "shopfloor"            # InfluxDB 2.x bucket, "db/rp" for 1.8, the database for 3.x
token_file = "influx.token"     # or token = "..."; "user:password" for InfluxDB 1.8
measurement_prefix = ""         # e.g. "shopfloor_" -> shopfloor_telemetry, shopfloor_state
state_name_field = true         # also write the state as a string field (false for VM)
batch_size = 500                # records per write request
poll_s = 1.0                    # how often to look for new records when idle
timeout_s = 10                  # per write request
retry_initial_s = 1             # first retry delay; doubles per failure, with jitter
retry_max_s = 60                # ... up to this
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

KEYS: Final = (
    "url",
    "org",
    "bucket",
    "token",
    "token_file",
    "measurement_prefix",
    "state_name_field",
    "batch_size",
    "poll_s",
    "timeout_s",
    "retry_initial_s",
    "retry_max_s",
)
_PREFIX: Final = re.compile(r"[A-Za-z][A-Za-z0-9_:]*")


@dataclass(frozen=True, slots=True)
class MirrorSection:
    url: str
    bucket: str = "shopfloor"
    #: influxdb-client always sends one; InfluxDB 1.8 and VictoriaMetrics ignore it.
    org: str = "-"
    token: str | None = field(default=None, repr=False)
    measurement_prefix: str = ""
    state_name_field: bool = True
    batch_size: int = 500
    poll_s: float = 1.0
    timeout_s: float = 10.0
    retry_initial_s: float = 1.0
    retry_max_s: float = 60.0

    @property
    def target(self) -> str:
        """The URL without credentials, for logs and the health figure."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"


def parse_mirror(top: Any, base: Path) -> MirrorSection | None:
    """Validate ``[mirror]`` from the file's top table (a ``config._Reader``; its class reads
    the section too). ``base`` resolves a relative ``token_file``."""
    if "mirror" not in top.table:
        return None
    r = type(top)(top.path, "mirror", top.table_("mirror"), KEYS)
    url = r.required_str("url", 'add url = "http://127.0.0.1:8428" (InfluxDB or VictoriaMetrics)')
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise r.error(
            "url",
            f"{url!r} is not an http(s) URL with a host",
            'use e.g. "http://127.0.0.1:8428" (VictoriaMetrics) or "http://influx:8086"',
        )
    if parts.query or parts.fragment:
        raise r.error(
            "url", f"{url!r} has a query or fragment", "use org and bucket for those, not the URL"
        )
    token = _token(r, base)
    prefix = r.table.get("measurement_prefix", "")
    if not isinstance(prefix, str) or (prefix and not _PREFIX.fullmatch(prefix)):
        raise r.error(
            "measurement_prefix",
            f"{prefix!r} is not a plain name prefix",
            'use letters, digits, "_" or ":", starting with a letter, e.g. "shopfloor_"',
        )
    name_field = r.table.get("state_name_field", True)
    if not isinstance(name_field, bool):
        raise r.error(
            "state_name_field", f"must be true or false, got {name_field!r}", "write true or false"
        )
    initial = r.number("retry_initial_s", 1.0, low=0.01, high=3600.0)
    most = r.number("retry_max_s", 60.0, low=0.01, high=86400.0)
    if most < initial:
        raise r.error(
            "retry_max_s",
            f"= {most} is below retry_initial_s = {initial}",
            "make retry_max_s at least retry_initial_s",
        )
    return MirrorSection(
        url=url.rstrip("/"),
        bucket=r.str_("bucket", "shopfloor") or "shopfloor",
        org=r.str_("org", "-") or "-",
        token=token,
        measurement_prefix=prefix,
        state_name_field=name_field,
        batch_size=r.integer("batch_size", 500, low=1, high=10_000),
        poll_s=r.number("poll_s", 1.0, low=0.01, high=60.0),
        timeout_s=r.number("timeout_s", 10.0, low=0.1, high=300.0),
        retry_initial_s=initial,
        retry_max_s=most,
    )


def _token(r: Any, base: Path) -> str | None:
    token: str | None = r.str_("token")
    token_file: str | None = r.str_("token_file")
    if token is not None and token_file is not None:
        raise r.error("token_file", "token and token_file are both set", "keep only one of them")
    if token_file is None:
        return token
    path = Path(token_file).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise r.error(
            "token_file",
            f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}",
            "point it at a file that holds only the token",
        ) from None
    if not text:
        raise r.error("token_file", f"{path} is empty", "write the token into the file")
    return text
