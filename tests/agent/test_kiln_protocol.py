"""The sans-IO Modbus RTU client against pymodbus's own encoding: whole, byte by byte, in
random splits, with noise; and a garbage-in property test."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.exceptionresponse import ExceptionResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    WriteSingleRegisterRequest,
)

from shopfloor.agent.protocols.modbus_rtu import (
    ExceptionReply,
    FrameError,
    ModbusRtuClient,
    RegistersRead,
    RegisterWritten,
    crc16,
    read_holding_registers,
    read_input_registers,
    write_register,
)

CLIENT_FRAMER = FramerRTU(DecodePDU(is_server=False))


def pymodbus_frame(pdu: object) -> bytes:
    return CLIENT_FRAMER.buildFrame(pdu)  # type: ignore[arg-type]


def test_crc_matches_the_spec_example_and_pymodbus() -> None:
    body = bytes.fromhex("11 03 00 6B 00 03")
    assert crc16(body).to_bytes(2, "little") == bytes.fromhex("76 87")
    assert FramerRTU.compute_CRC(body) == int.from_bytes(crc16(body).to_bytes(2, "little"), "big")


def test_fact_sheet_golden_frames() -> None:
    assert read_holding_registers(0x1000, 2).encode() == bytes.fromhex("01 03 10 00 00 02 C0 CB")
    assert write_register(0x1001, 1200).encode() == bytes.fromhex("01 06 10 01 04 B0 DF BE")
    assert read_input_registers(0x03E8).encode() == bytes.fromhex("01 04 03 E8 00 01 B1 BA")
    client = ModbusRtuClient()
    client.send(read_holding_registers(0x1000, 2))
    [event] = client.feed(bytes.fromhex("01 03 04 03 E8 04 4C 79 76"))
    assert isinstance(event, RegistersRead)
    assert event.registers == (1000, 1100)
    client.send(read_holding_registers(0x1000, 2))
    [exc] = client.feed(bytes.fromhex("01 83 02 C0 F1"))
    assert isinstance(exc, ExceptionReply)
    assert exc.code == 2
    assert exc.text == "illegal data address"


@given(
    unit=st.integers(1, 247),
    address=st.integers(0, 0xFFFF),
    count=st.integers(1, 125),
    value=st.integers(0, 0xFFFF),
)
def test_requests_equal_pymodbus_frames(unit: int, address: int, count: int, value: int) -> None:
    ours = read_holding_registers(address, count, device_id=unit).encode()
    theirs = pymodbus_frame(ReadHoldingRegistersRequest(address=address, count=count, dev_id=unit))
    assert ours == theirs
    ours = read_input_registers(address, count, device_id=unit).encode()
    theirs = pymodbus_frame(ReadInputRegistersRequest(address=address, count=count, dev_id=unit))
    assert ours == theirs
    ours = write_register(address, value, device_id=unit).encode()
    theirs = pymodbus_frame(
        WriteSingleRegisterRequest(address=address, registers=[value], dev_id=unit)
    )
    assert ours == theirs


def _feed_split(client: ModbusRtuClient, data: bytes, cuts: list[int]) -> list[object]:
    events: list[object] = []
    start = 0
    for cut in sorted(set(cuts)):
        events += client.feed(data[start:cut])
        start = cut
    events += client.feed(data[start:])
    return events


@settings(max_examples=200)
@given(
    unit=st.integers(1, 247),
    registers=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=20),
    noise=st.binary(max_size=12),
    data=st.data(),
)
def test_reply_in_any_split_after_noise(
    unit: int, registers: list[int], noise: bytes, data: st.DataObject
) -> None:
    reply = pymodbus_frame(ReadHoldingRegistersResponse(registers=registers, dev_id=unit))
    wire = noise + reply
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=6))
    client = ModbusRtuClient()
    client.send(read_holding_registers(0x1000, len(registers), device_id=unit))
    events = _feed_split(client, wire, cuts)
    reads = [e for e in events if isinstance(e, RegistersRead)]
    assert [r.registers for r in reads] == [tuple(registers)]
    assert all(isinstance(e, RegistersRead | FrameError) for e in events)
    assert client.pending is None


def test_byte_by_byte_and_exception_from_pymodbus() -> None:
    reply = pymodbus_frame(ExceptionResponse(3, 4, device_id=7))
    client = ModbusRtuClient()
    client.send(read_holding_registers(0x1000, 2, device_id=7))
    events = [e for b in reply for e in client.feed(bytes([b]))]
    assert events == [ExceptionReply(read_holding_registers(0x1000, 2, device_id=7), 4)]


def test_crc_error_is_reported_and_the_next_reply_is_read() -> None:
    client = ModbusRtuClient()
    request = read_holding_registers(0x1000, 2)
    client.send(request)
    bad = bytearray(bytes.fromhex("01 03 04 03 E8 04 4C 79 76"))
    bad[4] ^= 0x10
    events = client.feed(bytes(bad))
    assert events
    assert all(isinstance(e, FrameError) for e in events)
    assert client.pending is request
    [good] = client.feed(bytes.fromhex("01 03 04 03 E8 04 4C 79 76"))
    assert isinstance(good, RegistersRead)


def test_other_units_and_unsolicited_bytes_are_errors_not_replies() -> None:
    client = ModbusRtuClient()
    [unsolicited] = client.feed(b"\x01\x03\x02\x00\x01")
    assert isinstance(unsolicited, FrameError)
    client.send(read_holding_registers(0x1000, 1, device_id=2))
    other = pymodbus_frame(ReadHoldingRegistersResponse(registers=[5], dev_id=3))
    assert not any(isinstance(e, RegistersRead) for e in client.feed(other))


def test_write_echo() -> None:
    client = ModbusRtuClient()
    request = write_register(0x1001, 1200)
    echo = client.send(request)
    assert client.feed(echo) == [RegisterWritten(request)]


def test_expire_drops_a_late_reply() -> None:
    client = ModbusRtuClient()
    client.send(read_holding_registers(0x1000, 2))
    client.feed(bytes.fromhex("01 03 04 03"))
    client.expire()
    assert client.buffered == 0
    assert all(isinstance(e, FrameError) for e in client.feed(bytes.fromhex("E8 04 4C 79 76")))


@settings(max_examples=300)
@given(garbage=st.binary(max_size=600), count=st.integers(1, 125))
def test_garbage_in_only_frame_errors_and_bounded_buffer(garbage: bytes, count: int) -> None:
    client = ModbusRtuClient()
    client.send(read_holding_registers(0, count))
    for i in range(0, len(garbage), 37):
        for event in client.feed(garbage[i : i + 37]):
            assert isinstance(event, FrameError | RegistersRead | ExceptionReply)
        assert client.buffered <= client.max_frame_bytes
