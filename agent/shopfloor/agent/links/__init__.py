"""Links move bytes and nothing else: real serial, pseudo-terminal, TCP, in-memory."""

from shopfloor.agent.links.base import Link

__all__ = ["Link"]
