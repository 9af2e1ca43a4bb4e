from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shopfloor.contract import (
    AckWatermark,
    AgentStatus,
    ContractError,
    Envelope,
    RecordKind,
    decode_ack,
    decode_envelope,
    decode_status,
    encode_ack,
    encode_envelope,
    encode_status,
)


def _good(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "v": 1,
        "kind": "state",
        "agent": "pi-1",
        "machine": "router",
        "stream": "5f0c2d0e9a4b4f53a1a3b7e4d2f1c0aa",
        "seq": 42,
        "ts": 1_764_000_000_000,
        "mono": 123_456,
        "replay": False,
        "body": {"state": "RUNNING", "detail": "Run"},
    }
    base.update(overrides)
    return base


def _raw(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


def test_round_trip() -> None:
    env = decode_envelope(_raw(_good()))
    assert env.kind is RecordKind.STATE
    assert env.seq == 42
    assert env.mono == 123_456
    assert decode_envelope(encode_envelope(env)) == env


@given(
    seq=st.integers(1, 2**63 - 1),
    ts=st.integers(0, 2**53),
    values=st.dictionaries(
        st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
        st.floats(allow_nan=False, allow_infinity=False),
        max_size=5,
    ),
)
def test_telemetry_round_trip(seq: int, ts: int, values: dict[str, float]) -> None:
    env = Envelope(
        kind=RecordKind.TELEMETRY,
        agent="pi-1",
        machine="laser",
        stream="s1",
        seq=seq,
        ts=ts,
        body={"samples": [{"ts": ts, "values": values}]},
    )
    assert decode_envelope(encode_envelope(env)) == env


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1,2]", "must be a JSON object"),
        (_raw(_good(v=2)), "schema version 2 is not supported"),
        (_raw({k: v for k, v in _good().items() if k != "v"}), "'v' .* is missing"),
        (_raw(_good(kind="gossip")), "'kind' must be one of"),
        (_raw(_good(seq=0)), "'seq' = 0 is outside"),
        (_raw(_good(seq="7")), "'seq' must be an integer"),
        (_raw(_good(seq=True)), "'seq' must be an integer"),
        (_raw(_good(ts=-5)), "'ts' = -5 is outside"),
        (_raw(_good(agent="Pi 1")), "agent id 'Pi 1' is not valid"),
        (_raw(_good(replay="yes")), "'replay' must be true or false"),
        (_raw(_good(body=[])), "'body' must be a JSON object"),
        (_raw(_good(body={"state": "BUSY"})), "'state' must be one of"),
        (_raw(_good(kind="telemetry", body={"samples": "x"})), "'samples' must be a list"),
        (_raw(_good(kind="event", body={})), "'event' must be a non-empty string"),
        (_raw(_good(stream="x" * 65)), "longer than 64"),
        (b" " * (300 * 1024), "more than the"),
    ],
)
def test_rejections_name_the_problem(payload: bytes, reason: str) -> None:
    with pytest.raises(ContractError, match=reason):
        decode_envelope(payload)


@given(st.binary(max_size=512))
def test_garbage_only_raises_contract_error(payload: bytes) -> None:
    reason = None
    try:
        decode_envelope(payload)
    except ContractError as exc:
        reason = exc.reason
    # Random bytes are never a valid envelope, and the only error is ours, with a reason.
    assert reason


def test_unknown_keys_are_ignored_for_forward_compatibility() -> None:
    env = decode_envelope(_raw(_good(future_field={"x": 1})))
    assert env.seq == 42


def test_status_and_ack_round_trip() -> None:
    status = AgentStatus(agent="pi-1", online=False, epoch=7, ts=1, version="0.1.0")
    assert decode_status(encode_status(status)) == status
    ack = AckWatermark(streams={"s1": 10, "s2": 0}, ts=5)
    assert decode_ack(encode_ack(ack)) == ack
    with pytest.raises(ContractError, match="'online' must be true or false"):
        decode_status(b'{"v":1,"agent":"pi-1","online":"no","epoch":1,"ts":1}')


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"v":1,"body":' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
        (b'{"v":1,"kind":"telemetry","x":NaN}', "NaN is not a JSON number"),
        (b'{"v":1,"x":-Infinity}', "-Infinity is not a JSON number"),
    ],
)
def test_hostile_json_is_our_error_not_a_crash(payload: bytes, reason: str) -> None:
    with pytest.raises(ContractError, match=reason):
        decode_envelope(payload)


@pytest.mark.parametrize(
    ("escape", "reason"),
    [
        ("\\ud800", "lone UTF-16 surrogate"),
        ("tail\\uDFFF", "lone UTF-16 surrogate"),
        ("\\ude00\\ud83d", "lone UTF-16 surrogate"),  # a pair in the wrong order
        ("a\\u0000b", "NUL character"),
    ],
)
def test_strings_no_database_can_store_are_rejected(escape: str, reason: str) -> None:
    # Valid UTF-8 and valid JSON, but not text: SQLite's UTF-8 encoder and PostgreSQL's
    # jsonb would fail on the whole batch (in a value, a key, or deep inside a list).
    for body in (
        f'{{"state":"RUNNING","detail":"{escape}"}}',
        f'{{"state":"RUNNING","{escape}":1}}',
        f'{{"state":"RUNNING","x":[[{{"y":"{escape}"}}]]}}',
    ):
        raw = _raw(_good()).replace(b'{"state": "RUNNING", "detail": "Run"}', body.encode())
        assert escape.encode() in raw
        with pytest.raises(ContractError, match=reason):
            decode_envelope(raw)


def test_escaped_text_that_is_unicode_is_fine() -> None:
    body = '{"state":"RUNNING","detail":"\\ud83d\\ude00 \\u00e9 \\u0001"}'
    raw = _raw(_good()).replace(b'{"state": "RUNNING", "detail": "Run"}', body.encode())
    assert decode_envelope(raw).body["detail"] == "\U0001f600 \u00e9 \u0001"
