"""The examples in docs/contract.md are real: each one decodes with the contract module."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shopfloor.contract import decode_ack, decode_envelope, decode_status, parse_topic
from shopfloor.contract.topics import AgentTopics, Channel

DOC = Path(__file__).resolve().parent.parent / "docs" / "contract.md"
BLOCK = re.compile(r"```json (envelope|status|ack)\n(.*?)```", re.DOTALL)
EXAMPLES = BLOCK.findall(DOC.read_text())


def test_the_doc_has_examples_of_every_kind() -> None:
    kinds = {kind for kind, _ in EXAMPLES}
    assert kinds == {"envelope", "status", "ack"}
    assert len(EXAMPLES) >= 6


@pytest.mark.parametrize(("kind", "text"), EXAMPLES)
def test_example_decodes(kind: str, text: str) -> None:
    payload = text.encode()
    if kind == "envelope":
        env = decode_envelope(payload)
        topic = AgentTopics(site="shop1", agent=env.agent).machine(env.machine, Channel(env.kind))
        ref = parse_topic(topic)
        assert (ref.agent, ref.machine) == (env.agent, env.machine)
    elif kind == "status":
        assert decode_status(payload).agent
    else:
        assert decode_ack(payload).streams


def test_every_api_path_is_on_the_api_page() -> None:
    from shopfloor.hub.api.app import create_app
    from shopfloor.hub.config import parse_config

    page = (DOC.parent / "api.md").read_text()
    spec = create_app(parse_config('[hub]\nsite = "s"\n')).openapi()
    # The page writes machine path parameters as {id}; every operation is named with its method.
    missing = [
        f"{method.upper()} {path}"
        for path, ops in spec["paths"].items()
        for method in ops
        if f"`{method.upper()} {path.replace('{machine_id}', '{id}')}" not in page
    ]
    assert not missing, f"docs/api.md does not mention: {missing}"
