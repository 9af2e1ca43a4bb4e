"""Response models: they make the OpenAPI document typed and pin the JSON shapes."""

from __future__ import annotations

from pydantic import BaseModel, Field

from shopfloor.contract import MachineState
from shopfloor.hub.store.base import EtaOrigin


class AlarmModel(BaseModel):
    code: int | None
    text: str


class JobModel(BaseModel):
    """One run of one program, with progress in the machine's own unit."""

    job: str | None = Field(None, description="the agent's id for this run, unique per machine")
    program: str | None = None
    unit: str | None = Field(None, description="lines, bytes, parts or seconds")
    total: float | None = Field(None, description="how many units make the whole job, if known")
    done: float | None = Field(None, description="units done so far")
    started: int | None = Field(None, description="epoch ms when the job started")
    eta_s: float | None = Field(None, description="the machine's own estimate of time left")
    segment: int | None = Field(None, description="a kiln's firing-schedule segment")
    id: int | None = Field(None, description="the hub's id of this job: GET /api/v1/jobs/{id}")
    eta_at: int | None = Field(None, description="epoch ms when the job is expected to end")
    eta_low_at: int | None = Field(None, description="the earliest likely end (epoch ms)")
    eta_high_at: int | None = Field(None, description="the latest likely end (epoch ms)")
    eta_origin: EtaOrigin | None = Field(
        None, description="where the ETA comes from: linear, history, schedule or firmware"
    )
    order_ref: str | None = Field(None, description="the order the program names, if any")


class MachineViewModel(BaseModel):
    """One machine as the wall page and every other client see it."""

    id: str = Field(description="machine id; 'agent:machine' if two agents use the same id")
    agent: str
    site: str
    name: str
    kind: str | None
    protocol: str | None
    state: MachineState
    detail: str
    since: int = Field(description="epoch ms since when the machine is in this state")
    last_seen: int | None = Field(description="epoch ms of the last data (hub clock)")
    program: str | None
    phase: str | None = Field(None, description="a kiln's firing phase: heating, soaking, cooling")
    job: JobModel | None = Field(None, description="the job in progress, if the machine says")
    alarm: AlarmModel | None
    online: bool = Field(description="whether the machine's agent is online")


class MachineList(BaseModel):
    machines: list[MachineViewModel]


class IntervalModel(BaseModel):
    state: MachineState
    detail: str
    from_: int = Field(alias="from", description="epoch ms, inclusive")
    to: int = Field(description="epoch ms, exclusive")
    duration_ms: int


class StatesResponse(BaseModel):
    machine: str
    from_: int = Field(alias="from")
    to: int
    intervals: list[IntervalModel]
    coverage: float = Field(description="share of the elapsed window with data (not OFFLINE)")


class MqttHealth(BaseModel):
    enabled: bool
    connected: bool


class MirrorHealthModel(BaseModel):
    """The metrics mirror (docs/operations.md, "Metrics mirror")."""

    target: str = Field(description="the InfluxDB/VictoriaMetrics URL, without credentials")
    ok: bool = Field(description="running, and the last attempt succeeded")
    running: bool
    cursor: int = Field(description="the last record cursor delivered and committed")
    head: int = Field(description="the highest record cursor stored")
    lag: int = Field(description="records stored but not yet mirrored")
    last_success_at: int | None = Field(description="epoch ms of the last successful round")
    last_error: str | None
    last_error_at: int | None
    consecutive_failures: int
    records_mirrored: int = Field(description="since the hub started")
    points_written: int = Field(description="since the hub started")
    records_refused: int = Field(description="refused by the server for good, and skipped")
    skipped: dict[str, int] = Field(description="values that could not become points, by reason")


class HealthResponse(BaseModel):
    status: str = Field(description="'ok', or 'degraded' when the store or MQTT is down")
    store: bool
    mqtt: MqttHealth
    queue_depth: int
    counters: dict[str, int]
    rejected_by_reason: dict[str, int]
    rejected_total: int
    machines: int
    stream_subscribers: int
    stream_dropped: int
    mirror: MirrorHealthModel | None = Field(
        None, description="the metrics mirror; null when none is configured"
    )


class RejectedModel(BaseModel):
    id: int
    received_at: int
    topic: str
    reason: str
    payload: str = Field(description="the payload as UTF-8 (invalid bytes replaced), truncated")
    payload_bytes: int


class RejectedList(BaseModel):
    total: int = Field(description="every message ever rejected; only the newest are kept")
    rejected: list[RejectedModel]
