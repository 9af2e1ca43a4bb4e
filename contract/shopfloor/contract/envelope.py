"""The JSON envelope of wire contract v1, with validation that explains every rejection.

Every machine record (state, telemetry, event, meta) travels as an :class:`Envelope`.
``stream`` + ``seq`` is its idempotency key: ``stream`` names the agent's outbox and
changes only when the outbox is recreated, ``seq`` counts up per stream and is never
reused. ``ts`` is the acquisition time (epoch ms UTC, from the agent's wall clock) and
``mono`` the agent's monotonic clock at the same moment, so the hub can detect and correct
a wall clock that is unset or off.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from shopfloor.contract.errors import ContractError
from shopfloor.contract.states import MachineState
from shopfloor.contract.topics import validate_id

SCHEMA_VERSION: Final = 1
#: Larger payloads are rejected; the agent batches telemetry well below this.
MAX_PAYLOAD_BYTES: Final = 256 * 1024
MAX_SEQ: Final = 2**63 - 1
_MAX_STREAM_LEN: Final = 64


class RecordKind(enum.StrEnum):
    STATE = "state"
    TELEMETRY = "telemetry"
    EVENT = "event"
    META = "meta"


@dataclass(frozen=True, slots=True)
class Envelope:
    """One machine record as it travels over MQTT."""

    kind: RecordKind
    agent: str
    machine: str
    stream: str
    seq: int
    ts: int
    body: Mapping[str, Any]
    mono: int | None = None
    replay: bool = False
    v: int = field(default=SCHEMA_VERSION)
    #: The agent's boot epoch when the record was acquired (``mono`` is only comparable
    #: within one epoch). Optional: older agents do not send it.
    epoch: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": self.v,
            "kind": str(self.kind),
            "agent": self.agent,
            "machine": self.machine,
            "stream": self.stream,
            "seq": self.seq,
            "ts": self.ts,
            "replay": self.replay,
            "body": dict(self.body),
        }
        if self.mono is not None:
            out["mono"] = self.mono
        if self.epoch is not None:
            out["epoch"] = self.epoch
        return out


def encode_envelope(envelope: Envelope) -> bytes:
    return _dumps(envelope.to_json())


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _loads(payload: bytes, what: str) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ContractError(
            f"{what} payload is {len(payload)} bytes, more than the {MAX_PAYLOAD_BYTES} allowed"
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError(
            f"{what} payload is not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from exc
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ContractError(f"{what} payload is not JSON: {exc.msg} at char {exc.pos}") from exc
    except RecursionError as exc:
        raise ContractError(f"{what} payload is nested too deeply to be an envelope") from exc
    except ValueError as exc:  # NaN / Infinity, which JSON does not have
        raise ContractError(f"{what} payload is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ContractError(f"{what} payload must be a JSON object, got {type(obj).__name__}")
    if _SUSPECT_ESCAPE.search(text):
        _check_strings(obj, what)
    return obj


#: Escapes that can decode to text no database stores: NUL, and UTF-16 surrogates (a lone
#: one is not Unicode; a proper pair decodes to one character and is fine).
_SUSPECT_ESCAPE: Final = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")


def _check_strings(obj: object, what: str) -> None:
    """Reject NUL characters and lone surrogates anywhere in ``obj`` (keys too)."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                raise ContractError(f"{what} payload has a NUL character (\\u0000) in a string")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ContractError(
                    f"{what} payload has a lone UTF-16 surrogate (\\ud800-\\udfff) in a string;"
                    " send valid Unicode"
                ) from None


def _require_int(obj: Mapping[str, Any], key: str, *, low: int, high: int) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ContractError(f"'{key}' must be an integer, got {value!r}", field=key)
    if not low <= value <= high:
        raise ContractError(f"'{key}' = {value} is outside {low}..{high}", field=key)
    return value


def _require_str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise ContractError(f"'{key}' must be a non-empty string, got {value!r}", field=key)
    return value


def _check_version(obj: Mapping[str, Any]) -> None:
    if "v" not in obj:
        raise ContractError("'v' (schema version) is missing", field="v")
    version = obj["v"]
    if version != SCHEMA_VERSION:
        raise ContractError(
            f"schema version {version!r} is not supported (this side speaks v{SCHEMA_VERSION}); "
            "upgrade the older side",
            field="v",
        )


def _check_body(kind: RecordKind, body: Mapping[str, Any]) -> None:
    if kind is RecordKind.STATE:
        state = body.get("state")
        if state not in MachineState.__members__:
            raise ContractError(
                f"state body: 'state' must be one of {', '.join(MachineState)}, got {state!r}",
                field="body.state",
            )
    elif kind is RecordKind.EVENT:
        _require_str(body, "event")
    elif kind is RecordKind.TELEMETRY:
        samples = body.get("samples")
        if not isinstance(samples, list):
            raise ContractError("telemetry body: 'samples' must be a list", field="body.samples")
        for i, sample in enumerate(samples):
            if not isinstance(sample, dict) or not isinstance(sample.get("values"), dict):
                raise ContractError(
                    f"telemetry body: sample {i} must be an object with 'ts' and 'values'",
                    field="body.samples",
                )
            _require_int(sample, "ts", low=0, high=2**53)
    elif kind is RecordKind.META:
        _require_str(body, "protocol")


def decode_envelope(payload: bytes) -> Envelope:
    """Parse and validate one envelope; raise :class:`ContractError` naming what is wrong."""
    obj = _loads(payload, "envelope")
    _check_version(obj)
    raw_kind = obj.get("kind")
    try:
        kind = RecordKind(str(raw_kind))
    except ValueError:
        raise ContractError(
            f"'kind' must be one of {', '.join(RecordKind)}, got {raw_kind!r}", field="kind"
        ) from None
    agent = validate_id(_require_str(obj, "agent"), "agent")
    machine = validate_id(_require_str(obj, "machine"), "machine")
    stream = _require_str(obj, "stream")
    if len(stream) > _MAX_STREAM_LEN:
        raise ContractError(f"'stream' is longer than {_MAX_STREAM_LEN} characters", field="stream")
    seq = _require_int(obj, "seq", low=1, high=MAX_SEQ)
    ts = _require_int(obj, "ts", low=0, high=2**53)
    mono = _require_int(obj, "mono", low=0, high=2**53) if obj.get("mono") is not None else None
    epoch = (
        _require_int(obj, "epoch", low=0, high=MAX_SEQ) if obj.get("epoch") is not None else None
    )
    replay = obj.get("replay", False)
    if not isinstance(replay, bool):
        raise ContractError(f"'replay' must be true or false, got {replay!r}", field="replay")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise ContractError("'body' must be a JSON object", field="body")
    _check_body(kind, body)
    return Envelope(
        kind=kind,
        agent=agent,
        machine=machine,
        stream=stream,
        seq=seq,
        ts=ts,
        mono=mono,
        replay=replay,
        body=body,
        epoch=epoch,
    )


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """Retained on ``{agent}/_status``; the agent's MQTT will carries ``online=False``."""

    agent: str
    online: bool
    epoch: int  # boot counter of the agent, persisted; lets the hub tell restarts apart
    ts: int
    version: str = ""
    #: Optional counters of the agent's outbox (depth, bytes, dropped_telemetry, ...).
    outbox: Mapping[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "kind": "status",
            "agent": self.agent,
            "online": self.online,
            "epoch": self.epoch,
            "ts": self.ts,
            "version": self.version,
        }
        if self.outbox is not None:
            out["outbox"] = dict(self.outbox)
        return out


def encode_status(status: AgentStatus) -> bytes:
    return _dumps(status.to_json())


def decode_status(payload: bytes) -> AgentStatus:
    obj = _loads(payload, "status")
    _check_version(obj)
    online = obj.get("online")
    if not isinstance(online, bool):
        raise ContractError(f"'online' must be true or false, got {online!r}", field="online")
    version = obj.get("version", "")
    raw_outbox = obj.get("outbox")
    outbox = (
        {str(k): v for k, v in raw_outbox.items() if isinstance(v, int) and not isinstance(v, bool)}
        if isinstance(raw_outbox, dict)
        else None
    )
    return AgentStatus(
        agent=validate_id(_require_str(obj, "agent"), "agent"),
        online=online,
        epoch=_require_int(obj, "epoch", low=0, high=MAX_SEQ),
        ts=_require_int(obj, "ts", low=0, high=2**53),
        version=version if isinstance(version, str) else "",
        outbox=outbox,
    )


@dataclass(frozen=True, slots=True)
class AckWatermark:
    """Retained on ``{agent}/_ack`` by the hub: per stream, the highest contiguous seq committed."""

    streams: Mapping[str, int]
    ts: int

    def to_json(self) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, "streams": dict(self.streams), "ts": self.ts}


def encode_ack(ack: AckWatermark) -> bytes:
    return _dumps(ack.to_json())


def decode_ack(payload: bytes) -> AckWatermark:
    obj = _loads(payload, "ack")
    _check_version(obj)
    streams = obj.get("streams")
    if not isinstance(streams, dict):
        raise ContractError("'streams' must be an object of stream id to seq", field="streams")
    checked = {}
    for stream, seq in streams.items():
        checked[stream] = _require_int({"seq": seq}, "seq", low=0, high=MAX_SEQ)
    return AckWatermark(streams=checked, ts=_require_int(obj, "ts", low=0, high=2**53))


#: Seconds a replay request stays valid in the broker (MQTT 5 message expiry).
REPLAY_EXPIRY_S: Final = 60


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """Sent by the hub on ``{agent}/_cmd/replay``: publish again from ``from_seq`` on.

    The agent answers with the rows it still has (``replay: true``) and, for the seqs at
    or after ``from_seq`` that it no longer has, a ``data_loss`` event.
    """

    stream: str
    from_seq: int

    def to_json(self) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, "stream": self.stream, "from_seq": self.from_seq}


def encode_replay(request: ReplayRequest) -> bytes:
    return _dumps(request.to_json())


def decode_replay(payload: bytes) -> ReplayRequest:
    obj = _loads(payload, "replay request")
    _check_version(obj)
    stream = _require_str(obj, "stream")
    if len(stream) > _MAX_STREAM_LEN:
        raise ContractError(f"'stream' is longer than {_MAX_STREAM_LEN} characters", field="stream")
    return ReplayRequest(stream=stream, from_seq=_require_int(obj, "from_seq", low=1, high=MAX_SEQ))


@dataclass(frozen=True, slots=True)
class DataLoss:
    """The body of a ``data_loss`` event: seqs of ``stream`` the agent will never send.

    ``ranges`` are inclusive ``[first, last]`` pairs. ``reason`` is ``outbox_full`` (the
    outbox cap dropped them), ``not_in_outbox`` (asked for by a replay request but gone:
    a seq block skipped by a crash, or telemetry lost with a power cut) or
    ``acked_earlier`` (asked for by a hub whose watermark went back, e.g. restored from a
    backup, after it had acknowledged them and the agent deleted them).
    """

    stream: str
    ranges: tuple[tuple[int, int], ...]
    reason: str
    count: int

    def to_body(self) -> dict[str, Any]:
        return {
            "event": "data_loss",
            "stream": self.stream,
            "ranges": [list(r) for r in self.ranges],
            "reason": self.reason,
            "count": self.count,
        }


#: At most this many ranges in one data_loss event (the agent splits longer lists).
MAX_LOSS_RANGES: Final = 1000


def parse_data_loss(body: Mapping[str, Any]) -> DataLoss | None:
    """The :class:`DataLoss` in an event body, or None if the body is not a valid one."""
    if body.get("event") != "data_loss":
        return None
    stream = body.get("stream")
    raw = body.get("ranges")
    if not isinstance(stream, str) or not stream or not isinstance(raw, list):
        return None
    ranges = []
    for item in raw[:MAX_LOSS_RANGES]:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in item)
            or not 1 <= item[0] <= item[1] <= MAX_SEQ
        ):
            return None
        ranges.append((int(item[0]), int(item[1])))
    reason = body.get("reason")
    count = body.get("count")
    return DataLoss(
        stream=stream,
        ranges=tuple(ranges),
        reason=reason if isinstance(reason, str) else "",
        count=count if isinstance(count, int) and not isinstance(count, bool) else 0,
    )
