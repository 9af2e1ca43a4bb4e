"""Malformed and hostile MQTT messages for the agent topics, and a way to send them.

:func:`hostile_messages` makes the burst: garbage bytes, broken and non-UTF-8 JSON, JSON
that is not an object, NaN and 5,000-digit numbers, a wrong schema version, missing and
mistyped fields, kinds, agents and machines that do not match their topic, bodies that do
not fit their kind, payloads over the contract's 256 KiB and one of 4 MiB, and nesting
deep enough to exhaust a recursive parser. Every one of them must be refused by the hub
(none is a valid record of any stream). :func:`agent_side_messages` are garbage for the
topics the *agent* subscribes to (``_ack``, ``_cmd/replay``): the hub never sees those;
the agent must shrug them off.

:func:`send` publishes with ``mosquitto_pub`` (QoS 1, so each one has reached the broker
when it returns), a few at a time.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
CHANNELS = ("state", "event", "telemetry", "meta")


def _valid(agent: str, machine: str, kind: str, **over: object) -> dict[str, object]:
    bodies: dict[str, dict[str, object]] = {
        "state": {"state": "IDLE", "detail": "Idle"},
        "event": {"event": "note"},
        "telemetry": {"samples": [{"ts": 1_800_000_000_000, "values": {"x": 1}}]},
        "meta": {"protocol": "grbl"},
    }
    env: dict[str, object] = {
        "v": 1,
        "kind": kind,
        "agent": agent,
        "machine": machine,
        "stream": "f" * 32,
        "seq": 1,
        "ts": 1_800_000_000_000,
        "replay": False,
        "body": bodies[kind],
    }
    env.update(over)
    return env


def hostile_messages(root: str, site: str, agent: str, machine: str) -> list[tuple[str, bytes]]:
    """(topic, payload) pairs, every one of which the hub must refuse."""
    rng = random.Random(5)
    base = f"{root}/{site}/{agent}"
    out: list[tuple[str, bytes]] = []

    def on(channel: str, payload: bytes) -> None:
        out.append((f"{base}/{machine}/{channel}", payload))

    def js(channel: str, obj: object) -> None:
        on(channel, json.dumps(obj).encode())

    for channel in CHANNELS:
        on(channel, bytes(rng.randrange(256) for _ in range(200)))  # garbage
        on(channel, b'\xff\xfe{"v": 1}')  # not UTF-8
        on(channel, b'{"v": 1, "kind": "state", ')  # truncated JSON
        on(channel, b"[1, 2, 3]")
        on(channel, b"null")
        on(channel, b'{"v": 1, "seq": NaN}')
        on(channel, b'{"v": 1, "seq": ' + b"9" * 5000 + b"}")  # past int() digit limits
        js(channel, _valid(agent, machine, channel, v=2))
        js(channel, {"v": 1, "kind": channel})  # fields missing
        js(channel, _valid(agent, machine, channel, seq="7"))
        js(channel, _valid(agent, machine, channel, seq=0))
        js(channel, _valid(agent, machine, channel, seq=2**64))
        js(channel, _valid(agent, machine, channel, ts=-5))
        js(channel, _valid(agent, machine, channel, ts=1e20))
        js(channel, _valid(agent, machine, channel, replay="yes"))
        js(channel, _valid(agent, machine, channel, body=[1, 2]))
        js(channel, _valid(agent, machine, channel, stream="s" * 65))
        js(channel, _valid(agent, "not-" + machine, channel))  # machine mismatch
        js(channel, _valid("not-" + agent, machine, channel))  # agent mismatch
        other = CHANNELS[(CHANNELS.index(channel) + 1) % len(CHANNELS)]
        js(channel, _valid(agent, machine, other))  # kind mismatch
        js(channel, {**_valid(agent, machine, channel), "machine": "UPPER case"})
        # Over the contract's 256 KiB, looking valid, and one of 4 MiB of junk.
        js(channel, _valid(agent, machine, channel, pad="x" * 300_000))
        # Nesting that exhausts a recursive parser, alone and inside a valid envelope.
        on(channel, b"[" * 200_000)
        on(channel, b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
        deep = json.dumps(_valid(agent, machine, channel)).encode()
        on(channel, deep[:-1] + b', "deep": ' + b"[" * 50_000 + b"]" * 50_000 + b"}")
    on("telemetry", bytes(rng.randrange(256) for _ in range(4 * 1024 * 1024)))
    # Bodies that do not fit their kind.
    js("state", _valid(agent, machine, "state", body={"state": "EXPLODED"}))
    js("telemetry", _valid(agent, machine, "telemetry", body={"samples": {"ts": 1}}))
    js("telemetry", _valid(agent, machine, "telemetry", body={"samples": [{"values": {}}]}))
    js("event", _valid(agent, machine, "event", body={"event": ""}))
    js("meta", _valid(agent, machine, "meta", body={"protocol": 7}))
    # The agent's status topic: garbage, and another agent's name.
    out.append((f"{base}/_status", b"\x00garbage"))
    out.append((f"{base}/_status", b'{"v": 1, "kind": "status"}'))
    status = {
        "v": 1,
        "kind": "status",
        "agent": "not-" + agent,
        "online": False,
        "epoch": 1,
        "ts": 1,
    }
    out.append((f"{base}/_status", json.dumps(status).encode()))
    return out


def agent_side_messages(root: str, site: str, agent: str) -> list[tuple[str, bytes]]:
    """Garbage on the topics the agent subscribes to (never retained: the hub's real
    ``_ack`` stays in place)."""
    base = f"{root}/{site}/{agent}"
    junk = [b"\x00\xff", b"[", b'{"v": 1}', b'{"v": 1, "streams": {"x": "y"}}', b"[" * 100_000]
    return [(f"{base}/_ack", j) for j in junk] + [(f"{base}/_cmd/replay", j) for j in junk]


def send(port: int, messages: Sequence[tuple[str, bytes]], folder: Path, parallel: int = 6) -> int:
    """Publish every message at QoS 1 through ``mosquitto_pub``; returns how many went out."""
    folder.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[int, tuple[str, bytes]]) -> int:
        i, (topic, payload) = item
        path = folder / f"msg-{i:04d}.bin"
        path.write_bytes(payload)
        done = subprocess.run(
            [
                MOSQUITTO_PUB,
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-q",
                "1",
                "-V",
                "mqttv5",
                "-i",
                f"faults-burst-{i}",
                "-t",
                topic,
                "-f",
                str(path),
            ],
            check=False,
            capture_output=True,
            timeout=60,
        )
        path.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"mosquitto_pub failed on {topic}: {done.stderr.decode()}")
        return 1

    with ThreadPoolExecutor(parallel) as pool:
        return sum(pool.map(one, enumerate(messages)))
