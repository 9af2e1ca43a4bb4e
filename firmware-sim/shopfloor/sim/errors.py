"""The simulators' exception tree (one base, derived from the contract's root error)."""

from __future__ import annotations

from shopfloor.contract.errors import ShopfloorError


class SimError(ShopfloorError):
    """Base of every error a simulator raises on purpose."""


class SimConfigError(SimError, ValueError):
    """A simulator option is invalid (bad fault spec, unknown program, bad number)."""
