"""The command-line fault grammar the simulators share: ``KIND[:N]@WHEN[+DURATION][!]``.

:func:`split_fault` checks the frame and the kind and hands back the pieces as text; each
simulator reads ``N`` and ``WHEN`` its own way (seconds, ``L<n>`` lines, ``<pct>%``) inside
:func:`numbers`, which turns a bad number into :class:`SimConfigError`.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from shopfloor.sim.errors import SimConfigError

K = TypeVar("K", bound=enum.StrEnum)


@dataclass(frozen=True, slots=True)
class FaultSpec(Generic[K]):
    kind: K
    number: str | None  # the N of KIND:N (only where the grammar has one)
    when: str
    duration: str | None  # the text after '+'
    reboot: bool  # a trailing '!'


def split_fault(spec: str, kinds: type[K], *, usage: str, numbered: bool) -> FaultSpec[K]:
    """Split ``spec``; ``usage`` ends the "expected ..." error, ``numbered`` allows ``:N``."""
    text = spec.strip()
    reboot = text.endswith("!")
    if reboot:
        text = text[:-1]
    kind_text, sep, when_text = text.partition("@")
    if not sep:
        raise SimConfigError(f"fault {spec!r}: expected {usage}")
    number: str | None = None
    if numbered:
        kind_text, colon, number_text = kind_text.partition(":")
        number = number_text if colon else None
    try:
        kind = kinds(kind_text.strip().lower())
    except ValueError:
        names = ", ".join(k.value for k in kinds)
        raise SimConfigError(
            f"fault {spec!r}: unknown kind {kind_text!r} (one of {names})"
        ) from None
    when, plus, duration = when_text.partition("+")
    return FaultSpec(kind, number, when, duration if plus else None, reboot)


@contextlib.contextmanager
def numbers(spec: str) -> Iterator[None]:
    """Read the numbers of ``spec`` inside this block: a ``ValueError`` becomes a
    :class:`SimConfigError` naming the spec."""
    try:
        yield
    except ValueError as exc:
        raise SimConfigError(f"fault {spec!r}: bad number ({exc})") from exc
