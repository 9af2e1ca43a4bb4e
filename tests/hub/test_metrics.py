"""``GET /metrics``: a real hub process fed real messages through Mosquitto, its output read
with a strict parser of the Prometheus text format (0.0.4) written here."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from shopfloor.contract import AgentTopics, Channel, Envelope, RecordKind, encode_envelope
from shopfloor.contract.envelope import AgentStatus, encode_status
from shopfloor.hub.api.metrics import Family, escape_label_value, render

TOKEN = "metrics-test-token"

# --- a strict parser for the text exposition format ---------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_HELP = re.compile(rf"# HELP ({_NAME}) (.*)")
_TYPE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)")
_SAMPLE_HEAD = re.compile(rf"({_NAME})(\{{)?")
_VALUE = re.compile(r"(NaN|[+-]Inf|[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))")


@dataclass
class ParsedFamily:
    name: str
    type: str = ""
    help: str = ""
    samples: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)

    def value(self, **labels: str) -> float:
        return self.samples[tuple(sorted(labels.items()))]


def _unescape(text: str, allowed: str) -> str:
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            nxt = text[i + 1 : i + 2]
            if nxt not in allowed:
                raise ValueError(f"bad escape \\{nxt} in {text!r}")
            out.append("\n" if nxt == "n" else nxt)
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _labels(line: str, pos: int) -> tuple[dict[str, str], int]:
    labels: dict[str, str] = {}
    while True:
        if line[pos] == "}":
            return labels, pos + 1
        m = re.compile(_LABEL).match(line, pos)
        if m is None or line[m.end() : m.end() + 2] != '="':
            raise ValueError(f"bad label at column {pos}: {line!r}")
        name, pos = m.group(0), m.end() + 2
        raw = []
        while line[pos] != '"':
            if line[pos] == "\\":
                raw.append(line[pos : pos + 2])
                pos += 2
            else:
                raw.append(line[pos])
                pos += 1
        if name in labels:
            raise ValueError(f"label {name} twice: {line!r}")
        labels[name] = _unescape("".join(raw), '\\"n')
        pos += 1
        if line[pos] == ",":
            pos += 1
        elif line[pos] != "}":
            raise ValueError(f"expected , or }} at column {pos}: {line!r}")


def parse_exposition(text: str) -> dict[str, ParsedFamily]:
    """Every family; raises ValueError on anything the format does not allow, or that a
    well-behaved exporter must not do (a sample before its TYPE, a family split in two, a
    series twice, HELP or TYPE twice)."""
    if not text.endswith("\n"):
        raise ValueError("the exposition must end with a line feed")
    families: dict[str, ParsedFamily] = {}
    current: str | None = None
    finished: set[str] = set()

    def family(name: str) -> ParsedFamily:
        nonlocal current
        if name != current:
            if name in finished or name in families:
                raise ValueError(f"family {name} is split or repeated")
            if current is not None:
                finished.add(current)
            current = name
            families[name] = ParsedFamily(name)
        return families[name]

    for line in text[:-1].split("\n"):
        if not line:
            raise ValueError("empty line")
        if line.startswith("# HELP "):
            m = _HELP.fullmatch(line)
            if m is None:
                raise ValueError(f"bad HELP: {line!r}")
            f = family(m.group(1))
            if f.help or f.samples or f.type:
                raise ValueError(f"HELP after TYPE/samples or twice for {f.name}")
            f.help = _unescape(m.group(2), "\\n")
            continue
        if line.startswith("# TYPE "):
            m = _TYPE.fullmatch(line)
            if m is None:
                raise ValueError(f"bad TYPE: {line!r}")
            f = family(m.group(1))
            if f.type or f.samples:
                raise ValueError(f"TYPE twice or after samples for {f.name}")
            f.type = m.group(2)
            continue
        if line.startswith("#"):
            raise ValueError(f"unexpected comment: {line!r}")
        m = _SAMPLE_HEAD.match(line)
        if m is None:
            raise ValueError(f"bad sample: {line!r}")
        labels, pos = _labels(line, m.end()) if m.group(2) else ({}, m.end())
        if line[pos : pos + 1] != " ":
            raise ValueError(f"expected a space before the value: {line!r}")
        parts = line[pos + 1 :].split(" ")
        if len(parts) not in (1, 2) or not _VALUE.fullmatch(parts[0]):
            raise ValueError(f"bad value: {line!r}")
        if len(parts) == 2 and not re.fullmatch(r"-?\d+", parts[1]):
            raise ValueError(f"bad timestamp: {line!r}")
        f = family(m.group(1))
        if not f.type:
            raise ValueError(f"sample of {f.name} before its TYPE")
        key = tuple(sorted(labels.items()))
        if key in f.samples:
            raise ValueError(f"series {f.name}{labels} twice")
        f.samples[key] = float(parts[0])
    return families


# --- the writer, without a hub ------------------------------------------------------------


def test_render_escapes_labels_and_help_so_the_strict_parser_reads_them_back() -> None:
    nasty = 'a "quoted" \\ back\nslash'
    text = render(
        [
            Family("x_total", "counter", "help with \\ and\nnewline").add(3, agent=nasty),
            Family("y", "gauge", "no labels").add(0.25).add(math.inf, k="v"),
        ]
    )
    families = parse_exposition(text)
    assert families["x_total"].help == "help with \\ and\nnewline"
    assert families["x_total"].value(agent=nasty) == 3
    assert families["y"].value() == 0.25
    assert families["y"].value(k="v") == math.inf
    assert escape_label_value(nasty) == 'a \\"quoted\\" \\\\ back\\nslash'


@pytest.mark.parametrize(
    "bad",
    [
        'x{a="1"} 1\n',  # no TYPE
        "# TYPE x gauge\nx 1\n# TYPE y gauge\ny 1\nx 2\n",  # split family
        '# TYPE x gauge\nx{a="\\q"} 1\n',  # bad escape
        "# TYPE x gauge\nx one\n",  # bad value
        "# TYPE x gauge\nx 1",  # no final newline
    ],
)
def test_the_parser_is_strict(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_exposition(bad)


def test_family_rejects_bad_names() -> None:
    with pytest.raises(ValueError, match="must end in _total"):
        Family("shopfloor_hub_things", "counter", "x")
    with pytest.raises(ValueError, match="label name"):
        Family("x", "gauge", "x").add(1, __reserved="x")


# --- a real hub process -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class HubProcess:
    process: asyncio.subprocess.Process
    port: int
    stderr_lines: list[str]
    reader: asyncio.Task[None]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def _drain(stream: asyncio.StreamReader, lines: list[str]) -> None:
    while line := await stream.readline():
        lines.append(line.decode("utf-8", "replace").rstrip("\n"))


@contextlib.asynccontextmanager
async def hub_process(
    tmp_path: Path, root: str, extra_env: dict[str, str]
) -> AsyncIterator[HubProcess]:
    """``shopfloor hub run`` with no --config: the file and the port come from the
    environment, and stderr is a pipe (so the logs are JSON lines)."""
    port = _free_port()
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    config = tmp_path / "hub.toml"
    config.write_text(
        f'[hub]\nsite = "shop1"\ntopic_root = "{root}"\ndata_dir = "data"\n'
        f'[mqtt]\nurl = "mqtt://127.0.0.1:1883"\nclient_id = "hub-{root[:10]}"\n'
        "session_expiry_s = 60\n"
        f'[api]\nport = 1\n[[api.tokens]]\nname = "prometheus"\nsha256 = "{digest}"\n'
        'scopes = ["read"]\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPFLOOR_")}
    env |= {"SHOPFLOOR_HUB_CONFIG": str(config), "SHOPFLOOR_API_PORT": str(port)} | extra_env
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shopfloor",
        "hub",
        "run",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert process.stderr is not None
    lines: list[str] = []
    reader = asyncio.create_task(_drain(process.stderr, lines), name="test.hub-stderr")
    hub = HubProcess(process, port, lines, reader)
    try:
        yield hub
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
        await reader


async def _wait_healthy(client: httpx.AsyncClient, hub: HubProcess) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if hub.process.returncode is not None:
            pytest.fail(f"the hub exited: {hub.stderr_lines[-5:]}")
        with contextlib.suppress(httpx.TransportError):
            body = (await client.get("/api/v1/health")).json()
            if body["status"] == "ok" and body["mqtt"]["connected"]:
                return
        await asyncio.sleep(0.1)
    pytest.fail(f"the hub did not become healthy: {hub.stderr_lines[-5:]}")


async def _scrape(client: httpx.AsyncClient) -> dict[str, ParsedFamily]:
    response = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = parse_exposition(response.text)
    for f in families.values():
        assert f.name.startswith("shopfloor_hub_"), f.name
        assert f.help, f"{f.name} has no HELP"
        assert f.type in ("counter", "gauge"), f.name
        assert (f.type == "counter") == f.name.endswith("_total"), f.name
    return families


def _envelope(kind: RecordKind, seq: int, body: dict[str, Any]) -> bytes:
    now = time.time_ns() // 1_000_000
    env = Envelope(
        kind=kind,
        agent="pi-1",
        machine="router",
        stream="s1",
        seq=seq,
        ts=now,
        body=body,
        mono=time.monotonic_ns() // 1_000_000,
    )
    return encode_envelope(env)


@pytest.mark.mqtt
@pytest.mark.slow
async def test_metrics_move_with_real_messages(
    tmp_path: Path, broker: Any, wait_until: Callable[..., Awaitable[None]]
) -> None:
    topics = AgentTopics(site="shop1", agent="pi-1", root=broker.root)
    async with (
        hub_process(tmp_path, broker.root, {}) as hub,
        httpx.AsyncClient(base_url=hub.base, timeout=10) as client,
    ):
        await _wait_healthy(client, hub)
        assert (await client.get("/metrics")).status_code == 401  # like the read endpoints

        before = await _scrape(client)
        assert before["shopfloor_hub_mqtt_connected"].value() == 1
        assert before["shopfloor_hub_store_up"].value() == 1
        assert before["shopfloor_hub_records_stored_total"].value() == 0
        assert before["shopfloor_hub_messages_rejected_total"].value(reason="payload") == 0
        assert before["shopfloor_hub_agents_online"].value() == 0

        now = time.time_ns() // 1_000_000
        status = AgentStatus(agent="pi-1", online=True, epoch=1, ts=now)
        await broker.pub(topics.status, encode_status(status), retain=True)
        state = {"state": "RUNNING", "since": now, "detail": "", "program": "O1"}
        telemetry = {"samples": [{"ts": now, "values": {"load": 1.5}}]}
        await broker.pub(
            topics.machine("router", Channel.STATE), _envelope(RecordKind.STATE, 1, state)
        )
        for _ in range(2):  # the second one is a duplicate
            await broker.pub(
                topics.machine("router", Channel.TELEMETRY),
                _envelope(RecordKind.TELEMETRY, 2, telemetry),
            )
        # seq 6 after 2: a gap of 3 seqs, the stream lags by 4
        await broker.pub(
            topics.machine("router", Channel.TELEMETRY),
            _envelope(RecordKind.TELEMETRY, 6, telemetry),
        )
        await broker.pub(topics.machine("router", Channel.EVENT), b"{not json")

        async def moved() -> bool:
            now_f = await _scrape(client)
            return (
                now_f["shopfloor_hub_records_stored_total"].value() >= 3
                and now_f["shopfloor_hub_stream_lag_max_seqs"].value() > 0
                and now_f["shopfloor_hub_messages_rejected_total"].value(reason="payload") >= 1
            )

        await wait_until(moved, timeout_s=20)
        after = await _scrape(client)
        assert after["shopfloor_hub_messages_received_total"].value() == 6
        assert after["shopfloor_hub_records_stored_total"].value() == 3
        assert after["shopfloor_hub_records_duplicate_total"].value() == 1
        assert after["shopfloor_hub_messages_rejected_total"].value(reason="payload") == 1
        assert after["shopfloor_hub_stream_lag_seqs"].value(agent="pi-1", stream="s1") == 4
        assert after["shopfloor_hub_stream_lag_max_seqs"].value() == 4
        assert after["shopfloor_hub_machines"].value(state="RUNNING") == 1
        assert after["shopfloor_hub_machines"].value(state="IDLE") == 0
        assert after["shopfloor_hub_agent_online"].value(agent="pi-1", site="shop1") == 1
        assert after["shopfloor_hub_agents_online"].value() == 1
        assert after["shopfloor_hub_store_batches_total"].value() >= 1

        # the hub's own listeners (jobs, orders) may subscribe to the feed too
        baseline = after["shopfloor_hub_event_stream_clients"].value()
        async with client.stream(
            "GET", "/api/v1/events", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as stream:
            assert stream.status_code == 200
            clients = await _scrape(client)
            assert clients["shopfloor_hub_event_stream_clients"].value() == baseline + 1

        offline = AgentStatus(agent="pi-1", online=False, epoch=1, ts=now + 1)
        await broker.pub(topics.status, encode_status(offline), retain=True)

        async def agent_gone() -> bool:
            f = await _scrape(client)
            return f["shopfloor_hub_agents_online"].value() == 0

        await wait_until(agent_gone, timeout_s=20)
        final = await _scrape(client)
        assert final["shopfloor_hub_machines"].value(state="OFFLINE") == 1
        assert final["shopfloor_hub_machine_offline_total"].value(reason="agent offline") == 1

    # uvicorn re-raises the SIGTERM it caught once it has shut down cleanly
    assert hub.process.returncode in (0, -signal.SIGTERM)
    logs = [json.loads(line) for line in hub.stderr_lines]  # every line is JSON
    assert any(line["logger"] == "shopfloor.hub.service" for line in logs)
    assert any(
        line["logger"] == "uvicorn.access" and "/metrics" in line["message"] for line in logs
    )


REPO = Path(__file__).resolve().parents[2]


async def _container_check(port: int) -> tuple[int, str]:
    """What Docker runs: ``python deploy/healthcheck.py hub`` (exit 0 healthy, 1 not)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "deploy" / "healthcheck.py"),
        "hub",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SHOPFLOOR_API_PORT": str(port)},
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_the_container_health_check_sees_a_degraded_hub(
    tmp_path: Path, topic_root: str
) -> None:
    dead_broker = f"mqtt://127.0.0.1:{_free_port()}"
    async with (
        hub_process(tmp_path, topic_root, {"SHOPFLOOR_MQTT_URL": dead_broker}) as hub,
        httpx.AsyncClient(base_url=hub.base) as client,
    ):
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                answer = await client.get("/api/v1/health")
                break
            assert time.monotonic() < deadline, hub.stderr_lines[-5:]
            await asyncio.sleep(0.1)
        assert answer.status_code == 503
        assert answer.json()["status"] == "degraded"
        code, out = await _container_check(hub.port)
    assert code == 1
    assert "hub health is 'degraded'" in out
    assert "'connected': False" in out


async def test_the_container_health_check_passes_a_healthy_hub(
    tmp_path: Path, topic_root: str
) -> None:
    async with (
        hub_process(tmp_path, topic_root, {}) as hub,
        httpx.AsyncClient(base_url=hub.base) as client,
    ):
        await _wait_healthy(client, hub)
        assert (await client.get("/api/v1/health")).status_code == 200
        code, out = await _container_check(hub.port)
    assert (code, out) == (0, "")


async def test_the_hubs_own_outboxes_are_in_the_metrics(
    hub_config: Callable[..., Any], env: Callable[..., Envelope]
) -> None:
    import uuid

    from shopfloor.hub.api.metrics import collect
    from shopfloor.hub.orders.model import ORDER_STATUS_CHANGED, NewChange, NewOrder, OrderItem
    from shopfloor.hub.runtime import open_hub
    from shopfloor.hub.store import Incoming, WriteBatch

    # A mirror pointed at a port nothing listens on, and a webhook nobody answers.
    config = hub_config(f'[mirror]\nurl = "http://127.0.0.1:{_free_port()}"\n')
    async with open_hub(config, mqtt=False) as hub:
        assert hub.orders is not None
        assert hub.mirror is not None
        store = hub.orders.store
        await hub.store.write(
            WriteBatch(
                records=[Incoming(env(RecordKind.TELEMETRY, seq=n), "shop1", 1) for n in (1, 2)]
            )
        )
        order, _ = await store.create_order(
            NewOrder(ref="7", items=(OrderItem(part="x", quantity=1),), due_at=None, note=""),
            key=None,
            now=1,
        )
        await store.add_webhook(
            url=f"http://127.0.0.1:{_free_port()}/h", events=[ORDER_STATUS_CHANGED],
            secret="s", description="", now=1,
        )  # fmt: skip
        await store.record_order_change(
            NewChange(
                order_id=order.id, expected_seq=order.change_seq, event_id=uuid.uuid4().hex,
                previous=order.status, status=order.status.__class__("queued"), at=2, body="{}",
            )
        )  # fmt: skip
        families = parse_exposition(render(await collect(hub)))
    deliveries = families["shopfloor_hub_webhook_deliveries"]
    assert deliveries.type == "gauge"
    assert deliveries.value(state="pending") + deliveries.value(state="dead") == 1
    assert deliveries.value(state="delivered") == 0
    assert families["shopfloor_hub_mirror_lag_records"].value() == 2  # nothing written yet
    assert families["shopfloor_hub_mirror_consecutive_failures"].type == "gauge"
