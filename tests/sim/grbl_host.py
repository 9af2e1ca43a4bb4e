"""A tiny synthetic-time host for driving :class:`GrblMachine` in tests (no agent code)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shopfloor.sim.grbl import GrblMachine, GrblSimConfig


@dataclass
class Host:
    """Sends bytes at a synthetic time and splits what the device says into lines."""

    machine: GrblMachine
    t: float = 0.0
    buffer: bytearray = field(default_factory=bytearray)

    @classmethod
    def make(cls, **config: object) -> Host:
        machine = GrblMachine(GrblSimConfig(**config))  # type: ignore[arg-type]
        host = cls(machine)
        machine.advance(0.0)
        return host

    def send(self, data: bytes) -> None:
        self.machine.receive(data, self.t)

    def wait(self, seconds: float, step: float = 0.05) -> None:
        end = self.t + seconds
        while self.t < end - 1e-9:
            self.t = min(end, self.t + step)
            self.machine.advance(self.t)

    def lines(self) -> list[str]:
        """Complete lines written since the last call (without CR LF)."""
        self.buffer += self.machine.take_output()
        *complete, rest = bytes(self.buffer).split(b"\r\n")
        self.buffer = bytearray(rest)
        return [line.decode("ascii") for line in complete]

    def status(self) -> str:
        """Send `?` and return the one report it produced."""
        self.lines()
        self.send(b"?")
        reports = [line for line in self.lines() if line.startswith("<")]
        assert len(reports) == 1, reports
        return reports[0]

    def until(self, state: str, timeout: float = 60.0, step: float = 0.01) -> None:
        end = self.t + timeout
        while self.machine.status != state:
            assert self.t < end, f"still {self.machine.status}, wanted {state}"
            self.wait(step, step)


def fields(report: str) -> dict[str, str]:
    """``<Run|MPos:1,2,3|FS:5,0>`` -> {"state": "Run", "MPos": "1,2,3", "FS": "5,0"}."""
    assert report.startswith("<"), report
    assert report.endswith(">"), report
    parts = report[1:-1].split("|")
    out = {"state": parts[0]}
    for part in parts[1:]:
        name, _, value = part.partition(":")
        out[name] = value
    return out


def names(report: str) -> list[str]:
    return [p.partition(":")[0] for p in report[1:-1].split("|")[1:]]
