"""Garbage in and arbitrary chunking: the machine model only ever says legal GRBL lines."""

from __future__ import annotations

import itertools
import re

from grbl_host import Host
from hypothesis import given, settings
from hypothesis import strategies as st

LEGAL = re.compile(
    r"^(|ok|error:\d+|ALARM:\d+|<[A-Za-z]+(:\d)?\|[WM]Pos:[-\d.,]+(\|[A-Za-z]+:[-\w.,]+)*>"
    r"|\[(MSG|GC|VER|OPT|HLP|G5[4-9]|G28|G30|G92|TLO|PRB):.*\]|\$\d+=[\d.]+|\$N[01]="
    r"|Grbl 1\.1h \['\$' for help\])$"
)

SCRIPT = (
    b"$I\nG21 G90\n?G1 X10 Y5 F600\nM3 S1000\n?G4 P0.1\n$G\n!?~G0 X0\n"
    b"(comment) g1 x3 ; tail\n$$\n\x91?\n$#\nM30\n"
)


def run(chunks: list[bytes]) -> bytes:
    host = Host.make()
    out = bytearray(host.machine.take_output())
    for chunk in chunks:
        host.send(chunk)
        out += host.machine.take_output()
    host.wait(5.0)
    host.send(b"?")
    out += host.machine.take_output()
    return bytes(out)


def test_same_output_whole_or_byte_by_byte() -> None:
    whole = run([SCRIPT])
    assert b"[MSG:Pgm End]" in whole
    assert run([bytes([b]) for b in SCRIPT]) == whole


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(SCRIPT) - 1), unique=True))
def test_same_output_for_any_split(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(SCRIPT)]
    chunks = [SCRIPT[a:b] for a, b in itertools.pairwise(bounds)]
    assert run(chunks) == run([SCRIPT])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=12), st.booleans())
def test_garbage_gives_only_legal_lines(chunks: list[bytes], laser: bool) -> None:
    host = Host.make(laser=laser, line_numbers=laser)
    for chunk in chunks:
        host.send(chunk.replace(b"\x18", b""))  # resets are legal but end the experiment early
        host.wait(0.2)
    host.send(b"\n?")
    text = host.machine.take_output().decode("ascii")
    lines = text.split("\r\n")
    assert lines[-1] == ""
    for line in lines[:-1]:
        assert LEGAL.match(line), line
