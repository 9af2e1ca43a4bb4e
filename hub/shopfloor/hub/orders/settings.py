"""The ``[orders]`` and ``[webhooks]`` sections of the hub config.

```toml
[orders]
sweep_s = 30              # re-derive every open order this often (machine states change too)

[webhooks]
max_attempts = 12         # attempts per delivery before it is marked dead
retry_base_s = 10         # the first retry waits 5..10 s, the next 10..20 s, ...
retry_max_s = 3600        # ... never more than this
timeout_s = 10            # per attempt, in total: connect, send, answer
concurrency = 4           # deliveries in flight at once
```
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from shopfloor.hub.errors import ConfigError
from shopfloor.hub.orders.backoff import RetryPolicy

_ORDERS_KEYS: Final = ("sweep_s",)
_WEBHOOK_KEYS: Final = ("max_attempts", "retry_base_s", "retry_max_s", "timeout_s", "concurrency")


@dataclass(frozen=True, slots=True)
class WebhooksSection:
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float = 10.0
    concurrency: int = 4


@dataclass(frozen=True, slots=True)
class OrdersSection:
    sweep_s: float = 30.0
    webhooks: WebhooksSection = field(default_factory=WebhooksSection)


class _Table:
    def __init__(self, path: str, name: str, table: object, known: tuple[str, ...]) -> None:
        self.path, self.name = path, name
        if not isinstance(table, dict):
            raise ConfigError("must be a table", path=path, key=name, fix=f"write [{name}]")
        self.table: Mapping[str, Any] = table
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                fix = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
                raise ConfigError("unknown key", path=path, key=f"{name}.{key}", fix=fix)

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(
                f"must be a number, got {value!r}",
                path=self.path,
                key=f"{self.name}.{key}",
                fix=f"use e.g. {key} = {default}",
            )
        if not low <= value <= high:
            raise ConfigError(
                f"= {value} is outside {low}..{high}",
                path=self.path,
                key=f"{self.name}.{key}",
                fix="pick a value in range",
            )
        return float(value)

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                f"must be a whole number, got {value!r}",
                path=self.path,
                key=f"{self.name}.{key}",
                fix=f"use e.g. {key} = {default}",
            )
        return int(self.number(key, default, low, high))


def parse_orders(top: Any) -> OrdersSection:
    """Validate ``[orders]`` and ``[webhooks]`` from the config file's top table (a
    ``config._Reader``)."""
    path: str = top.path
    o = _Table(path, "orders", top.table.get("orders", {}), _ORDERS_KEYS)
    w = _Table(path, "webhooks", top.table.get("webhooks", {}), _WEBHOOK_KEYS)
    base = w.number("retry_base_s", 10.0, 0.01, 3600.0)
    cap = w.number("retry_max_s", 3600.0, 0.01, 7 * 86400.0)
    if cap < base:
        raise ConfigError(
            f"retry_max_s ({cap}) is below retry_base_s ({base})",
            path=path,
            key="webhooks.retry_max_s",
            fix="make retry_max_s at least retry_base_s",
        )
    return OrdersSection(
        sweep_s=o.number("sweep_s", 30.0, 0.05, 3600.0),
        webhooks=WebhooksSection(
            retry=RetryPolicy(
                max_attempts=w.integer("max_attempts", 12, 1, 100),
                base_delay_s=base,
                max_delay_s=cap,
            ),
            timeout_s=w.number("timeout_s", 10.0, 0.1, 300.0),
            concurrency=w.integer("concurrency", 4, 1, 64),
        ),
    )
