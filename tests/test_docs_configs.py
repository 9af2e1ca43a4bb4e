"""The configuration examples in the docs are real: each one loads with the real loader.

Fenced blocks in ``docs/configuration.md`` and ``README.md`` are marked by their info string:

- ```` ```toml agent ```` / ```` ```toml hub ````: a complete agent or hub config. It must load
  with :func:`shopfloor.agent.config.parse_config` / :func:`shopfloor.hub.config.parse_config`.
  Relative paths resolve against a temporary folder; the files they name (password, TLS) are
  created there first, so examples should name them with relative paths.
- ```` ```toml agent-error ```` / ```` ```toml hub-error ````: a broken config, followed by a
  ```` ```text ```` block whose first line is exactly what the program prints for it, with
  the file at ``/etc/shopfloor/agent.toml`` or ``/etc/shopfloor/hub.toml``.
- plain ```` ```toml ````: a fragment, not checked. A plain block with an ``[agent]`` or
  ``[hub]`` table is a complete config that escaped checking, and fails the test.

The reference tables must list exactly the keys the loaders accept.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from shopfloor.agent import app as agent_app
from shopfloor.agent import config as agent_config
from shopfloor.hub import config as hub_config
from shopfloor.hub import service as hub_service

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DOC = ROOT / "docs" / "configuration.md"
README = ROOT / "README.md"
ETC = "/etc/shopfloor"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
#: Keys whose value names a file that must exist when the config is loaded, per table.
FILE_KEYS = ("password_file", "ca_file", "cert_file", "key_file")


@dataclass(frozen=True, slots=True)
class Block:
    file: str
    line: int
    info: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    source = path.read_text(encoding="utf-8")
    return [
        Block(path.name, source.count("\n", 0, m.start()) + 1, m.group(1).strip(), m.group(2))
        for m in FENCE.finditer(source)
    ]


def marked(info: str) -> list[Block]:
    return [b for doc in (CONFIG_DOC, README) for b in fenced_blocks(doc) if b.info == info]


AGENT_EXAMPLES = marked("toml agent")
HUB_EXAMPLES = marked("toml hub")


def error_examples(kind: str) -> list[tuple[Block, str]]:
    """Each ``toml {kind}-error`` block of configuration.md with the text block after it."""
    blocks = fenced_blocks(CONFIG_DOC)
    pairs = []
    for i, block in enumerate(blocks):
        if block.info != f"toml {kind}-error":
            continue
        expected = blocks[i + 1] if i + 1 < len(blocks) else None
        assert expected is not None, f"{block.where}: no ```text block follows"
        assert expected.info == "text", f"{block.where}: the next block is not ```text"
        pairs.append((block, expected.text.splitlines()[0]))
    return pairs


def make_referenced_files(text: str, base: Path) -> dict[str, Path]:
    """Create, under ``base``, the files an example's [mqtt] table names; return them."""
    mqtt = tomllib.loads(text).get("mqtt", {})
    made = {}
    for key in FILE_KEYS:
        value = mqtt.get(key)
        if value is None:
            continue
        assert not Path(value).expanduser().is_absolute(), (
            f"[mqtt] {key} = {value!r}: name files in examples with relative paths, so the "
            "test can create them (an absolute path would be created on this machine)"
        )
        path = base / value
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("secret\n" if key == "password_file" else "-----PEM-----\n")
        made[key] = path
    return made


# -- the examples load -------------------------------------------------------------------------


def test_the_configuration_doc_has_complete_examples() -> None:
    agent_docs = [b for b in AGENT_EXAMPLES if b.file == CONFIG_DOC.name]
    hub_docs = [b for b in HUB_EXAMPLES if b.file == CONFIG_DOC.name]
    assert len(agent_docs) >= 2, "a minimal and a complete agent config"
    assert len(hub_docs) >= 2, "a minimal and a complete hub config"
    assert error_examples("agent"), "an agent config error, with the message it prints"
    assert error_examples("hub"), "a hub config error, with the message it prints"


@pytest.mark.parametrize("block", AGENT_EXAMPLES, ids=lambda b: b.where)
def test_agent_example_loads(block: Block, tmp_path: Path) -> None:
    files = make_referenced_files(block.text, tmp_path)
    config = agent_config.parse_config(block.text, source=block.where, base=tmp_path)
    assert config.machines, f"{block.where}: a complete agent config reads at least one machine"
    for key, path in files.items():
        attr = "password" if key == "password_file" else key
        loaded = getattr(config.mqtt, attr)
        expected = "secret" if key == "password_file" else path.resolve()
        assert loaded == expected, f"{block.where}: {key} did not resolve beside the file"


@pytest.mark.parametrize("block", HUB_EXAMPLES, ids=lambda b: b.where)
def test_hub_example_loads(block: Block, tmp_path: Path) -> None:
    files = make_referenced_files(block.text, tmp_path)
    config = hub_config.parse_config(block.text, source=block.where, base_dir=tmp_path)
    for key, path in files.items():
        assert getattr(config.mqtt, key) == path, f"{block.where}: {key} did not resolve"
    if config.api.host not in ("127.0.0.1", "localhost", "::1"):
        assert config.api.tokens, f"{block.where}: an API open to the network needs tokens"


def test_every_agent_example_is_heard_by_a_hub_example(tmp_path: Path) -> None:
    hubs = []
    for block in HUB_EXAMPLES:
        make_referenced_files(block.text, tmp_path)
        hubs.append(hub_config.parse_config(block.text, base_dir=tmp_path).hub)
    for block in AGENT_EXAMPLES:
        make_referenced_files(block.text, tmp_path)
        agent = agent_config.parse_config(block.text, base=tmp_path).agent
        assert any(
            hub.root == agent.topic_root and (hub.sites is None or agent.site in hub.sites)
            for hub in hubs
        ), f"{block.where}: no hub example listens to site {agent.site!r} on {agent.topic_root!r}"


def test_complete_configs_are_marked_so_they_are_checked() -> None:
    for doc in (CONFIG_DOC, README):
        for block in fenced_blocks(doc):
            if block.info != "toml":
                continue
            tables = set(tomllib.loads(block.text))
            assert not tables & {"agent", "hub"}, (
                f"{block.where}: a complete config in a plain ```toml block is never checked; "
                "mark it ```toml agent or ```toml hub"
            )


# -- the documented error messages are what the programs print -----------------------------------


@pytest.mark.parametrize(
    ("block", "expected"), [pytest.param(b, e, id=b.where) for b, e in error_examples("agent")]
)
def test_agent_error_example_is_real(
    block: Block, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(block.text, encoding="utf-8")
    assert agent_app.main(["--config", str(path)]) == 2
    printed = capsys.readouterr().err.strip().replace(str(tmp_path), ETC)
    assert printed == expected


@pytest.mark.parametrize(
    ("block", "expected"), [pytest.param(b, e, id=b.where) for b, e in error_examples("hub")]
)
def test_hub_error_example_is_real(
    block: Block, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(block.text, encoding="utf-8")
    assert hub_service.main(["run", "--config", str(path)]) == hub_service.EXIT_CONFIG
    printed = capsys.readouterr().err.strip().replace(str(tmp_path), ETC)
    assert printed == expected


# -- the reference tables list exactly the keys the loaders take ---------------------------------

ROW_KEY = re.compile(r"^\| `([a-z_0-9]+)` \|", re.MULTILINE)


def documented_keys(part: str) -> dict[str, set[str]]:
    """``### `[table]` ...`` headings under the ``## {part}`` section, with their rows' keys."""
    text = CONFIG_DOC.read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.MULTILINE)
    section = next(s for s in sections if s.startswith(part))
    tables: dict[str, set[str]] = {}
    for chunk in re.split(r"^### ", section, flags=re.MULTILINE)[1:]:
        heading = re.match(r"`\[+([a-z_.]+)\]+`", chunk)
        if heading is not None:
            tables[heading.group(1)] = set(ROW_KEY.findall(chunk))
    return tables


def test_the_agent_tables_list_every_key() -> None:
    assert documented_keys("The agent") == {
        "agent": set(agent_config._AGENT_KEYS),
        "mqtt": set(agent_config._MQTT_KEYS),
        "machines": set(agent_config._MACHINE_KEYS),
    }


def test_the_hub_tables_list_every_key() -> None:
    documented = documented_keys("The hub")
    missing = set(hub_config._SECTIONS) - set(documented)
    assert not missing, f"hub.toml sections with no ### `[section]` table in the doc: {missing}"
    assert {name: documented[name] for name in ("hub", "mqtt", "api", "api.tokens")} == {
        "hub": set(hub_config._HUB_KEYS),
        "mqtt": set(hub_config._MQTT_KEYS),
        # [[api.tokens]] has its own table rather than a row under [api].
        "api": set(hub_config._API_KEYS) - {"tokens"},
        "api.tokens": set(hub_config._TOKEN_KEYS),
    }
