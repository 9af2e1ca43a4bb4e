"""Configuration of the simulated Haas NGC mill."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from shopfloor.sim.haas.scenario import Fault


@dataclass(frozen=True, slots=True)
class HaasSimConfig:
    """What the simulated mill is, how it frames replies and how its operator behaves.

    Durations are caller seconds (the runner's clock). Reply details that the fact sheet marks
    [3P]/[UNCONFIRMED] are options here, so the agent can be tested against each variant.
    """

    serial: str = "1098765"
    model: str = "VF-2"
    software: str = "100.21.000.1100"
    program: str = "O01234"
    #: How long one part's cycle (cycle start to M30) takes.
    cycle_s: float = 20.0
    #: How long the operator takes to unload and load between two parts.
    load_s: float = 4.0
    #: The batch quantity, stored in macro variable ``parts_required_variable`` (0: none).
    parts_required: int = 10
    parts_required_variable: int = 500
    #: M30 counter #1 (``PARTS`` in Q500, ``#3901``) at power-up.
    parts_start: int = 0
    #: The operator runs the program by itself (cycle start after each load).
    auto_run: bool = True
    #: After a finished batch: wait this long, reset M30 counter #1 and start the next batch
    #: (None: stop after one batch).
    next_batch_s: float | None = 10.0
    #: ``stx``: STX payload ETB CR LF then a ``>`` prompt (RS-232 codecs); ``line``:
    #: ``>payload`` CR LF (Ethernet adapters).
    framing: Literal["stx", "line"] = "stx"
    #: ``STATUS, BUSY`` (True) or ``STATUS BUSY`` (False) while running.
    busy_comma: bool = True
    #: The reply to a query it does not know (None: no reply at all).
    unknown_reply: str | None = "UNKNOWN"
    #: Ignore the first ``?Q100`` after power-up (the Haas page says it may need sending twice).
    swallow_first_q100: bool = True
    spindle_rpm: float = 8000.0
    #: Faults to inject (see :mod:`shopfloor.sim.haas.scenario`).
    faults: tuple[Fault, ...] = ()
    #: Seed for line noise.
    seed: int | None = None
    #: How many state changes the machine keeps in :attr:`HaasMachine.state_log`.
    state_log_size: int = 10_000
