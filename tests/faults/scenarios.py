"""The fault scenarios: each one runs a whole shop, injects one fault mid-stream, audits.

Every scenario has the same shape (:func:`run`): start the broker, the simulators, the hub
and two agents (``pi-a``: a router and a laser; ``pi-b``: a router), wait until every
machine's reports reach the hub, let data flow, inject the fault, clear it, measure how
long the hub's store takes to catch up (``recover_s``), let data flow again, stop
everything cleanly, and audit the files left behind (:func:`faultlib.audit`).

``SHOPFLOOR_FAULTS_FULL=1`` lengthens every fault (the network cut to three minutes) and
adds the broker variants the CI subset leaves out.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import burst
from faultlib import AgentSpec, Audit, MachineSpec, Shop, Timing, audit, running

FULL = os.environ.get("SHOPFLOOR_FAULTS_FULL", "") not in ("", "0")
POLL_S = 0.2
#: A store state may differ from the truth this close to a true change: the agent sees a
#: change at its next poll, and stamps it when the answer arrives.
TOLERANCE_S = POLL_S + 0.3


def timing() -> Timing:
    if FULL:
        return Timing(warmup=10, before=10, fault=45, cut=180, after=15, recover_timeout=300)
    return Timing()


def agents(*, relay_a: bool = False) -> list[AgentSpec]:
    return [
        AgentSpec(
            "pi-a",
            (
                MachineSpec("router", "pi-a", seed=11),
                MachineSpec("laser", "pi-a", laser=True, seed=12),
            ),
            relay=relay_a,
            poll_s=POLL_S,
        ),
        AgentSpec("pi-b", (MachineSpec("router", "pi-b", seed=13),), poll_s=POLL_S),
    ]


@dataclass
class Result:
    name: str
    what: str
    audit: Audit
    recover_s: float | None
    folder: Path
    duration_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    timeline: list[tuple[float, str]] = field(default_factory=list)
    logs: str = ""

    def to_json(self) -> dict[str, Any]:
        """Every figure, as the tests and the report read them."""
        a = self.audit
        return {
            "scenario": self.name,
            "what": self.what,
            "produced": a.produced,
            "stored": a.stored,
            "duplicates": a.duplicates,
            "lost": a.lost,
            "recover_s": self.recover_s,
            "duration_s": self.duration_s,
            "problems": a.problems(),
            "state_problems": a.state_problems("served"),
            "state_problems_voided": a.state_problems("voided"),
            "known_hub_bugs": a.known_bugs("served"),
            "known_hub_bugs_voided": a.known_bugs("voided"),
            "content_duplicates": a.content_duplicates,
            "key_duplicates": a.key_duplicates,
            "rejected_total": a.rejected_total,
            "replayed": a.replayed,
            "notes": a.notes,
            "streams": [asdict(s) for s in a.streams],
            "states": [asdict(s) for s in a.states],
            "states_voided": [asdict(s) for s in a.states_voided],
            "extra": self.extra,
            "timeline": self.timeline,
            "folder": str(self.folder),
        }


Fault = Callable[[Shop, Timing], tuple[float | None, dict[str, Any]]]


def broker_restart(persistence: bool, sig: int) -> Fault:
    def fault(shop: Shop, t: Timing) -> tuple[float | None, dict[str, Any]]:
        shop.note(f"broker stopped ({signal.Signals(sig).name})")
        shop.broker.stop(sig)
        time.sleep(t.fault)
        cleared = time.monotonic()
        shop.broker.start()
        shop.note("broker started")
        targets = shop.targets()
        shop.wait_caught_up(targets, t.recover_timeout)
        return time.monotonic() - cleared, {"targets": targets}

    return fault


def hub_kill(shop: Shop, t: Timing) -> tuple[float | None, dict[str, Any]]:
    shop.note("hub SIGKILL")
    shop.hub.kill()
    time.sleep(t.fault)
    cleared = time.monotonic()
    shop.hub.start()
    shop.note("hub started")
    targets = shop.targets()
    shop.wait_caught_up(targets, t.recover_timeout)
    return time.monotonic() - cleared, {"targets": targets}


def agent_kill(shop: Shop, t: Timing) -> tuple[float | None, dict[str, Any]]:
    agent = shop.agents["pi-a"]
    killed_at = shop.note("agent pi-a SIGKILL")
    agent.kill()
    time.sleep(t.fault)
    cleared = time.monotonic()
    restarted = time.time()
    agent.start()
    shop.note("agent pi-a started")
    # Caught up: the seqs the dead process skipped are declared and the hub's watermark is
    # past the first seq of the new process (the gap is closed).
    _, block_end, _ = agent.kills[-1]
    targets = {**shop.targets(), "pi-a": block_end}
    shop.wait_caught_up(targets, t.recover_timeout)
    recover = time.monotonic() - cleared
    for m in agent.spec.machines:
        shop.add_blind(m.key, killed_at, shop.first_report_after(m.key, restarted))
    return recover, {"targets": targets, "skipped": block_end}


def network_cut(shop: Shop, t: Timing) -> tuple[float | None, dict[str, Any]]:
    relay = shop.relays["pi-a"]
    shop.note(f"network cut for {t.cut:g} s")
    relay.cut()
    time.sleep(t.cut)
    cleared = time.monotonic()
    answer = relay.resume()
    shop.note("network back")
    targets = shop.targets()
    shop.wait_caught_up(targets, t.recover_timeout)
    recover = time.monotonic() - cleared
    return recover, {
        "targets": targets,
        "relay": answer,
        "agent_lost_connection": shop.log_count("pi-a", "lost connection"),
        "agent_reconnected": shop.log_count("pi-a", "reconnected"),
        "other_agent_lost_connection": shop.log_count("pi-b", "lost connection"),
    }


def unplug(shop: Shop, t: Timing) -> tuple[float | None, dict[str, Any]]:
    key = "pi-a/router"
    gone = shop.note(f"{key} unplugged for {t.fault:g} s")
    shop.sims.vanish(key, t.fault)
    time.sleep(t.fault)
    back = gone + t.fault
    shop.note(f"{key} plugged in")
    first = shop.first_report_after(key, back, t.recover_timeout)
    shop.add_blind(key, gone, first)
    targets = shop.targets()
    shop.wait_caught_up(targets, t.recover_timeout)
    return first - back, {"first_report_after_s": round(first - back, 2)}


def malformed(shop: Shop, t: Timing) -> tuple[float | None, dict[str, Any]]:
    before = shop.hub.get("/api/v1/rejected?limit=1")["total"]
    hostile = [
        *burst.hostile_messages("faults/v1", "shop", "pi-a", "router"),
        *burst.hostile_messages("faults/v1", "shop", "pi-b", "router")[::3],
    ]
    agent_side = burst.agent_side_messages("faults/v1", "shop", "pi-a")
    shop.note(f"burst of {len(hostile)} malformed messages (+{len(agent_side)} to the agent)")
    sent = burst.send(shop.broker.port, hostile + agent_side, shop.folder / "burst")
    cleared = time.monotonic()
    shop.note("burst sent")
    targets = shop.targets()
    shop.wait_caught_up(targets, t.recover_timeout)
    recover = time.monotonic() - cleared
    from faultlib import wait_until

    wait_until(
        lambda: shop.hub.get("/api/v1/rejected?limit=1")["total"] - before >= len(hostile),
        "every malformed message to be counted",
        30,
        0.2,
    )
    time.sleep(1.0)  # nothing more than that comes
    after = shop.hub.get("/api/v1/rejected?limit=1000")
    health = shop.hub.get("/api/v1/health")
    return recover, {
        "sent": sent,
        "hostile": len(hostile),
        "agent_side": len(agent_side),
        "rejected": after["total"] - before,
        "rejected_by_reason": health["rejected_by_reason"],
        "agents_alive": all(a.proc.alive() for a in shop.agents.values()),
    }


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    fault: Fault
    relay_a: bool = False
    persistence: bool = False
    ci: bool = True


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "broker-persistent-kill",
            "broker (persistence, autosave 5 s) SIGKILLed, restarted",
            broker_restart(True, signal.SIGKILL),
            persistence=True,
        ),
        Scenario(
            "broker-persistent-stop",
            "broker (persistence) stopped cleanly, restarted",
            broker_restart(True, signal.SIGTERM),
            persistence=True,
            ci=False,
        ),
        Scenario(
            "broker-volatile-stop",
            "broker (no persistence) stopped, restarted: sessions and retained gone",
            broker_restart(False, signal.SIGTERM),
        ),
        Scenario(
            "broker-volatile-kill",
            "broker (no persistence) SIGKILLed, restarted",
            broker_restart(False, signal.SIGKILL),
            ci=False,
        ),
        Scenario("hub-kill", "hub SIGKILLed mid-stream, restarted", hub_kill, persistence=True),
        Scenario("agent-kill", "agent pi-a SIGKILLed, restarted", agent_kill, persistence=True),
        Scenario(
            "network-cut",
            "pi-a's traffic blackholed (no FIN, no RST), then back",
            network_cut,
            relay_a=True,
            persistence=True,
        ),
        Scenario("serial-unplug", "pi-a/router's port vanishes, returns", unplug, persistence=True),
        Scenario(
            "malformed-burst",
            "hostile messages on the agent topics while data flows",
            malformed,
            persistence=True,
        ),
    )
}


def selected() -> list[Scenario]:
    return [s for s in SCENARIOS.values() if FULL or s.ci]


def run(scenario: Scenario, folder: Path, t: Timing | None = None) -> Result:
    t = t or timing()
    shop = Shop(folder, agents(relay_a=scenario.relay_a), persistence=scenario.persistence)
    began = time.monotonic()
    with running(shop):
        shop.wait_flowing()
        time.sleep(t.warmup + t.before)
        recover_s, extra = scenario.fault(shop, t)
        time.sleep(t.after)
        until = time.time() - TOLERANCE_S
        shop.settle_and_stop()
        logs = shop.logs()
    return Result(
        name=scenario.name,
        what=scenario.what,
        audit=audit(shop, tol_s=TOLERANCE_S, until=until),
        recover_s=None if recover_s is None else round(recover_s, 2),
        folder=folder,
        duration_s=round(time.monotonic() - began, 1),
        extra=extra,
        timeline=[(round(at - shop.started_at, 2), text) for at, text in shop.timeline],
        logs=logs,
    )
