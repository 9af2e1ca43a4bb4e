"""Log output for every ``shopfloor`` process: JSON lines for machines, text for people.

:func:`setup_logging` is called once by each command's ``main()`` (the agent and the hub).
It picks the format so that nobody has to think about it:

- ``SHOPFLOOR_LOG_FORMAT`` (``json``, ``text`` or ``auto``) wins when it is set;
- otherwise ``auto``: text when stderr is a terminal, JSON lines when it is not (a
  container, journald, a pipe to a log shipper).

A JSON line has ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``,
``message``, ``exception`` (the traceback, only when there is one) and every ``extra``
field bound to the record, such as the agent's ``machine``. Text lines read
``2026-11-20 10:00:00,123 INFO shopfloor.agent.app: message machine=router``.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any, Final, TextIO

#: The environment variable that chooses the format (the hub's table lists it too).
LOG_FORMAT_VARIABLE: Final = "SHOPFLOOR_LOG_FORMAT"

#: Attributes every LogRecord has; anything else on a record came in through ``extra``.
_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogFormat(enum.StrEnum):
    AUTO = "auto"
    JSON = "json"
    TEXT = "text"


class LogFormatError(ValueError):
    """``SHOPFLOOR_LOG_FORMAT`` (or a ``format`` argument) names no known format."""


def parse_log_format(value: str, *, origin: str = LOG_FORMAT_VARIABLE) -> LogFormat:
    """``value`` as a :class:`LogFormat`; the error names ``origin`` and the choices."""
    try:
        return LogFormat(value.strip().lower())
    except ValueError:
        choices = ", ".join(f.value for f in LogFormat)
        raise LogFormatError(
            f"{origin}: {value!r} is not a log format (fix: use one of {choices})"
        ) from None


def choose_format(
    requested: LogFormat | str = LogFormat.AUTO,
    *,
    environ: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
) -> LogFormat:
    """JSON or TEXT: an explicit ``requested`` format, else the environment, else whether
    ``stream`` (stderr by default) is a terminal."""
    chosen = parse_log_format(str(requested), origin="format")
    if chosen is LogFormat.AUTO and environ is not None:
        value = environ.get(LOG_FORMAT_VARIABLE, "")
        if value.strip():
            chosen = parse_log_format(value)
    if chosen is not LogFormat.AUTO:
        return chosen
    target = stream if stream is not None else sys.stderr
    is_tty = getattr(target, "isatty", None)
    return LogFormat.TEXT if is_tty is not None and is_tty() else LogFormat.JSON


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller bound with ``extra=`` (or a LoggerAdapter), in record order."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD_ATTRS and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
        line: dict[str, Any] = {
            "ts": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        for key, value in extra_fields(record).items():
            line.setdefault(key, value)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...``: greppable, one line per event (plus
    the traceback, if any)."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = extra_fields(record)
        if not fields:
            return line
        head, sep, tail = line.partition("\n")
        pairs = " ".join(f"{key}={value}" for key, value in fields.items())
        return f"{head} {pairs}{sep}{tail}"


class _ShopfloorHandler(logging.StreamHandler[TextIO]):
    """Marks the handler :func:`setup_logging` installed, so a second call replaces it."""


def setup_logging(
    format: LogFormat | str = LogFormat.AUTO,
    *,
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> LogFormat | None:
    """Send the root logger's records to ``stream`` (stderr) in the chosen format.

    A host that configured logging already (pytest, an embedding program) is left alone:
    then nothing changes and None is returned. Otherwise the chosen format is returned.
    Raises :class:`LogFormatError` for an unknown format (from ``format`` or
    ``SHOPFLOOR_LOG_FORMAT``).
    """
    chosen = choose_format(format, environ=environ, stream=stream)
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _ShopfloorHandler)]
    if len(ours) != len(root.handlers):
        return None
    for handler in ours:
        root.removeHandler(handler)
    handler = _ShopfloorHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if chosen is LogFormat.JSON else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    return chosen


__all__ = [
    "LOG_FORMAT_VARIABLE",
    "JsonFormatter",
    "LogFormat",
    "LogFormatError",
    "TextFormatter",
    "choose_format",
    "extra_fields",
    "parse_log_format",
    "setup_logging",
]
