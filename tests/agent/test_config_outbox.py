"""The [agent] keys for the durable outbox: cap and replay rate."""

from __future__ import annotations

from pathlib import Path

import pytest

from shopfloor.agent.config import example_config, parse_config
from shopfloor.agent.errors import ConfigError


def _config(tmp_path: Path, extra: str) -> str:
    text = example_config(agent_id="pi-1", site="shop", url="mqtt://127.0.0.1:1883")
    return text.replace('site = "shop"\n', f'site = "shop"\n{extra}\n', 1)


def test_defaults(tmp_path: Path) -> None:
    agent = parse_config(_config(tmp_path, ""), source="a.toml", base=tmp_path).agent
    assert (agent.outbox_max_rows, agent.outbox_max_mb, agent.replay_rate) == (200_000, 256, 200.0)


def test_values_are_read(tmp_path: Path) -> None:
    extra = "outbox_max_rows = 5000\noutbox_max_mb = 16\nreplay_rate = 50.0"
    agent = parse_config(_config(tmp_path, extra), source="a.toml", base=tmp_path).agent
    assert (agent.outbox_max_rows, agent.outbox_max_mb, agent.replay_rate) == (5000, 16, 50.0)


def test_out_of_range_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"agent\.replay_rate"):
        parse_config(_config(tmp_path, "replay_rate = 0"), source="a.toml", base=tmp_path)
    with pytest.raises(ConfigError, match=r"agent\.outbox_max_rows"):
        parse_config(_config(tmp_path, "outbox_max_rows = 1"), source="a.toml", base=tmp_path)
