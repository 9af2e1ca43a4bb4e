"""``postgresql://user[:password]@host[:port]/dbname``: where the PostgreSQL event store lives.

Parsed once, from ``[hub] database`` in the hub's configuration; :class:`PostgresUrl` keeps
the parts apart so the password is never printed (``display`` and ``repr`` leave it out).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Final
from urllib.parse import parse_qsl, unquote, urlsplit

SCHEMES: Final = ("postgresql", "postgres")
DEFAULT_PORT: Final = 5432
#: The query parameters the hub understands (libpq's names and values).
SSL_MODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
EXAMPLE: Final = "postgresql://shopfloor@127.0.0.1:5432/shopfloor"


class UrlError(ValueError):
    """The text is not a PostgreSQL URL the hub can use; ``fix`` says how to write it."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


@dataclass(frozen=True, slots=True)
class PostgresUrl:
    host: str
    port: int
    user: str
    database: str
    password: str | None = field(default=None, repr=False)
    sslmode: str | None = None  # None = the driver's default ("prefer")

    @property
    def display(self) -> str:
        """The URL without its password: safe for logs and error messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        tail = f"?sslmode={self.sslmode}" if self.sslmode else ""
        return f"postgresql://{self.user}@{host}:{self.port}/{self.database}{tail}"

    def with_password(self, password: str | None) -> PostgresUrl:
        return replace(self, password=password)

    def with_database(self, database: str) -> PostgresUrl:
        return replace(self, database=database)


def is_postgres_url(text: str) -> bool:
    """True if ``text`` names PostgreSQL (then it must parse) rather than an SQLite path."""
    return text.lower().startswith(tuple(f"{s}:" for s in SCHEMES))


def parse_postgres_url(text: str) -> PostgresUrl:
    """Split ``text`` into its parts; raise :class:`UrlError` naming what is wrong."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise UrlError(
            f"{_safe(text)!r} is not a valid URL ({exc})", f"use e.g. {EXAMPLE}"
        ) from None
    if parts.scheme.lower() not in SCHEMES:
        raise UrlError(
            f"{_safe(text)!r} is not a PostgreSQL URL",
            f"start it with postgresql://, e.g. {EXAMPLE}",
        )
    if not parts.hostname:
        raise UrlError(f"{_safe(text)!r} names no host", f"write the server's host, e.g. {EXAMPLE}")
    if not parts.username:
        raise UrlError(
            f"{_safe(text)!r} names no user", f"write the user before an @, e.g. {EXAMPLE}"
        )
    database = unquote(parts.path.removeprefix("/"))
    if not database or "/" in database:
        raise UrlError(
            f"{_safe(text)!r} names no database (the part after host:port/)",
            f"end the URL with /DBNAME, e.g. {EXAMPLE}",
        )
    if parts.fragment:
        raise UrlError(f"{_safe(text)!r} has a '#' part", "remove it (or percent-encode '#')")
    sslmode = None
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name != "sslmode":
            raise UrlError(
                f"unknown URL parameter {name!r}", "the only parameter the hub reads is ?sslmode="
            )
        if value not in SSL_MODES:
            raise UrlError(f"sslmode={value!r} is not known", f"use one of {', '.join(SSL_MODES)}")
        sslmode = value
    return PostgresUrl(
        host=parts.hostname,
        port=port or DEFAULT_PORT,
        user=unquote(parts.username),
        database=database,
        password=unquote(parts.password) if parts.password is not None else None,
        sslmode=sslmode,
    )


def _safe(text: str) -> str:
    """``text`` with any password replaced by ``***``, for error messages."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return text
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"
