from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shopfloor.contract import AgentTopics, Channel, ContractError, parse_topic, validate_id
from shopfloor.contract.topics import hub_status_topic, subscription_filters

ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)


@given(
    site=ids,
    agent=ids,
    machine=ids,
    channel=st.sampled_from(["state", "telemetry", "event", "meta"]),
)
def test_machine_topics_round_trip(site: str, agent: str, machine: str, channel: str) -> None:
    topics = AgentTopics(site=site, agent=agent)
    ref = parse_topic(topics.machine(machine, Channel(channel)))
    assert (ref.site, ref.agent, ref.machine, ref.channel) == (site, agent, machine, channel)


def test_agent_level_topics() -> None:
    topics = AgentTopics(site="shop1", agent="pi-1", root="acme/shopfloor/v1")
    assert topics.status == "acme/shopfloor/v1/shop1/pi-1/_status"
    assert parse_topic(topics.status, "acme/shopfloor/v1").channel is Channel.STATUS
    assert parse_topic(topics.ack, "acme/shopfloor/v1").channel is Channel.ACK
    ref = parse_topic(topics.cmd("replay"), "acme/shopfloor/v1")
    assert (ref.channel, ref.command, ref.machine) == (Channel.CMD, "replay", None)
    hub = parse_topic(hub_status_topic("shop1", "acme/shopfloor/v1"), "acme/shopfloor/v1")
    assert hub.channel is Channel.HUB_STATUS


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        ("other/v1/shop/pi/m/state", "not under the root"),
        ("shopfloor/v1/shop/pi/m/bogus", "unknown channel"),
        ("shopfloor/v1/shop/pi/m/_status", "not a machine channel"),
        ("shopfloor/v1/shop/Pi/m/state", "agent id 'Pi' is not valid"),
        ("shopfloor/v1/shop/pi/_m/state", "machine id '_m' is not valid"),
        ("shopfloor/v1/shop", "too few levels"),
        ("shopfloor/v1/shop/pi/m/state/extra", "does not match"),
    ],
)
def test_bad_topics_say_why(topic: str, why: str) -> None:
    with pytest.raises(ContractError, match=why):
        parse_topic(topic)


def test_ids_reject_wildcards_and_length() -> None:
    for bad in ["", "a/b", "+", "#", "x" * 65, "-lead", "UPPER"]:
        with pytest.raises(ContractError):
            validate_id(bad, "machine")
    assert validate_id("cnc-07_a", "machine") == "cnc-07_a"


def test_subscription_filters_cover_machine_channels_and_status() -> None:
    filters = subscription_filters("r/v1")
    assert "r/v1/+/+/+/state" in filters
    assert "r/v1/+/+/_status" in filters
    assert len(filters) == 5
