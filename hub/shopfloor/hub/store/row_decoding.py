"""Rows as both stores read them back, decoded once.

The SQLite and PostgreSQL stores select the same columns in the same order (JSON as
text), so turning a row into the interface's records is shared here.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from shopfloor.contract import MachineState
from shopfloor.hub.store.base import MachineRow, StateRow, StateSource, StoredRecord


class Columns(Protocol):
    """A database row by position: an SQLite tuple or an asyncpg Record."""

    def __getitem__(self, index: int, /) -> Any: ...


def json_object(text: str | None) -> dict[str, Any] | None:
    """A JSON column's text as a dict, or None (NULL, or JSON that is not an object)."""
    if text is None:
        return None
    value = json.loads(text)
    return value if isinstance(value, dict) else None


def machine_row(r: Columns) -> MachineRow:
    """A row of the machines query: the machine's 12 columns, then its newest state row's
    ts, state, detail and source (NULL when it has none)."""
    latest = (
        StateRow(r[0], int(r[12]), MachineState(r[13]), str(r[14]), StateSource(r[15]))
        if r[12] is not None
        else None
    )
    return MachineRow(
        key=r[0],
        agent=r[1],
        machine=r[2],
        site=r[3],
        name=r[4],
        kind=r[5],
        protocol=r[6],
        firmware=r[7],
        last_seen=r[8],
        meta=json_object(r[9]) or {},
        state_body=json_object(r[10]),
        state_ts=r[11],
        latest=latest,
    )


def stored_record(r: Columns) -> StoredRecord:
    """A row of the record feed: cursor, agent, stream, seq, machine, kind, ts, body."""
    return StoredRecord(
        cursor=int(r[0]),
        agent=str(r[1]),
        stream=str(r[2]),
        seq=int(r[3]),
        machine=str(r[4]),
        kind=str(r[5]),
        ts=int(r[6]),
        body=json.loads(r[7]),
    )
