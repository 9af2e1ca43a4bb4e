"""Text PostgreSQL can hold, for every PostgreSQL mixin of the store.

PostgreSQL ``text`` and ``jsonb`` refuse NUL and unpaired UTF-16 surrogates, which JSON's
``\\u`` escapes can carry. The contract and the API refuse both at the door; whatever still
arrives (an older agent, a stored body from before) becomes U+FFFD here, so it is stored,
changed, rather than failing its whole batch again and again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def utf8_ok(value: str) -> bool:
    """True when ``value`` encodes as UTF-8 (no unpaired surrogate)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def pg_text(value: str) -> str:
    """``value`` with NUL and unpaired surrogates replaced by U+FFFD."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if not utf8_ok(value):
        value = _SURROGATE.sub("\ufffd", value)
    return value


def pg_opt_text(value: str | None) -> str | None:
    return None if value is None else pg_text(value)


def pg_clean(obj: Any) -> Any:
    """``obj`` (JSON-shaped) with every string and key made :func:`pg_text`."""
    if isinstance(obj, str):
        return pg_text(obj)
    if isinstance(obj, dict):
        return {pg_text(str(k)): pg_clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [pg_clean(v) for v in obj]
    return obj


def pg_json(obj: Mapping[str, Any]) -> str:
    """Compact JSON text for a ``jsonb`` column, cleaned only when it has to be."""
    text = json.dumps(dict(obj), separators=(",", ":"), ensure_ascii=False)
    if "\\u0000" in text or not utf8_ok(text):
        text = json.dumps(pg_clean(dict(obj)), separators=(",", ":"), ensure_ascii=False)
    return text
