"""The audit can fail: it finds a lost seq, a record stored twice, a wrong or OFFLINE state.

The scenarios pass only if their audit finds nothing; these tests feed the same audit
hand-made files (an agent outbox, a hub database, a truth log) with one defect each, and
check that it is found and named. No process is started.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from faultlib import AgentSpec, MachineSpec, Shop, audit

pytestmark = pytest.mark.faults

T0 = 1_800_000_000.0  # wall seconds
STREAM = "s1"


def make_shop(tmp: Path) -> Shop:
    spec = AgentSpec("pi-a", (MachineSpec("router", "pi-a"),))
    shop = Shop(tmp / "shop", [spec])
    shop.started_at = T0
    shop.agents["pi-a"].exit_codes.append(0)
    return shop


def agent_db(shop: Shop, next_block: int, outbox: list[int]) -> None:
    conn = sqlite3.connect(shop.agents["pi-a"].db)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value ANY)")
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?)", [("stream", STREAM), ("next_block", next_block)]
    )
    conn.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY)")
    conn.executemany("INSERT INTO outbox VALUES (?)", [(s,) for s in outbox])
    conn.commit()
    conn.close()


def hub_db(
    shop: Shop,
    seqs: list[int],
    states: list[tuple[float, str, str, str]],
    *,
    losses: list[tuple[int, int]] = (),  # type: ignore[assignment]
    body: dict[int, str] | None = None,
) -> None:
    conn = sqlite3.connect(shop.hub.db)
    conn.execute(
        "CREATE TABLE records (agent, stream, seq, machine, kind, ts, body, replay INTEGER)"
    )
    conn.executemany(
        "INSERT INTO records VALUES ('pi-a', ?, ?, 'router', 'telemetry', ?, ?, 0)",
        [(STREAM, s, s, (body or {}).get(s, f"b{s}")) for s in seqs],
    )
    conn.execute("CREATE TABLE data_loss (agent, stream, from_seq, to_seq)")
    conn.executemany(
        "INSERT INTO data_loss VALUES ('pi-a', ?, ?, ?)", [(STREAM, *r) for r in losses]
    )
    conn.execute("CREATE TABLE counters (name, value)")
    conn.execute(
        "CREATE TABLE state_changes"
        " (id INTEGER PRIMARY KEY, machine_key, ts, state, detail, source)"
    )
    conn.executemany(
        "INSERT INTO state_changes (machine_key, ts, state, detail, source)"
        " VALUES ('pi-a/router', ?, ?, ?, ?)",
        [(int((T0 + t) * 1000), s, d, src) for t, s, d, src in states],
    )
    conn.commit()
    conn.close()
    # What the API would serve: the stored rows as intervals (no void rule).
    rows = sorted(states)
    shop.served["pi-a/router"] = [
        (int((T0 + t) * 1000), int((T0 + (nxt[0] if nxt else 100)) * 1000), s, d)
        for (t, s, d, _), nxt in zip(rows, [*rows[1:], None], strict=True)
    ]


def truth(shop: Shop, changes: list[tuple[float, str]], end: float = 100.0) -> None:
    lines = [{"type": "start", "wall": T0}]
    lines += [
        {"type": "state", "machine": "pi-a/router", "wall": T0 + t, "state": s} for t, s in changes
    ]
    lines.append({"type": "end", "wall": T0 + end})
    shop.sims.truth_path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")


GOOD_STATES = [
    (1.0, "IDLE", "Idle", "agent"),
    (10.1, "RUNNING", "Run", "agent"),
    (30.2, "IDLE", "Idle", "agent"),
]
GOOD_TRUTH = [(0.5, "Idle"), (10.0, "Run"), (30.0, "Idle")]


@pytest.fixture
def shop(tmp_path: Path) -> Shop:
    made = make_shop(tmp_path)
    yield made
    shutil.rmtree(tmp_path / "shop", ignore_errors=True)


def test_a_clean_run_has_no_problems(shop: Shop) -> None:
    agent_db(shop, 11, [10])
    hub_db(shop, list(range(1, 11)), GOOD_STATES)
    truth(shop, GOOD_TRUTH)
    a = audit(shop, tol_s=0.5, until=T0 + 50)
    assert a.problems() == []
    assert a.state_problems() == []
    assert (a.produced, a.stored, a.lost) == (10, 10, 0)


def test_a_seq_neither_stored_nor_in_the_outbox_is_lost(shop: Shop) -> None:
    agent_db(shop, 11, [10])
    hub_db(shop, [1, 2, 3, 5, 6, 7, 8, 9], GOOD_STATES)
    truth(shop, GOOD_TRUTH)
    a = audit(shop, tol_s=0.5, until=T0 + 50)
    assert a.lost == 1
    assert a.streams[0].lost == [(4, 4)]
    assert a.streams[0].left_in_outbox == 1
    assert "lost seqs [(4, 4)]" in a.problems()[0]


def test_data_loss_over_a_produced_seq_is_a_loss(shop: Shop) -> None:
    agent_db(shop, 11, [])
    hub_db(shop, [1, 2, 3, 6, 7, 8, 9, 10], GOOD_STATES, losses=[(4, 5)])
    truth(shop, GOOD_TRUTH)
    a = audit(shop, tol_s=0.5, until=T0 + 50)
    assert a.streams[0].declared_real == [(4, 5)]
    assert a.lost == 2


def test_the_same_record_under_two_seqs_is_stored_twice(shop: Shop) -> None:
    agent_db(shop, 4, [])
    hub_db(shop, [1, 2, 3], GOOD_STATES, body={2: "same", 3: "same"})
    truth(shop, GOOD_TRUTH)
    # Same ts too: seqs 2 and 3 get ts 2 and 3 from hub_db, so make them equal.
    conn = sqlite3.connect(shop.hub.db)
    conn.execute("UPDATE records SET ts = 2 WHERE seq = 3")
    conn.commit()
    conn.close()
    a = audit(shop, tol_s=0.5, until=T0 + 50)
    assert a.duplicates == 1
    assert "stored twice by content" in a.problems()[0]


def test_the_block_a_killed_agent_skipped_is_not_produced(shop: Shop, tmp_path: Path) -> None:
    agent = shop.agents["pi-a"]
    # At the kill: seqs 1-5 written (4-5 not yet acknowledged), block reserved up to 1000.
    copy = tmp_path / "killed" / "agent.sqlite3"
    copy.parent.mkdir()
    conn = sqlite3.connect(copy)
    conn.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY)")
    conn.executemany("INSERT INTO outbox VALUES (?)", [(4,), (5,)])
    conn.commit()
    conn.close()
    agent.kills.append((STREAM, 1001, copy))
    agent_db(shop, 1004, [])  # the restarted agent wrote 1001-1003
    stored = [1, 2, 3, 4, 5, 1001, 1002, 1003]
    hub_db(shop, stored, GOOD_STATES, losses=[(6, 1000)])
    truth(shop, GOOD_TRUTH)
    a = audit(shop, tol_s=0.5, until=T0 + 50)
    assert a.streams[0].skipped == [(6, 1000)]
    assert a.streams[0].declared_real == []
    assert (a.produced, a.lost) == (8, 0)


def test_a_wrong_state_and_an_offline_while_observed_are_found(shop: Shop) -> None:
    agent_db(shop, 1, [])
    states = [
        (1.0, "IDLE", "Idle", "agent"),
        (10.1, "RUNNING", "Run", "agent"),
        (20.0, "PAUSED", "Hold:0", "agent"),  # the machine never paused
        (25.0, "OFFLINE", "no data", "hub"),  # while the agent could see it
        (30.2, "IDLE", "Idle", "agent"),
    ]
    hub_db(shop, [], states)
    truth(shop, GOOD_TRUTH)
    a = audit(shop, tol_s=0.5, until=T0 + 50)
    (s,) = a.states
    # 20-30 s PAUSED or OFFLINE, less the 0.5 s tolerance before the true change at 30 s.
    assert 9.3 < s.mismatched_s < 9.7
    assert 4.3 < s.offline_seen_s < 4.7
    assert [m[2] for m in s.mismatches] == ["PAUSED(Hold:0)", "OFFLINE(no data)"]


def test_a_change_seen_a_poll_late_is_within_the_tolerance(shop: Shop) -> None:
    agent_db(shop, 1, [])
    late = [(1.0, "IDLE", "Idle", "agent"), (10.4, "RUNNING", "Run", "agent")]
    hub_db(shop, [], late)
    truth(shop, [(0.5, "Idle"), (10.0, "Run")])
    assert audit(shop, tol_s=0.5, until=T0 + 50).state_problems() == []
    assert audit(shop, tol_s=0.3, until=T0 + 50).state_problems() != []


def test_unobservable_time_must_be_offline_and_is_not_compared(shop: Shop) -> None:
    agent_db(shop, 1, [])
    states = [
        (1.0, "IDLE", "Idle", "agent"),
        (10.1, "RUNNING", "Run", "agent"),
        (15.0, "OFFLINE", "link_lost", "agent"),
        (24.0, "RUNNING", "Run", "agent"),
    ]
    hub_db(shop, [], states)
    truth(shop, [(0.5, "Idle"), (10.0, "Run"), (18.0, "Idle"), (20.0, "Run")])
    shop.add_blind("pi-a/router", T0 + 15.0, T0 + 24.0)
    (s,) = audit(shop, tol_s=0.5, until=T0 + 50).states
    assert s.mismatched_s == 0
    assert 8.5 < s.blind_offline_s <= s.blind_s < 9.5


def test_known_hub_bugs_are_counted_apart_and_only_where_they_apply(shop: Shop) -> None:
    agent_db(shop, 1, [])
    states = [
        (1.0, "IDLE", "Idle", "agent"),
        (10.1, "RUNNING", "Run", "agent"),
        (20.05, "OFFLINE", "agent offline", "hub"),  # the will: the network is cut
        (20.1, "IDLE", "Idle", "agent"),  # replayed: the machine went idle during the cut
        (25.0, "RUNNING", "Run", "hub"),  # "data is back", with the state from before
        (35.0, "IDLE", "Idle", "agent"),
        (40.0, "PAUSED", "Hold:0", "hub"),  # a hub row that no agent row explains: no bug
        (45.0, "IDLE", "Idle", "agent"),
    ]
    hub_db(shop, [], states)
    truth(shop, [(0.5, "Idle"), (10.0, "Run"), (20.0, "Idle")])
    (s,) = audit(shop, tol_s=0.5, until=T0 + 50).states
    assert 9.8 < s.known_bug_s["stale-data-is-back-row"] < 10.2
    assert s.mismatches == [] or all(m[3] == "IDLE" for m in s.mismatches)
    assert 4.8 < s.mismatched_s < 5.2  # 40-45 s: the PAUSED row
