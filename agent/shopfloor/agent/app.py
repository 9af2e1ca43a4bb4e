"""The agent process: machines in, MQTT out.

:class:`AgentApp` runs everything in one :class:`asyncio.TaskGroup` inside one
:class:`~shopfloor.agent.mqtt.MqttConnection`: per machine a session task (device session
into tracker into the record queue), a flush timer (telemetry batches and heartbeats that
are due by time alone), the publisher's three loops (queue into the durable outbox, outbox
to MQTT, the hub's ``_ack`` and ``_cmd/replay`` back; :mod:`shopfloor.agent.publisher`),
and the status task that publishes the retained ``_status`` online message after every
(re)connect and every ``status_interval_s``, with the outbox counters. The MQTT will
carries the same topic with ``online: false``. A clean stop writes what is still queued to
the outbox, publishes ``online: false`` itself, waits briefly for the broker to
acknowledge, and disconnects. Whatever was not acknowledged by the hub stays in the outbox
for the next start.

``shopfloor agent run --config FILE`` ends up in :func:`main`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

from shopfloor.agent.clock import Clock, SystemClock
from shopfloor.agent.config import AgentConfig, MachineConfig, load_config
from shopfloor.agent.errors import AgentError, ConfigError, MqttError, StoreError
from shopfloor.agent.links import Link, open_link
from shopfloor.agent.mqtt import MqttConnection, Will
from shopfloor.agent.outbox import Outbox
from shopfloor.agent.publisher import Publisher, RecordQueue
from shopfloor.agent.readings import Reading, Record
from shopfloor.agent.sessions.base import SessionContext
from shopfloor.agent.sessions.registry import protocol_entry
from shopfloor.agent.tracker import MachineTracker
from shopfloor.contract.envelope import AgentStatus, RecordKind, encode_status
from shopfloor.contract.states import MachineState, Observation
from shopfloor.contract.topics import AgentTopics
from shopfloor.contract.version import agent_version
from shopfloor.logs import LogFormatError, setup_logging

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S: Final = 0.5
RESTART_DELAY_S: Final = 5.0
SHUTDOWN_TIMEOUT_S: Final = 5.0
STATUS_INTERVAL_S: Final = 60.0


class _MachineLog(logging.LoggerAdapter[logging.Logger]):
    """Binds ``machine`` to every record (formatted as ``machine=<id>``)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


class _StopRequestedError(Exception):
    """Raised inside the task group to end it on a requested stop."""


class AgentApp:
    """One agent process. ``await AgentApp(config).run()`` until :meth:`stop` or cancel."""

    def __init__(
        self,
        config: AgentConfig,
        clock: Clock | None = None,
        *,
        queue_size: int = 1000,
        link_factory: Callable[[MachineConfig], Link] | None = None,
        version: str | None = None,
        outbox_max_rows: int | None = None,
        outbox_max_bytes: int | None = None,
        replay_rate: float | None = None,
        resend_after_s: float = 30.0,
        status_interval_s: float = STATUS_INTERVAL_S,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.version = version or agent_version()
        self.topics = AgentTopics(
            site=config.agent.site, agent=config.agent.id, root=config.agent.topic_root
        )
        self.queue = RecordQueue(queue_size)
        self.trackers: dict[str, MachineTracker] = {}
        self._link_factory = link_factory or (lambda m: open_link(m.port, m.baudrate))
        self._stop = asyncio.Event()
        self.epoch = 0
        self.outbox_max_rows = outbox_max_rows
        self.outbox_max_bytes = outbox_max_bytes
        self.replay_rate = replay_rate
        self.resend_after_s = resend_after_s
        self.status_interval_s = status_interval_s
        self.publisher: Publisher | None = None

    def stop(self) -> None:
        """Ask :meth:`run` to shut down cleanly (publish offline, disconnect)."""
        self._stop.set()

    def _status(self, *, online: bool) -> bytes:
        return encode_status(
            AgentStatus(
                agent=self.config.agent.id,
                online=online,
                epoch=self.epoch,
                ts=self.clock.wall_ms(),
                version=self.version,
                outbox=self._counters() if online else None,
            )
        )

    def _counters(self) -> dict[str, int] | None:
        if self.publisher is None:
            return None
        return {**self.publisher.counters(), "queue_dropped": self.queue.dropped_telemetry}

    async def run(self) -> None:
        cfg = self.config
        store = await Outbox.open(
            cfg.agent.data_dir,
            max_rows=self.outbox_max_rows or cfg.agent.outbox_max_rows,
            max_bytes=self.outbox_max_bytes or cfg.agent.outbox_max_mb * 1024 * 1024,
        )
        self.epoch = store.epoch
        log.info(
            "agent %s (site %s, epoch %d, stream %s) starting with %d machine(s);"
            " %d record(s) in the outbox",
            cfg.agent.id,
            cfg.agent.site,
            store.epoch,
            store.stream,
            len(cfg.machines),
            store.stats.depth,
        )
        will = Will(
            self.topics.status,
            self._status(online=False),
            qos=1,
            retain=True,
            delay_s=cfg.mqtt.will_delay_s,
        )
        async with store, MqttConnection(cfg.mqtt, will=will) as conn:
            publisher = Publisher(
                conn,
                store,
                self.topics,
                default_machine=cfg.machines[0].id if cfg.machines else "agent",
                replay_rate=self.replay_rate or cfg.agent.replay_rate,
                resend_after_s=self.resend_after_s,
                clock_wall_ms=self.clock.wall_ms,
                clock_mono_ms=self.clock.mono_ms,
            )
            self.publisher = publisher
            for topic in publisher.subscriptions():
                await conn.subscribe(topic)
            try:
                async with asyncio.TaskGroup() as tg:
                    for machine in cfg.machines:
                        tg.create_task(self._machine(machine), name=f"machine:{machine.id}")
                    tg.create_task(self._flush_timer(), name="flush-timer")
                    tg.create_task(publisher.write_loop(self.queue), name="outbox-writer")
                    tg.create_task(publisher.send_loop(), name="outbox-sender")
                    tg.create_task(publisher.control_loop(), name="hub-control")
                    tg.create_task(self._announce(conn), name="status")
                    tg.create_task(self._wait_stop(), name="stop")
            except* _StopRequestedError:
                pass
            await self._shutdown(conn, publisher)

    async def _wait_stop(self) -> None:
        await self._stop.wait()
        raise _StopRequestedError

    async def _shutdown(self, conn: MqttConnection, publisher: Publisher) -> None:
        """Write what is queued to the outbox; publish the offline status if the broker is there.

        The writer task was cancelled with the task group, but only between two appends: an
        append in flight runs to its end first (:func:`~shopfloor.agent.seqstore.run_to_end`).
        """
        try:
            await publisher.flush(self.queue)
        except StoreError:
            # The queued records are lost; still say goodbye, or the hub waits for the will.
            log.exception("agent %s: could not write the queued records", self.config.agent.id)
        log.info("agent %s: outbox counters %s", self.config.agent.id, self._counters())
        if not conn.is_connected:
            log.info("agent %s stopping while the broker is unreachable", self.config.agent.id)
            return
        with contextlib.suppress(TimeoutError, MqttError):
            async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
                await conn.publish(self.topics.status, self._status(online=False), retain=True)
        await conn.drain(SHUTDOWN_TIMEOUT_S)
        log.info("agent %s stopped; published offline status", self.config.agent.id)

    async def _announce(self, conn: MqttConnection) -> None:
        """``_status`` online (with the outbox counters) after every (re)connect, and every
        ``status_interval_s``; the counters are logged at the same pace."""
        generation = 0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.status_interval_s if generation else None):
                    generation = await conn.wait_connected(after=generation)
            await conn.wait_connected()
            generation = conn.generation
            await conn.publish(self.topics.status, self._status(online=True), retain=True)
            log.info("agent %s: outbox %s", self.config.agent.id, self._counters())

    async def _flush_timer(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            wall, mono = self.clock.wall_ms(), self.clock.mono_ms()
            for tracker in self.trackers.values():
                for record in tracker.flush(wall, mono):
                    await self.queue.put(record)

    def _meta_body(self, machine: MachineConfig) -> dict[str, Any]:
        return {"protocol": machine.protocol, "kind": machine.kind, "name": machine.name}

    async def _machine(self, machine: MachineConfig) -> None:
        mlog = _MachineLog(log, {"machine": machine.id})
        tracker = MachineTracker(
            machine.id,
            telemetry_interval_ms=round(machine.telemetry_interval_s * 1000),
            kind=machine.kind,
        )
        self.trackers[machine.id] = tracker
        wall, mono = self.clock.wall_ms(), self.clock.mono_ms()
        # What we know before the device says anything: what it is, and that it is not seen yet
        # (a retained RUNNING from before a restart must not stand).
        await self.queue.put(
            Record(RecordKind.META, machine.id, wall, mono, self._meta_body(machine))
        )
        snapshot = tracker.snapshot()
        snapshot.update(state=str(MachineState.OFFLINE), since=wall, detail="agent_started")
        await self.queue.put(Record(RecordKind.STATE, machine.id, wall, mono, snapshot))
        mlog.info("machine %s: serving %s on %s", machine.id, machine.protocol, machine.port)
        while True:
            try:
                await self._serve(machine, tracker)
            except AgentError as exc:
                mlog.error(
                    "machine %s: session stopped (%s); restarting in %.0f s",
                    machine.id,
                    exc,
                    RESTART_DELAY_S,
                )
                # Nobody is reading the machine now: say so, or the tracker's heartbeat
                # would keep repeating the last state (RUNNING, say) as if it were seen.
                lost = Reading(
                    self.clock.wall_ms(),
                    self.clock.mono_ms(),
                    Observation.LINK_LOST,
                    detail=f"session stopped: {exc}",
                )
                for record in tracker.update(lost):
                    await self.queue.put(record)
            await asyncio.sleep(RESTART_DELAY_S)

    async def _serve(self, machine: MachineConfig, tracker: MachineTracker) -> None:
        context = SessionContext(
            machine=machine, open_link=lambda: self._link_factory(machine), clock=self.clock
        )
        async with protocol_entry(machine.protocol).open_session(context) as session:
            async for item in session.readings():
                for record in tracker.update(item):
                    if record.kind is RecordKind.META:
                        record = self._full_meta(machine, record)  # noqa: PLW2901
                    await self.queue.put(record)

    def _full_meta(self, machine: MachineConfig, record: Record) -> Record:
        """The tracker's meta plus what the config says; stamped now if the tracker had no time.

        (The tracker stamps device info with the last reading's time, which is 0 when the
        banner arrives before any status report.)
        """
        ts, mono = record.ts_ms, record.mono_ms
        if ts == 0:
            ts, mono = self.clock.wall_ms(), self.clock.mono_ms()
        body = {**self._meta_body(machine), **record.body}
        return Record(RecordKind.META, record.machine, ts, mono, body)


async def run_agent(config_path: str) -> None:
    """Load the config and run the agent until SIGTERM or SIGINT, then stop cleanly."""
    config = load_config(config_path)
    app = AgentApp(config, SystemClock())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.stop)
    try:
        await app.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _setup_logging(level: str) -> None:
    # Text on a terminal, JSON lines otherwise or with SHOPFLOOR_LOG_FORMAT=json (the
    # machine id bound by _MachineLog is a field of its own); a host's logging is left alone.
    setup_logging(level=level, environ=os.environ)
    # gmqtt logs every failed retry at WARNING; MqttConnection logs once per outage.
    logging.getLogger("gmqtt").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """``shopfloor agent run --config FILE``: ``argv`` is what follows ``shopfloor agent run``."""
    parser = argparse.ArgumentParser(
        prog="shopfloor agent run",
        description="Read the machines in a config file and publish them over MQTT.",
    )
    parser.add_argument("--config", required=True, help="the agent's TOML config file")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    args = parser.parse_args(argv)
    try:
        _setup_logging(args.log_level)
    except LogFormatError as exc:
        print(f"shopfloor agent: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_agent(args.config))
    except ConfigError as exc:
        print(f"shopfloor agent: {exc}", file=sys.stderr)
        return 2
    except AgentError as exc:
        print(f"shopfloor agent: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        errors, rest = group.split(AgentError)
        if errors is None or rest is not None:
            raise
        for leaf in _leaves(errors):
            print(f"shopfloor agent: {leaf}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
