"""G-code text handling shared by the machine model: filtering, words, modal groups.

Pure functions and tables from gnea/grbl 1.1h (``protocol.c`` input filtering, ``gcode.c``
word parsing and modal groups). No machine state here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

LINE_BUFFER_SIZE: Final = 80
#: What the line reader hands on for a line longer than the 80-byte line buffer.
OVERFLOW: Final = "\x00"

G_GROUPS: Final[dict[float, str]] = {
    0: "motion",
    1: "motion",
    2: "motion",
    3: "motion",
    80: "motion",
    4: "nonmodal",
    10: "nonmodal",
    28: "nonmodal",
    30: "nonmodal",
    53: "nonmodal",
    92: "nonmodal",
    92.1: "nonmodal",
    28.1: "nonmodal",
    30.1: "nonmodal",
    17: "plane",
    18: "plane",
    19: "plane",
    90: "distance",
    91: "distance",
    91.1: "arc_distance",
    93: "feed_mode",
    94: "feed_mode",
    20: "units",
    21: "units",
    40: "cutter",
    43.1: "tlo",
    49: "tlo",
    61: "control",
    54: "coord",
    55: "coord",
    56: "coord",
    57: "coord",
    58: "coord",
    59: "coord",
}
M_GROUPS: Final[dict[float, str]] = {
    0: "stop",
    1: "stop",
    2: "stop",
    30: "stop",
    3: "spindle",
    4: "spindle",
    5: "spindle",
    8: "coolant",
    9: "coolant",
}
VALUE_LETTERS: Final = frozenset("FIJKLNPRSTXYZ")
AXES: Final = "XYZ"


def fmt(value: float, decimals: int) -> str:
    # Grbl prints -0.000 only for tiny negatives; an exact -0.0 prints as 0.000.
    return f"{value + 0.0:.{decimals}f}"


def read_number(text: str, pos: int) -> tuple[float, int] | None:
    """Grbl's ``read_float``: optional sign, digits and at most one point; None if no digit."""
    i = pos
    if i < len(text) and text[i] in "+-":
        i += 1
    digits = 0
    point = False
    while i < len(text):
        c = text[i]
        if c.isdigit():
            digits += 1
        elif c == "." and not point:
            point = True
        else:
            break
        i += 1
    if digits == 0:
        return None
    return float(text[pos:i]), i


def parse_words(text: str) -> list[tuple[str, float]] | int:
    """Split a filtered line into (letter, value) words, or Grbl's error code (1 or 2)."""
    words: list[tuple[str, float]] = []
    i = 0
    while i < len(text):
        letter = text[i]
        if not ("A" <= letter <= "Z"):
            return 1
        parsed = read_number(text, i + 1)
        if parsed is None:
            return 2
        value, i = parsed
        words.append((letter, value))
    return words


def filter_line(raw: str) -> str:
    """The same filtering the RX path applies, for lines from the built-in sender."""
    out: list[str] = []
    comment = False
    for ch in raw:
        if comment:
            if ch == ")":
                comment = False
            continue
        if ch <= " " or ch == "/":
            continue
        if ch == "(":
            comment = True
        elif ch == ";":
            break
        elif len(out) >= LINE_BUFFER_SIZE - 1:
            return OVERFLOW
        else:
            out.append(ch.upper())
    return "".join(out)


def xyz(values: Sequence[float]) -> str:
    return ",".join(fmt(v, 3) for v in values)
