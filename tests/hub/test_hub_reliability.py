"""Hub side of "nothing lost, nothing counted twice": data_loss, gaps, replay requests, clocks."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from shopfloor.contract import (
    AgentStatus,
    DataLoss,
    Envelope,
    RecordKind,
    decode_replay,
    encode_envelope,
    encode_status,
)
from shopfloor.hub.clock_sanity import MIN_VALID_TS, ClockFlag, ClockSanity
from shopfloor.hub.config import HubConfig
from shopfloor.hub.ingest import Ingest
from shopfloor.hub.store import Incoming, SqliteStore
from shopfloor.hub.store.postgres import PostgresStore
from shopfloor.hub.trackers import Trackers

AnyStore = SqliteStore | PostgresStore

EnvFactory = Callable[..., Envelope]
Inc = Callable[..., Incoming]
NOW = 1_800_000_000_000  # the hub's wall clock in these tests (2027)
HOUR = 3_600_000


def loss_event(env: EnvFactory, seq: int, first: int, last: int) -> Envelope:
    body = DataLoss(stream="s1", ranges=((first, last),), reason="outbox_full", count=3)
    return env(RecordKind.EVENT, seq=seq, body=body.to_body())


# -- store: data_loss fills the watermark ----------------------------------------------------


async def test_data_loss_counts_as_filled_for_the_watermark(
    store: SqliteStore, env: EnvFactory, incoming: Inc
) -> None:
    await store.insert_batch([incoming(env(RecordKind.TELEMETRY, seq=s)) for s in (1, 2, 6)])
    assert await store.stream_progress("pi-1", "s1") == (2, 6)
    lag = await store.lagging_streams()
    assert [(x.agent, x.stream, x.contiguous_seq, x.max_seq) for x in lag] == [("pi-1", "s1", 2, 6)]
    await store.insert_batch([incoming(loss_event(env, 7, 3, 5))])
    assert await store.stream_progress("pi-1", "s1") == (7, 7)
    assert await store.lagging_streams() == []
    (row,) = await store.data_losses("pi-1")
    assert (row.from_seq, row.to_seq, row.reason, row.missing) == (3, 5, "outbox_full", 3)
    # A duplicate declaration is not recorded twice.
    await store.insert_batch([incoming(loss_event(env, 7, 3, 5))])
    assert len(await store.data_losses()) == 1


async def test_a_declaration_ahead_of_the_watermark_waits_for_it(
    store: SqliteStore, env: EnvFactory, incoming: Inc
) -> None:
    await store.insert_batch([incoming(env(RecordKind.TELEMETRY, seq=1))])
    await store.insert_batch([incoming(loss_event(env, 9, 4, 8))])  # 2-3 still missing
    assert await store.stream_progress("pi-1", "s1") == (1, 9)
    await store.insert_batch([incoming(env(RecordKind.TELEMETRY, seq=s)) for s in (2, 3)])
    assert await store.stream_progress("pi-1", "s1") == (9, 9)
    assert (await store.data_losses())[0].missing == 5


# -- ingest: gap detection and replay requests -----------------------------------------------


class FakeClient:
    is_connected = True

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict[str, Any]]] = []

    def publish(self, topic: str, payload: bytes, **kw: Any) -> None:
        self.published.append((topic, payload, kw))


def offline_ingest(config: HubConfig, store: SqliteStore, **kw: Any) -> tuple[Ingest, FakeClient]:
    ingest = Ingest(config, store, Trackers(stale_after_ms=30_000), clock=lambda: NOW, **kw)
    client = FakeClient()
    ingest._client = client  # type: ignore[assignment]
    ingest._connected.set()
    return ingest, client


async def test_a_stuck_gap_gets_one_replay_request_per_interval(
    store: SqliteStore,
    env: EnvFactory,
    incoming: Inc,
    hub_config: Callable[..., HubConfig],
) -> None:
    ingest, client = offline_ingest(
        hub_config(), store, reorder_timeout_s=0.0, replay_interval_s=3600
    )
    ingest._sites["pi-1"] = "shop1"
    await store.insert_batch([incoming(env(RecordKind.TELEMETRY, seq=s)) for s in (1, 2, 5)])
    await ingest.check_gaps()  # first sight: starts the reorder timer
    assert client.published == []
    await ingest.check_gaps()
    await ingest.check_gaps()  # rate-limited per agent
    (topic, payload, kw) = client.published[0]
    assert len(client.published) == 1
    assert topic == "shopfloor/v1/shop1/pi-1/_cmd/replay"
    request = decode_replay(payload)
    assert (request.stream, request.from_seq) == ("s1", 3)
    assert kw["message_expiry_interval"] > 0
    assert ingest.counters["replay_requests"] == 1
    assert ingest.counters["gaps_detected"] == 1
    assert ingest.counters["gaps_open"] == 1
    health = ingest.stats().counters  # what /api/v1/health shows
    assert health["replay_requests"] == 1
    assert health["clock_flagged"] == 0
    await store.insert_batch([incoming(env(RecordKind.TELEMETRY, seq=s)) for s in (3, 4)])
    await ingest.check_gaps()
    assert ingest.counters["gaps_open"] == 0


async def test_watermarks_of_known_agents_are_published_again_on_connect(
    store: SqliteStore,
    env: EnvFactory,
    incoming: Inc,
    hub_config: Callable[..., HubConfig],
) -> None:
    await store.insert_batch([incoming(env(RecordKind.TELEMETRY, seq=1))])
    ingest, _ = offline_ingest(hub_config(), store)
    ingest._sites.update(await store.agent_sites())
    client = FakeClient()
    client.subscribe = lambda *a, **k: None  # type: ignore[attr-defined]
    ingest._on_connect(client, 0, 0, {})
    assert ingest._ack_dirty == {"pi-1": "shop1"}


# -- clock sanity -----------------------------------------------------------------------------


def test_unset_clock_with_a_good_mono_is_corrected_from_live_messages() -> None:
    clocks = ClockSanity()
    boot = NOW - 50_000  # the Pi booted 50 s ago (hub clock)
    # Live message: ts is 1970 + uptime, mono is the uptime.
    verdict = clocks.check("pi-1", 1, 49_000, 49_000, NOW - 1_000 + 20, live=True)
    assert verdict.flag is ClockFlag.CORRECTED
    assert abs(verdict.ts - (boot + 49_000)) <= 20
    assert clocks.offset("pi-1", 1) == boot + 20


def test_unset_clock_without_any_offset_is_flagged_and_stored_at_arrival() -> None:
    verdict = ClockSanity().check("pi-1", 1, 5_000, 5_000, NOW, live=False)
    assert verdict.flag is ClockFlag.FLAGGED
    assert verdict.ts == NOW


def test_clock_three_hours_ahead_is_corrected() -> None:
    clocks = ClockSanity()
    for i in range(3):
        mono = 100_000 + i * 1000
        verdict = clocks.check(
            "pi-1", 2, NOW + 3 * HOUR + i * 1000, mono, NOW + i * 1000 + 15, live=True
        )
        assert verdict.flag is ClockFlag.CORRECTED
        assert abs(verdict.ts - (NOW + i * 1000)) < 100


def test_good_clock_is_believed_and_a_small_drift_is_fine() -> None:
    clocks = ClockSanity()
    assert clocks.check("pi-1", 1, NOW - 30, 7_000, NOW, live=True).flag is None
    assert clocks.check("pi-1", 1, NOW + 1000 + 60_000, 8_000, NOW + 1000, live=True).flag is None


def test_replayed_records_from_the_same_epoch_after_the_clock_synced() -> None:
    clocks = ClockSanity()
    boot = NOW - 600_000
    # Live traffic after NTP synced teaches the offset of epoch 4.
    assert clocks.check("pi-1", 4, boot + 590_000, 590_000, boot + 590_010, live=True).flag is None
    # Records acquired before the sync (ts 1970 + uptime) arrive now as a replay.
    verdict = clocks.check("pi-1", 4, 20_000, 20_000, NOW, live=False)
    assert verdict.flag is ClockFlag.CORRECTED
    assert abs(verdict.ts - (boot + 20_000)) <= 10
    # Replays do not teach the offset; another epoch has none.
    assert clocks.offset("pi-1", 4) == boot + 10
    assert clocks.check("pi-1", 3, 20_000, 20_000, NOW, live=False).flag is ClockFlag.FLAGGED


def test_nothing_is_ever_stored_before_2020_or_in_the_future() -> None:
    clocks = ClockSanity()
    for ts, mono, live in [(0, 0, False), (NOW + 10 * HOUR, 5, False), (1, None, True)]:
        verdict = clocks.check("x", None, ts, mono, NOW, live=live)
        assert MIN_VALID_TS <= verdict.ts <= NOW + clocks.future_skew_ms


async def test_ingest_corrects_flags_and_stores_the_agent_ts(
    store: AnyStore, env: EnvFactory, hub_config: Callable[..., HubConfig]
) -> None:
    ingest, _ = offline_ingest(hub_config(), store)
    topic = "shopfloor/v1/shop1/pi-1/cnc-1/telemetry"
    # Unset clock, with an epoch-less envelope: the epoch comes from the live status.
    status = AgentStatus(agent="pi-1", online=True, epoch=7, ts=0)
    ingest.classify("shopfloor/v1/shop1/pi-1/_status", encode_status(status))
    live = env(RecordKind.TELEMETRY, seq=1, ts=3_000)  # mono 3000, 1970 wall clock
    item = ingest.classify(topic, encode_envelope(live))
    assert isinstance(item, Incoming)
    assert item.clock == "corrected"
    assert item.agent_ts == 3_000
    assert item.envelope.ts == NOW
    assert item.envelope.body["samples"][0]["ts"] == NOW
    replayed = env(RecordKind.TELEMETRY, seq=2, ts=1_000, replay=True)
    item2 = ingest.classify(topic, encode_envelope(replayed))
    assert isinstance(item2, Incoming)
    assert item2.clock == "corrected"
    assert item2.envelope.ts == NOW - 2_000
    other = json.loads(encode_envelope(env(RecordKind.TELEMETRY, seq=3, ts=10, replay=True)))
    other["agent"], other["epoch"] = "pi-2", 1
    item3 = ingest.classify("shopfloor/v1/shop1/pi-2/cnc-1/telemetry", json.dumps(other).encode())
    assert isinstance(item3, Incoming)
    assert item3.clock == "flagged"
    assert item3.envelope.ts == NOW
    await store.insert_batch([item, item2, item3])
    query = "SELECT seq, ts, clock, agent_ts FROM records ORDER BY agent, seq"
    if isinstance(store, SqliteStore):
        async with store._r.execute(query) as cur:
            rows = [tuple(r) for r in await cur.fetchall()]
    else:
        async with store._read() as conn:
            rows = [tuple(r) for r in await conn.fetch(query)]
    assert rows == [
        (1, NOW, "corrected", 3_000),
        (2, NOW - 2_000, "corrected", 1_000),
        (3, NOW, "flagged", 10),
    ]
    assert ingest.counters["clock_corrected"] == 2
    assert ingest.counters["clock_flagged"] == 1


def test_clock_three_hours_behind_is_corrected_once_the_offset_is_settled() -> None:
    clocks = ClockSanity(settle_ms=60_000)
    boot = NOW - 1_000_000
    for i in range(0, 70_000, 10_000):  # a minute of live traffic with a good clock
        mono = 1_000_000 + i
        assert clocks.check("pi-1", 1, boot + mono, mono, boot + mono + 15, live=True).flag is None
    mono = 1_080_000
    verdict = clocks.check("pi-1", 1, boot + mono - 3 * HOUR, mono, boot + mono + 15, live=True)
    assert verdict.flag is ClockFlag.CORRECTED
    assert abs(verdict.ts - (boot + mono)) <= 15


def test_a_late_session_backlog_after_a_hub_restart_does_not_shift_good_clocks() -> None:
    clocks = ClockSanity()
    boot = NOW - 1_000_000
    # The hub was down for ten minutes; its session delivers what was queued, late.
    for i in range(0, 600_000, 1_000):
        mono = 300_000 + i
        verdict = clocks.check("pi-1", 1, boot + mono, mono, NOW, live=True)
        assert verdict.flag is None
