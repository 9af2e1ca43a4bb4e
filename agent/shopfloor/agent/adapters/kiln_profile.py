"""Register maps of kiln (PID / ramp-soak) controllers, loaded from TOML data files.

A profile names where each quantity lives and how to scale it. The bundled ones are in
``shopfloor/agent/profiles/kiln/*.toml`` (``cn7500``, ``omron-e5cc``, ``watlow-pm``); a
user can point ``profile`` at a file of their own. Errors are
:class:`~shopfloor.agent.errors.ConfigError` naming the file, the key and the fix.

Fields the driver understands (only ``pv`` is required):

- ``pv``, ``sp``: temperatures (``sensor_break`` lists raw PV values that mean a broken
  thermocouple); ``output_pct``; ``segment``, ``last_segment`` (of the running program),
  ``pattern``, ``remaining_s``;
- ``alarm`` (``alarm_mask``: bits that mean an alarm); ``status`` (``alarm_mask``,
  ``sensor_break_mask``, ``stop_mask``); ``run`` (``running``: raw values that mean the
  program runs); ``firmware``.
"""

from __future__ import annotations

import enum
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from shopfloor.agent.config import ConfigTable
from shopfloor.agent.errors import ConfigError
from shopfloor.agent.protocols.modbus_rtu import Function, Request

__all__ = [
    "FIELD_NAMES",
    "Block",
    "Field",
    "KilnProfile",
    "ValueType",
    "bundled_profiles",
    "load_profile",
    "parse_profile",
]


class ValueType(enum.StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    FLOAT32 = "float32"
    BOOL = "bool"

    @property
    def width(self) -> int:
        return 2 if self is ValueType.FLOAT32 else 1


_FUNCTIONS: Final = {
    "holding": Function.READ_HOLDING_REGISTERS,
    "input": Function.READ_INPUT_REGISTERS,
    "coil": Function.READ_COILS,
    "discrete": Function.READ_DISCRETE_INPUTS,
}
_BIT_FUNCTIONS: Final = frozenset({Function.READ_COILS, Function.READ_DISCRETE_INPUTS})

#: The quantities a kiln driver reads, and the extra keys each may carry.
FIELD_NAMES: Final[Mapping[str, tuple[str, ...]]] = {
    "pv": ("sensor_break",),
    "sp": (),
    "output_pct": (),
    "segment": (),
    "last_segment": (),
    "pattern": (),
    "remaining_s": (),
    "alarm": ("alarm_mask",),
    "status": ("alarm_mask", "sensor_break_mask", "stop_mask"),
    "run": ("running",),
    "firmware": (),
}
_COMMON_KEYS: Final = ("address", "function", "type", "scale", "offset")
_PROFILE_KEYS: Final = ("name", "title", "baudrate", "parity", "stopbits", "merge_gap", "fields")
PARITIES: Final = frozenset({"N", "E", "O"})


@dataclass(frozen=True, slots=True)
class Field:
    """One quantity: where it lives and how raw words become a value (raw x scale + offset)."""

    name: str
    address: int
    function: Function
    type: ValueType
    scale: float = 1.0
    offset: float = 0.0
    sensor_break: frozenset[int] = frozenset()
    alarm_mask: int = 0
    sensor_break_mask: int = 0
    stop_mask: int = 0
    running: frozenset[int] = frozenset()

    @property
    def width(self) -> int:
        return self.type.width

    def raw(self, words: tuple[int, ...]) -> int:
        """The raw integer (int16/uint16/bool) of this field's words."""
        return words[0]

    def value(self, words: tuple[int, ...]) -> float:
        """The scaled value of this field's words (``len(words) == width``)."""
        if self.type is ValueType.FLOAT32:
            import struct  # noqa: PLC0415 - only float maps need it

            number = float(struct.unpack(">f", struct.pack(">HH", words[0], words[1]))[0])
        elif self.type is ValueType.INT16:
            number = float(words[0] - 0x10000 if words[0] & 0x8000 else words[0])
        else:
            number = float(words[0])
        return number * self.scale + self.offset


@dataclass(frozen=True, slots=True)
class Block:
    """One read request covering one or more fields."""

    function: Function
    address: int
    count: int
    fields: tuple[Field, ...]

    def request(self, device_id: int) -> Request:
        return Request(device_id, self.function, self.address, self.count)

    def split(self, words: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """Each field's words out of the block's reply."""
        return {
            f.name: words[f.address - self.address : f.address - self.address + f.width]
            for f in self.fields
        }


@dataclass(frozen=True, slots=True)
class KilnProfile:
    name: str
    title: str
    fields: Mapping[str, Field]
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    merge_gap: int = 0
    source: str = ""

    def blocks(self) -> tuple[Block, ...]:
        """The reads that cover every field: neighbours of one function merged when the gap
        between them is at most ``merge_gap`` (gaps are read and ignored)."""
        out: list[Block] = []
        by_function: dict[Function, list[Field]] = {}
        for f in self.fields.values():
            by_function.setdefault(f.function, []).append(f)
        for function, fields in by_function.items():
            fields.sort(key=lambda f: f.address)
            group: list[Field] = [fields[0]]
            for f in fields[1:]:
                end = group[-1].address + group[-1].width
                span = f.address + f.width - group[0].address
                if f.address - end <= self.merge_gap and span <= 125:
                    group.append(f)
                else:
                    out.append(_block(function, group))
                    group = [f]
            out.append(_block(function, group))
        return tuple(out)


def _block(function: Function, group: list[Field]) -> Block:
    start = group[0].address
    end = max(f.address + f.width for f in group)
    return Block(function, start, end - start, tuple(group))


_PACKAGE: Final = "shopfloor.agent"
_FOLDER: Final = "profiles/kiln"


def bundled_profiles() -> list[str]:
    folder = resources.files(_PACKAGE).joinpath(_FOLDER)
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def load_profile(name_or_path: str, *, base: Path | None = None) -> KilnProfile:
    """A bundled profile by name (``cn7500``) or a TOML file by path (relative to ``base``)."""
    bundled = resources.files(_PACKAGE).joinpath(_FOLDER, f"{name_or_path}.toml")
    if "/" not in name_or_path and bundled.is_file():
        return parse_profile(bundled.read_text(encoding="utf-8"), source=f"profile {name_or_path}")
    path = (base or Path.cwd()) / Path(name_or_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"kiln profile {name_or_path!r}: not a bundled profile and no such file. "
            f"Use one of {', '.join(bundled_profiles())} or the path of a .toml register map.",
            path=str(path),
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc}). Check it.", path=str(path)) from exc
    return parse_profile(text, source=str(path))


def parse_profile(text: str, *, source: str = "<profile>") -> KilnProfile:
    """Validate a register map's TOML ``text``; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{source}: not valid TOML: {exc}. Fix the syntax at that line.", path=source
        ) from exc
    t = ConfigTable(data, "", source, Path.cwd())
    t.check_keys(_PROFILE_KEYS)
    name = t.get("name", str, None, what='"my-controller"')
    parity = t.choice("parity", "N", PARITIES)
    stopbits = t.integer("stopbits", 1, low=1, high=2)
    ft = t.table("fields", required=True)
    ft.check_keys(tuple(FIELD_NAMES))
    fields: dict[str, Field] = {}
    for field_name, extras in FIELD_NAMES.items():
        if field_name in ft.data:
            fields[field_name] = _read_field(
                ft.table(field_name, required=True), field_name, extras
            )
    if "pv" not in fields:
        raise ft.error(
            "pv", "is missing", "Every kiln profile needs [fields.pv], the process value."
        )
    return KilnProfile(
        name=name,
        title=t.get("title", str, name, what="a description"),
        fields=fields,
        baudrate=t.integer("baudrate", 9600, low=300, high=921600),
        parity=parity,
        stopbits=stopbits,
        merge_gap=t.integer("merge_gap", 0, low=0, high=16),
        source=source,
    )


def _read_field(t: ConfigTable, name: str, extras: tuple[str, ...]) -> Field:
    t.check_keys(_COMMON_KEYS + extras)
    function = _FUNCTIONS[t.choice("function", "holding", frozenset(_FUNCTIONS))]
    is_bit = function in _BIT_FUNCTIONS
    kind = ValueType(
        t.choice("type", "bool" if is_bit else "int16", frozenset(v.value for v in ValueType))
    )
    if is_bit != (kind is ValueType.BOOL):
        raise t.error(
            "type",
            f"{kind.value!r} does not fit function {function.name.lower()}",
            'Coils and discrete inputs are type = "bool"; registers are int16, uint16 or float32.',
        )
    return Field(
        name=name,
        address=t.integer("address", None, low=0, high=0xFFFF),  # type: ignore[arg-type]
        function=function,
        type=kind,
        scale=t.number("scale", 1.0, low=-1e6, high=1e6, unit=""),
        offset=t.number("offset", 0.0, low=-1e6, high=1e6, unit=""),
        sensor_break=_int_set(t, "sensor_break"),
        alarm_mask=t.integer("alarm_mask", 0, low=0, high=0xFFFF),
        sensor_break_mask=t.integer("sensor_break_mask", 0, low=0, high=0xFFFF),
        stop_mask=t.integer("stop_mask", 0, low=0, high=0xFFFF),
        running=_int_set(t, "running"),
    )


def _int_set(t: ConfigTable, name: str) -> frozenset[int]:
    values = t.get(name, list, [], what="a list of integers")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFF for v in values):
        raise t.error(
            name, f"{values!r} is not a list of 0..65535", f"Write it as {name} = [1, 2]."
        )
    return frozenset(values)
