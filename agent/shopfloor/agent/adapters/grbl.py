"""GRBL events to readings: state words to observations, fields to stably named values.

:class:`GrblAdapter` is pure (time is passed in). It owns the :class:`StatusCache`, so
``WCO:``/``Ov:``/``A:`` persist between reports and the cache is reset on a banner.
Code tables: gnea/grbl ``doc/csv/{error,alarm}_codes_en_US.csv`` (1.1h) plus the grblHAL
additions from grblHAL/core ``errors.h``/``alarms.h`` that the fact sheet lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from shopfloor.agent.protocols.grbl import (
    AlarmPush,
    Banner,
    BuildInfo,
    ErrorReply,
    GrblEvent,
    Message,
    StatusCache,
    StatusReport,
)
from shopfloor.agent.readings import DeviceEvent, DeviceInfo, Reading
from shopfloor.contract.states import Observation

__all__ = [
    "ALARM_TEXTS",
    "ERROR_TEXTS",
    "STATE_OBSERVATIONS",
    "GrblAdapter",
    "GrblItem",
    "alarm_text",
    "error_text",
]

GrblItem = Reading | DeviceEvent | DeviceInfo

PROTOCOL: Final = "grbl"

#: Grbl's state word (without substate) to what it tells the tracker.
STATE_OBSERVATIONS: Final[Mapping[str, Observation]] = MappingProxyType(
    {
        "Idle": Observation.REPORTS_IDLE,
        "Sleep": Observation.REPORTS_IDLE,
        "Run": Observation.REPORTS_RUNNING,
        "Hold": Observation.REPORTS_PAUSED,
        "Door": Observation.REPORTS_PAUSED,
        "Tool": Observation.REPORTS_PAUSED,  # grblHAL: manual tool change
        "Jog": Observation.REPORTS_SETUP,
        "Home": Observation.REPORTS_SETUP,
        "Check": Observation.REPORTS_SETUP,
        "Alarm": Observation.REPORTS_ALARM,
    }
)

#: ``ALARM:N`` texts. 1-9 are gnea 1.1h; 10 and up follow grblHAL (gnea's CSV also has a
#: 10, "homing: second dual-axis switch not found", for its dual-axis builds).
ALARM_TEXTS: Final[Mapping[int, str]] = MappingProxyType(
    {
        1: "Hard limit triggered; position likely lost, re-home",
        2: "Soft limit: target beyond machine travel; position kept",
        3: "Reset while in motion; position likely lost, re-home",
        4: "Probe not in the expected initial state",
        5: "Probe made no contact within travel",
        6: "Homing failed: reset during the homing cycle",
        7: "Homing failed: safety door opened",
        8: "Homing failed: pull-off did not clear the limit switch",
        9: "Homing failed: limit switch not found",
        10: "Emergency stop (grblHAL); dual-axis homing switch not found (Grbl)",
        11: "Homing required",
        12: "Limit switch engaged",
        13: "Probe protection triggered",
        14: "Spindle at-speed timeout",
        15: "Auto-squaring: second switch not found",
        16: "Self-test failed",
        17: "Motor fault",
        18: "Homing: bad configuration",
        19: "Modbus exception",
        20: "I/O expander failed",
        21: "Settings storage (NVS) failed",
        22: "Buffer overflow",
    }
)

#: ``error:N`` texts: gnea 1.1h 1-38, and the grblHAL additions the fact sheet names.
ERROR_TEXTS: Final[Mapping[int, str]] = MappingProxyType(
    {
        1: "Letter missing: a G-code word is a letter and a value",
        2: "Bad or missing number",
        3: "Unknown or unsupported $ command",
        4: "Negative value where a positive one is needed",
        5: "Homing is not enabled",
        6: "Step pulse must be longer than 3 microseconds",
        7: "EEPROM read failed; defaults restored",
        8: "$ command needs the machine idle",
        9: "G-code locked out in alarm or jog state",
        10: "Soft limits need homing enabled",
        11: "Line too long",
        12: "Setting exceeds the maximum step rate",
        13: "Safety door opened",
        14: "Build info or startup line too long for EEPROM",
        15: "Jog target beyond machine travel",
        16: "Bad jog command",
        17: "Laser mode needs PWM output",
        20: "Unsupported G-code command",
        21: "Modal group violation",
        22: "Feed rate undefined",
        23: "Integer value required",
        24: "Two commands that both need axis words",
        25: "Repeated G-code word",
        26: "Axis words missing",
        27: "Bad line number",
        28: "P or L value missing",
        29: "G59.x work coordinate systems not supported",
        30: "G53 needs G0 or G1",
        31: "Unused axis words with G80",
        32: "Arc has no in-plane axis words",
        33: "Invalid motion target",
        34: "Arc radius math error",
        35: "Arc IJK offset missing",
        36: "Unused value words",
        37: "G43.1 on the wrong axis",
        38: "Tool number too large",
        39: "Value out of range",
        45: "Limit switches engaged",
        46: "Homing required",
        50: "Emergency stop active",
        60: "SD card or file system failed to mount",
        61: "SD card or file system read failed",
        62: "SD card or file system directory listing failed",
        63: "SD card or file system directory not found",
        64: "SD card or file system file empty",
        65: "SD card or file system file not found",
        66: "SD card or file system file failed to open",
        77: "Authentication required",
        78: "Access denied",
        79: "Not allowed while a critical event is active",
    }
)

_AXES: Final = "xyzabc"


def alarm_text(code: int) -> str:
    return ALARM_TEXTS.get(code, f"Alarm {code}")


def error_text(code: int) -> str:
    return ERROR_TEXTS.get(code, f"Error {code}")


class GrblAdapter:
    """Maps :data:`~shopfloor.agent.protocols.grbl.GrblEvent` to readings.

    ``laser_mode`` (``$32=1``) renames the second ``FS:`` value from ``spindle`` to
    ``laser_power``. Status reports with a state word we do not know produce nothing (and
    are counted in ``unknown_states``); so do ok, settings and other feedback lines.
    """

    def __init__(self, *, laser_mode: bool = False) -> None:
        self.laser_mode = laser_mode
        self.cache = StatusCache()
        self.unknown_states = 0

    def translate(self, event: GrblEvent, *, ts_ms: int, mono_ms: int) -> list[GrblItem]:
        if isinstance(event, StatusReport):
            reading = self.reading(event, ts_ms=ts_ms, mono_ms=mono_ms)
            return [] if reading is None else [reading]
        if isinstance(event, AlarmPush):
            # An ALARM:N push means the controller is now in Alarm, and after a critical one
            # (hard or soft limit) it answers nothing until reset: without this reading, the
            # silence that follows would show the machine OFFLINE instead of in ALARM.
            return [
                DeviceEvent(ts_ms, mono_ms, "alarm_raised", event.code, alarm_text(event.code)),
                Reading(ts_ms, mono_ms, Observation.REPORTS_ALARM, detail=f"ALARM:{event.code}"),
            ]
        if isinstance(event, ErrorReply):
            return [DeviceEvent(ts_ms, mono_ms, "error_reply", event.code, error_text(event.code))]
        if isinstance(event, Message):
            return [DeviceEvent(ts_ms, mono_ms, "message", None, event.text)]
        if isinstance(event, Banner):
            self.cache.reset()
            return [
                DeviceEvent(ts_ms, mono_ms, "device_reset", None, event.text),
                DeviceInfo(
                    protocol=PROTOCOL,
                    firmware=f"{event.flavor} {event.version}",
                    options={"flavor": event.flavor},
                ),
            ]
        if isinstance(event, BuildInfo):
            return [self.device_info(event)]
        return []

    def reading(self, report: StatusReport, *, ts_ms: int, mono_ms: int) -> Reading | None:
        observation = STATE_OBSERVATIONS.get(report.state)
        if observation is None:
            self.unknown_states += 1
            return None
        full = self.cache.apply(report)
        return Reading(
            ts_ms=ts_ms,
            mono_ms=mono_ms,
            observation=observation,
            detail=full.raw_state,
            values=self.values(full),
            line=full.line_number,
        )

    def values(self, report: StatusReport) -> dict[str, float]:
        """Stable names for what a (cache-completed) report carries."""
        out: dict[str, float] = {}
        if report.feed is not None:
            out["feed_mm_min"] = report.feed
        if report.spindle is not None:
            out["laser_power" if self.laser_mode else "spindle"] = report.spindle
        if report.mpos is not None:
            out.update(zip(_AXES, report.mpos, strict=False))
        if report.wpos is not None:
            out.update(zip((f"w{a}" for a in _AXES), report.wpos, strict=False))
        if report.overrides is not None:
            feed, rapid, spindle = report.overrides
            out["feed_override_pct"] = float(feed)
            out["rapid_override_pct"] = float(rapid)
            out["spindle_override_pct"] = float(spindle)
        if report.buffer is not None:
            out["planner_blocks_free"] = float(report.buffer[0])
            out["rx_bytes_free"] = float(report.buffer[1])
        return out

    @staticmethod
    def device_info(info: BuildInfo) -> DeviceInfo:
        firmware = info.version if not info.build else f"{info.version}.{info.build}"
        options: dict[str, str] = {"option_letters": info.options}
        if info.user_info:
            options["user_info"] = info.user_info
        if info.planner_blocks is not None:
            options["planner_blocks"] = str(info.planner_blocks)
        if info.rx_buffer_bytes is not None:
            options["rx_buffer_bytes"] = str(info.rx_buffer_bytes)
        return DeviceInfo(protocol=PROTOCOL, firmware=firmware, options=options)
