"""Nothing lost, nothing counted twice, on real processes (DESIGN.md section 3).

A simulated GRBL on a pseudo-terminal (in this process), ``shopfloor agent run`` and
``shopfloor hub run`` as child processes, and a private Mosquitto *without* persistence.
The broker is killed for a while (the agent keeps appending to its outbox; the retained
``_ack`` and every session are gone when it returns), the hub is killed with SIGKILL and
restarted, the agent is stopped and started again. At the end every seq the agent ever
handed out is either in the hub's store exactly once or still in the agent's outbox.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shopfloor.sim.grbl import GrblMachine, GrblSimConfig, PtyRunner

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

SITE = "shop"
AGENT = "pi-nl"


async def wait_until(check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: Any = None
    while loop.time() < deadline:
        last = check()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return [tuple(r) for r in conn.execute(sql, params).fetchall()]
    except sqlite3.OperationalError:  # not migrated yet
        return []
    finally:
        conn.close()


class Procs:
    def __init__(self, tmp: Path, broker_url: str, root: str, tty: Path, api_port: int) -> None:
        self.tmp = tmp
        (tmp / "hub").mkdir()
        (tmp / "agent").mkdir()
        self.hub_toml = tmp / "hub" / "hub.toml"
        self.hub_toml.write_text(
            f'[hub]\nsite = "{SITE}"\ntopic_root = "{root}"\ndata_dir = "."\n'
            f'[mqtt]\nurl = "{broker_url}"\nclient_id = "hub-nl"\nsession_expiry_s = 600\n'
            f"[api]\nport = {api_port}\n"
        )
        self.agent_toml = tmp / "agent" / "agent.toml"
        self.agent_toml.write_text(
            f'[agent]\nid = "{AGENT}"\nsite = "{SITE}"\ntopic_root = "{root}"\ndata_dir = "."\n'
            f'[mqtt]\nurl = "{broker_url}"\nwill_delay_s = 0\nreconnect_min_s = 0.2\n'
            "reconnect_max_s = 1.0\n"
            f'[[machines]]\nid = "router"\nname = "Router"\nkind = "cnc_router"\n'
            f'protocol = "grbl"\nport = "pty:{tty}"\npoll_interval_s = 0.2\n'
            "silence_timeout_s = 2.0\ntelemetry_interval_s = 0.2\n"
        )
        self.hub_db = tmp / "hub" / "hub.sqlite3"
        self.agent_db = tmp / "agent" / "agent.sqlite3"
        self.hub: subprocess.Popen[bytes] | None = None
        self.agent: subprocess.Popen[bytes] | None = None

    def _spawn(self, what: str, toml: Path) -> subprocess.Popen[bytes]:
        with (toml.parent / f"{what}.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "shopfloor", what, "run", "--config", str(toml)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )

    def start_hub(self) -> None:
        self.hub = self._spawn("hub", self.hub_toml)

    def start_agent(self) -> None:
        self.agent = self._spawn("agent", self.agent_toml)

    @staticmethod
    def _end(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def kill_hub(self, sig: int = signal.SIGKILL) -> None:
        self._end(self.hub, sig)
        self.hub = None

    def stop_agent(self, sig: int = signal.SIGTERM) -> None:
        self._end(self.agent, sig)
        self.agent = None

    def hub_seqs(self) -> list[int]:
        return [r[0] for r in query(self.hub_db, "SELECT seq FROM records WHERE agent = ?", AGENT)]

    def outbox_seqs(self) -> list[int]:
        return [r[0] for r in query(self.agent_db, "SELECT seq FROM outbox")]

    def stream(self) -> str:
        rows = query(self.agent_db, "SELECT value FROM meta WHERE key = 'stream'")
        return str(rows[0][0]) if rows else ""

    def watermark(self) -> int:
        rows = query(
            self.hub_db,
            "SELECT contiguous_seq FROM stream_progress WHERE agent = ? AND stream = ?",
            AGENT,
            self.stream(),
        )
        return int(rows[0][0]) if rows else 0

    def logs(self) -> str:
        logs = (self.tmp / "hub" / "hub.log", self.tmp / "agent" / "agent.log")
        return "\n".join(
            f"--- {log.name}\n" + log.read_text()[-4000:] for log in logs if log.exists()
        )


async def test_broker_hub_and_agent_restarts_lose_nothing_and_double_nothing(
    tmp_path: Path, private_broker: Callable[..., Any], topic_root: str, unused_port: int
) -> None:
    broker = private_broker(persistence=False)
    machine = GrblMachine(GrblSimConfig(time_scale=4.0))
    tty = tmp_path / "tty-router"
    procs = Procs(tmp_path, broker.url, topic_root, tty, unused_port)
    async with PtyRunner(machine, tty):
        try:
            procs.start_hub()
            procs.start_agent()
            await wait_until(lambda: len(procs.hub_seqs()) >= 10, "first records at the hub")
            await wait_until(lambda: procs.watermark() >= 5, "a first watermark")

            # 1. The broker dies without persistence; the agent keeps appending.
            broker.stop(signal.SIGKILL)
            before = len(procs.outbox_seqs())
            await asyncio.sleep(4)
            assert len(procs.outbox_seqs()) > before + 5, procs.logs()
            broker.start()
            backlog_end = max(procs.outbox_seqs())
            await wait_until(
                lambda: procs.watermark() >= backlog_end, "the backlog to be acknowledged", 60
            )

            # 2. The hub is killed mid-stream and comes back.
            procs.kill_hub()
            at_kill = max(procs.outbox_seqs() + procs.hub_seqs())
            await asyncio.sleep(3)
            while_down = max(procs.outbox_seqs())
            procs.start_hub()
            await wait_until(
                lambda: procs.watermark() >= while_down, "what was sent while the hub was down", 60
            )
            # Published while the hub was down: delivered from its persistent session, live.
            session = query(
                procs.hub_db,
                "SELECT count(*), sum(replay) FROM records"
                " WHERE agent = ? AND seq > ? AND seq <= ?",
                AGENT,
                at_kill,
                while_down,
            )
            assert session[0][0] == while_down - at_kill
            assert session[0][1] == 0
            # Acknowledged rows leave the outbox.
            await wait_until(
                lambda: min(procs.outbox_seqs() or [while_down + 1]) > while_down,
                "the outbox to delete acknowledged rows",
            )

            # 3. The agent stops cleanly and starts again: same stream, no seq reused.
            procs.stop_agent()
            last_before_restart = max(procs.outbox_seqs() + procs.hub_seqs())
            procs.start_agent()
            await wait_until(
                lambda: procs.watermark() > last_before_restart + 3, "records after the restart"
            )
            procs.stop_agent()
            await asyncio.sleep(1.5)  # the last ack arrives (or not: then it is in the outbox)
        finally:
            procs.stop_agent()
            procs.kill_hub(signal.SIGTERM)

    hub_seqs = procs.hub_seqs()
    outbox = procs.outbox_seqs()
    top = max(hub_seqs + outbox)
    assert len(hub_seqs) == len(set(hub_seqs)), "stored twice"
    assert set(hub_seqs) | set(outbox) == set(range(1, top + 1)), procs.logs()
    # ... and by content: no record stored under two seqs.
    contents = query(procs.hub_db, "SELECT kind, ts, body FROM records WHERE agent = ?", AGENT)
    assert len(contents) == len(set(contents))
    assert query(procs.hub_db, "SELECT count(*) FROM data_loss") == [(0,)]
    replayed = query(procs.hub_db, "SELECT count(*) FROM records WHERE replay = 1")[0][0]
    assert replayed > 0  # the broker outage backlog came as a replay
    assert {json.loads(b)["state"] for k, _, b in contents if k == "state"} >= {"IDLE"}


async def test_agent_sigkill_keeps_the_outbox_and_the_skipped_block_is_declared(
    tmp_path: Path, private_broker: Callable[..., Any], topic_root: str, unused_port: int
) -> None:
    broker = private_broker(persistence=True)
    machine = GrblMachine(GrblSimConfig(time_scale=4.0))
    tty = tmp_path / "tty-router"
    procs = Procs(tmp_path, broker.url, topic_root, tty, unused_port)
    async with PtyRunner(machine, tty):
        try:
            procs.start_hub()
            procs.start_agent()
            await wait_until(lambda: procs.watermark() >= 10, "a first watermark")
            procs.stop_agent(signal.SIGKILL)  # mid-stream: the rest of its seq block is lost
            written = procs.outbox_seqs()
            last = max(written + procs.hub_seqs())
            procs.start_agent()
            # The restarted agent starts a new block; the hub sees the gap, asks for a
            # replay, and the agent declares the seqs it never used.
            await wait_until(lambda: procs.watermark() > last + 5, "the gap to be closed", 60)
        finally:
            procs.stop_agent()
            procs.kill_hub(signal.SIGTERM)

    hub_seqs = set(procs.hub_seqs())
    assert set(written) <= hub_seqs  # committed before the kill: replayed, not lost
    assert set(range(1, last + 1)) <= hub_seqs
    losses = query(procs.hub_db, "SELECT from_seq, to_seq, reason, missing FROM data_loss")
    assert losses, procs.logs()
    for first, end, reason, missing in losses:
        assert reason == "not_in_outbox"
        assert first > last
        assert missing == end - first + 1  # none of them was ever stored
    assert not hub_seqs & {s for a, b, _, _ in losses for s in range(a, b + 1)}
    epochs = query(procs.hub_db, "SELECT epoch FROM agents WHERE id = ?", AGENT)
    assert epochs == [(2,)]
