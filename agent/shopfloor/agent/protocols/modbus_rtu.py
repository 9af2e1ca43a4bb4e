"""Modbus RTU, client side, as a sans-IO protocol in the style of h11.

:class:`ModbusRtuClient` encodes one request at a time (:meth:`ModbusRtuClient.send`) and
turns the bytes that come back into typed, frozen events (:meth:`ModbusRtuClient.feed`).
It frames by content and expected length, never by timing (USB adapters ruin the 3.5
character gap): it knows which unit and function it asked, so a reply is
``[unit][function][...][CRC lo][CRC hi]`` of a length it can compute. Anything else (line
noise, a CRC mismatch, a reply from another unit, bytes with no request outstanding) comes
out as a :class:`FrameError` and the parser resyncs. ``feed`` never raises and the buffer
never holds more than ``max_frame_bytes``.

Supported functions: 0x01/0x02 read coils/discrete inputs, 0x03/0x04 read holding/input
registers, 0x06 write single register, and exception replies (function | 0x80).

Wire format: ``/work/shared/reference/serial-protocols.md`` section 4.2. Addresses are the
0-based protocol addresses (0x1000), not "4xxxx" reference numbers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from shopfloor.agent.errors import ProtocolError

__all__ = [
    "EXCEPTION_TEXTS",
    "BitsRead",
    "ExceptionReply",
    "FrameError",
    "Function",
    "ModbusEvent",
    "ModbusRtuClient",
    "RegisterWritten",
    "RegistersRead",
    "Request",
    "crc16",
]

#: Largest RTU frame (spec: 256 bytes).
MAX_RTU_FRAME: Final = 256
_KEEP: Final = 64


class Function(enum.IntEnum):
    READ_COILS = 0x01
    READ_DISCRETE_INPUTS = 0x02
    READ_HOLDING_REGISTERS = 0x03
    READ_INPUT_REGISTERS = 0x04
    WRITE_SINGLE_REGISTER = 0x06


_BIT_READS: Final = frozenset({Function.READ_COILS, Function.READ_DISCRETE_INPUTS})
_REGISTER_READS: Final = frozenset({Function.READ_HOLDING_REGISTERS, Function.READ_INPUT_REGISTERS})

#: Modbus Application Protocol V1.1b3, section 7.
EXCEPTION_TEXTS: Final = MappingProxyType(
    {
        0x01: "illegal function",
        0x02: "illegal data address",
        0x03: "illegal data value",
        0x04: "server device failure",
        0x05: "acknowledge",
        0x06: "server device busy",
        0x08: "memory parity error",
        0x0A: "gateway path unavailable",
        0x0B: "gateway target device failed to respond",
    }
)


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE: Final = _make_table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF). Sent low byte first:
    ``crc16(frame).to_bytes(2, "little")``."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(body: bytes) -> bytes:
    """``body`` followed by its CRC, low byte first."""
    return body + crc16(body).to_bytes(2, "little")


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class Request:
    """One request. ``count`` for reads; ``value`` for a single-register write."""

    device_id: int
    function: Function
    address: int
    count: int = 1
    value: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.device_id <= 247:
            raise ValueError(f"device_id must be 1..247, got {self.device_id}")
        if not 0 <= self.address <= 0xFFFF:
            raise ValueError(f"address must be 0..65535, got {self.address}")
        limit = 2000 if self.function in _BIT_READS else 125
        if self.function is not Function.WRITE_SINGLE_REGISTER and not 1 <= self.count <= limit:
            raise ValueError(f"count must be 1..{limit}, got {self.count}")
        if not 0 <= self.value <= 0xFFFF:
            raise ValueError(f"value must be 0..65535, got {self.value}")

    def encode(self) -> bytes:
        second = self.value if self.function is Function.WRITE_SINGLE_REGISTER else self.count
        body = bytes((self.device_id, self.function)) + self.address.to_bytes(2, "big")
        return with_crc(body + second.to_bytes(2, "big"))

    @property
    def reply_length(self) -> int:
        """Bytes in a normal reply (an exception reply is always 5)."""
        if self.function is Function.WRITE_SINGLE_REGISTER:
            return 8
        return 5 + self.data_length

    @property
    def data_length(self) -> int:
        if self.function in _BIT_READS:
            return (self.count + 7) // 8
        return 2 * self.count


def read_holding_registers(address: int, count: int = 1, *, device_id: int = 1) -> Request:
    return Request(device_id, Function.READ_HOLDING_REGISTERS, address, count)


def read_input_registers(address: int, count: int = 1, *, device_id: int = 1) -> Request:
    return Request(device_id, Function.READ_INPUT_REGISTERS, address, count)


def read_coils(address: int, count: int = 1, *, device_id: int = 1) -> Request:
    return Request(device_id, Function.READ_COILS, address, count)


def write_register(address: int, value: int, *, device_id: int = 1) -> Request:
    return Request(device_id, Function.WRITE_SINGLE_REGISTER, address, value=value)


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class RegistersRead:
    """The reply to a 0x03/0x04 read: big-endian 16-bit words, in address order."""

    request: Request
    registers: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class BitsRead:
    """The reply to a 0x01/0x02 read: one bool per requested coil or input."""

    request: Request
    bits: tuple[bool, ...]


@dataclass(frozen=True, slots=True)
class RegisterWritten:
    """The echo of a 0x06 write."""

    request: Request


@dataclass(frozen=True, slots=True)
class ExceptionReply:
    """The device refused the request (function | 0x80, exception code)."""

    request: Request
    code: int

    @property
    def text(self) -> str:
        return EXCEPTION_TEXTS.get(self.code, f"exception {self.code:#04x}")


@dataclass(frozen=True, slots=True)
class FrameError:
    """Bytes that were not the reply we wait for: noise, a bad CRC, another unit's frame,
    or bytes with no request outstanding. Never raised; the parser resyncs."""

    raw: bytes
    reason: str

    @property
    def error(self) -> ProtocolError:
        return ProtocolError(self.reason, raw=self.raw)


ModbusEvent = RegistersRead | BitsRead | RegisterWritten | ExceptionReply | FrameError


# --------------------------------------------------------------------------- client


class ModbusRtuClient:
    """One request outstanding at a time; replies framed by content and expected length.

    ``send(request)`` returns the bytes to write and remembers the request. ``feed(data)``
    returns the reply once it is complete (and clears the outstanding request), plus a
    :class:`FrameError` for every run of bytes it had to throw away. ``expire()`` gives up
    on the outstanding request (the caller decides when: this class has no clock).
    """

    def __init__(self, max_frame_bytes: int = MAX_RTU_FRAME) -> None:
        if max_frame_bytes < 8:
            raise ValueError("max_frame_bytes must be at least 8")
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._pending: Request | None = None

    @property
    def pending(self) -> Request | None:
        return self._pending

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def send(self, request: Request) -> bytes:
        """Encode ``request`` and wait for its reply. Unread bytes of an earlier exchange
        are dropped (a late reply must not be taken for this one's)."""
        if request.reply_length > self.max_frame_bytes:
            raise ValueError(f"a reply to {request} would exceed {self.max_frame_bytes} bytes")
        self._buf.clear()
        self._pending = request
        return request.encode()

    def expire(self) -> Request | None:
        """Stop waiting for the outstanding reply; return the request given up on."""
        request, self._pending = self._pending, None
        self._buf.clear()
        return request

    def feed(self, data: bytes) -> list[ModbusEvent]:
        events: list[ModbusEvent] = []
        if not data:
            return events
        if self._pending is None:
            events.append(FrameError(bytes(data[:_KEEP]), "bytes with no request outstanding"))
            return events
        self._buf += data
        self._scan(events)
        if len(self._buf) > self.max_frame_bytes:
            drop = len(self._buf) - self.max_frame_bytes
            events.append(FrameError(bytes(self._buf[:drop][:_KEEP]), "buffer full, dropped"))
            del self._buf[:drop]
        return events

    def _scan(self, events: list[ModbusEvent]) -> None:
        request = self._pending
        assert request is not None
        buf = self._buf
        unit, function = request.device_id, int(request.function)
        waiting_at: int | None = None
        for start in range(len(buf) - 1):
            if buf[start] != unit or buf[start + 1] not in (function, function | 0x80):
                continue
            is_exception = buf[start + 1] == function | 0x80
            length = 5 if is_exception else request.reply_length
            if len(buf) - start < length:
                if waiting_at is None:
                    waiting_at = start
                continue
            frame = bytes(buf[start : start + length])
            event = self._decode(request, frame, is_exception)
            if event is None:
                continue  # bad CRC or shape at this offset: try the next one
            if start:
                events.append(FrameError(bytes(buf[:start][:_KEEP]), "noise before the reply"))
            if len(buf) > start + length:
                extra = bytes(buf[start + length :][:_KEEP])
                events.append(FrameError(extra, "bytes after the reply"))
            buf.clear()
            self._pending = None
            events.append(event)
            return
        # No complete reply yet. Keep from the first place one could still start.
        keep_from = waiting_at
        if keep_from is None:
            keep_from = len(buf) - 1 if buf and buf[-1] == unit else len(buf)
        if keep_from:
            reason = (
                "bad CRC or malformed reply"
                if _has_complete_candidate(buf, keep_from, unit, function)
                else "noise while waiting for a reply"
            )
            events.append(FrameError(bytes(buf[:keep_from][:_KEEP]), reason))
            del buf[:keep_from]

    @staticmethod
    def _decode(request: Request, frame: bytes, is_exception: bool) -> ModbusEvent | None:
        if crc16(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
            return None
        if is_exception:
            return ExceptionReply(request, frame[2])
        if request.function is Function.WRITE_SINGLE_REGISTER:
            return RegisterWritten(request) if frame[:-2] == request.encode()[:-2] else None
        if frame[2] != request.data_length:
            return None
        data = frame[3:-2]
        if request.function in _BIT_READS:
            bits = tuple(bool(data[i // 8] >> (i % 8) & 1) for i in range(request.count))
            return BitsRead(request, bits)
        words = tuple(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
        return RegistersRead(request, words)


def _has_complete_candidate(buf: bytearray, end: int, unit: int, function: int) -> bool:
    return (
        any(buf[i] == unit and buf[i + 1] in (function, function | 0x80) for i in range(end - 1))
        if end > 1
        else False
    )
