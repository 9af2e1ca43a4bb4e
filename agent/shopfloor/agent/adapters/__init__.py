"""Adapters turn one protocol's typed events into the protocol-neutral shapes of
:mod:`shopfloor.agent.readings` (Reading, DeviceEvent, DeviceInfo)."""
