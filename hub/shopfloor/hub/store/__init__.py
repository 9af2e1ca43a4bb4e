"""The hub's event store: the interface and its SQLite implementation."""

from shopfloor.hub.store.base import (
    AgentRow,
    BatchResult,
    DataLossRow,
    Incoming,
    Interval,
    MachineRow,
    RejectedRow,
    Rejection,
    StateRow,
    StateSource,
    StatusUpdate,
    Store,
    StreamLag,
    WriteBatch,
    machine_key,
)
from shopfloor.hub.store.sqlite import SqliteStore

__all__ = [
    "AgentRow",
    "BatchResult",
    "DataLossRow",
    "Incoming",
    "Interval",
    "MachineRow",
    "RejectedRow",
    "Rejection",
    "SqliteStore",
    "StateRow",
    "StateSource",
    "StatusUpdate",
    "Store",
    "StreamLag",
    "WriteBatch",
    "machine_key",
]
