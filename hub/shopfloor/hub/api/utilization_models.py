"""Response models of the utilization endpoints, with examples for the OpenAPI document."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shopfloor.hub.domain.shifts import Bucket

_STATES_EXAMPLE: dict[str, int] = {
    "ALARM": 0,
    "RUNNING": 18_000_000,
    "PAUSED": 600_000,
    "SETUP": 1_200_000,
    "IDLE": 7_200_000,
    "OFFLINE": 1_800_000,
}


class FiguresModel(BaseModel):
    """Time in every state and the ratios over one bucket (or the sum of buckets)."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "states_ms": dict(_STATES_EXAMPLE),
                "productive_ms": 18_000_000,
                "window_ms": 28_800_000,
                "planned_ms": 27_000_000,
                "productive_planned_ms": 17_400_000,
                "utilization": 0.625,
                "utilization_planned": 0.644444,
                "coverage": 0.9375,
            }
        }
    )

    states_ms: dict[str, int] = Field(
        description="milliseconds in each state (every state listed; they sum to window_ms)"
    )
    productive_ms: int = Field(description="time in a productive state within window_ms")
    window_ms: int = Field(description="elapsed part of the bucket: [start, min(end, now))")
    planned_ms: int = Field(description="planned shift time within window_ms (0: no calendar)")
    productive_planned_ms: int = Field(description="productive time inside planned time")
    utilization: float | None = Field(
        description="productive_ms / window_ms (null when nothing has elapsed)"
    )
    utilization_planned: float | None = Field(
        description="productive_planned_ms / planned_ms (null when nothing was planned)"
    )
    coverage: float | None = Field(
        description="observed (not OFFLINE) time / window_ms; how much of the window had data"
    )


class BucketFiguresModel(FiguresModel):
    start: int = Field(description="epoch ms, inclusive (clipped to the window)")
    end: int = Field(description="epoch ms, exclusive (clipped to the window)")
    label: str = Field(
        description="'2026-11-23' (day), '2026-11-23T07:00+0100' (hour), "
        "'2026-11-23 early' (shift), 'window' (none)"
    )


class MachineUtilizationModel(BaseModel):
    machine: str
    calendar: str | None = Field(description="the machine's shift calendar, if any")
    total: FiguresModel = Field(description="the sum over all buckets")
    buckets: list[BucketFiguresModel]


class GroupUtilizationModel(BaseModel):
    name: str
    machines: list[str]
    total: FiguresModel = Field(description="summed over every member and bucket")
    buckets: list[BucketFiguresModel] = Field(
        description="summed over every member, per bucket (shift buckets by start, end, label)"
    )


class DenominatorsModel(BaseModel):
    window: str
    planned: str


class DefinitionModel(BaseModel):
    """How every figure in the answer was computed."""

    productive_states: list[str] = Field(examples=[["RUNNING"]])
    denominators: DenominatorsModel
    coverage: str
    timezone: str = Field(description="the site's time zone for day and shift buckets")


class UtilizationResponse(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: int = Field(alias="from", description="epoch ms, inclusive")
    to: int = Field(description="epoch ms, exclusive")
    now: int = Field(description="the hub's clock; time after it is not counted")
    bucket: Bucket
    definition: DefinitionModel
    machines: list[MachineUtilizationModel] = Field(description="this page of machines")
    group: GroupUtilizationModel | None = None
    total_machines: int
    offset: int
    limit: int
    next_offset: int | None = Field(description="offset of the next page, null on the last")
