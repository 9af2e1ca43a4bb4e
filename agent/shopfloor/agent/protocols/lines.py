"""Line framing shared by the line-based dialects (GRBL, Marlin): a capped line splitter.

:class:`LineSplitter` finds line boundaries by content (``\\r\\n``, ``\\n`` or ``\\r``), never
by timing, and hands back complete non-empty lines in order. A line longer than
``max_line_bytes`` is discarded up to the next end of line and reported once as an
:class:`Overlong` item in its place, so the caller can turn it into its own garbage event;
the splitter then resyncs. Its buffer never holds more than ``max_line_bytes``, and what it
returns does not depend on how the bytes were chunked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["GARBAGE_KEEP", "LineSplitter", "Overlong"]

#: How much of an offending line a garbage event keeps.
GARBAGE_KEEP: Final = 200


@dataclass(frozen=True, slots=True)
class Overlong:
    """A line longer than the cap: ``raw`` is its head, ``reason`` says so."""

    raw: bytes
    reason: str


class LineSplitter:
    """Bytes in, complete lines (without their ending) and :class:`Overlong` markers out."""

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._discarding = False

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the end of a line (always <= ``max_line_bytes``)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | Overlong]:
        """Add received bytes; return every line they completed, in order."""
        out: list[bytes | Overlong] = []
        start = 0
        n = len(data)
        while start < n:
            end = _find_terminator(data, start)
            if end < 0:
                self._append(data[start:], out)
                break
            self._append(data[start:end], out)
            if self._discarding:
                self._discarding = False
            elif self._buf:
                out.append(bytes(self._buf))
                self._buf.clear()
            start = end + 1
        return out

    def _append(self, chunk: bytes, out: list[bytes | Overlong]) -> None:
        if self._discarding or not chunk:
            return
        if len(self._buf) + len(chunk) > self.max_line_bytes:
            # Keep the same head whatever the chunking: the line has at least max+1 bytes.
            keep = min(GARBAGE_KEEP, self.max_line_bytes + 1)
            head = bytes(self._buf + chunk[:keep])[:keep]
            self._buf.clear()
            self._discarding = True
            out.append(Overlong(head, f"line longer than {self.max_line_bytes} bytes, discarded"))
            return
        self._buf += chunk


def _find_terminator(data: bytes, start: int) -> int:
    cr = data.find(b"\r", start)
    lf = data.find(b"\n", start)
    if cr < 0:
        return lf
    if lf < 0:
        return cr
    return min(cr, lf)
