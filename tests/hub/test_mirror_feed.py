"""The store as the mirror's outbox (the record feed and its cursors on SQLite), and the
``[mirror]`` config section."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from shopfloor.contract import Envelope, RecordKind
from shopfloor.hub.config import HubConfig, parse_config
from shopfloor.hub.errors import ConfigError
from shopfloor.hub.mirror.settings import MirrorSection
from shopfloor.hub.store import Incoming, SqliteStore, WriteBatch

EnvFactory = Callable[..., Envelope]
IncFactory = Callable[..., Incoming]


async def test_the_feed_returns_records_in_insertion_order_once_each(
    tmp_path: Path, env: EnvFactory, incoming: IncFactory
) -> None:
    async with SqliteStore(tmp_path / "hub.sqlite3") as store:
        assert await store.records_after(0, 10) == []
        assert await store.feed_head() == 0
        first = [
            incoming(env(RecordKind.TELEMETRY, seq=2, ts=2_000)),
            incoming(env(RecordKind.STATE, seq=1, ts=1_000)),
            incoming(env(RecordKind.EVENT, agent="pi-2", stream="x", seq=7, ts=500)),
        ]
        await store.write(WriteBatch(records=first))
        # A redelivered record is a duplicate: it gets no new place in the feed.
        await store.write(
            WriteBatch(records=[first[0], incoming(env(RecordKind.META, seq=3, ts=3_000))])
        )
        feed = await store.records_after(0, 100)
        assert [(r.agent, r.seq, r.kind) for r in feed] == [
            ("pi-1", 2, "telemetry"),
            ("pi-1", 1, "state"),
            ("pi-2", 7, "event"),
            ("pi-1", 3, "meta"),
        ]
        cursors = [r.cursor for r in feed]
        assert cursors == sorted(cursors)
        assert len(set(cursors)) == 4
        assert feed[0].body == {"samples": [{"ts": 2_000, "values": {"load": 1.5}}]}
        assert feed[0].ts == 2_000
        assert feed[0].machine == "cnc-1"
        assert feed[0].stream == "s1"
        assert await store.feed_head() == cursors[-1]
        # Paging: limit and cursor.
        assert [r.seq for r in await store.records_after(0, 2)] == [2, 1]
        assert [r.seq for r in await store.records_after(cursors[1], 2)] == [7, 3]
        assert await store.records_after(cursors[-1], 10) == []
        with pytest.raises(ValueError, match="limit"):
            await store.records_after(0, 0)


async def test_feed_cursors_are_named_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "hub.sqlite3"
    async with SqliteStore(path) as store:
        assert await store.feed_cursor("metrics-mirror") == 0
        await store.set_feed_cursor("metrics-mirror", 41)
        await store.set_feed_cursor("metrics-mirror", 42)
        await store.set_feed_cursor("other", 7)
        with pytest.raises(ValueError, match="negative"):
            await store.set_feed_cursor("other", -1)
    async with SqliteStore(path) as store:
        assert await store.feed_cursor("metrics-mirror") == 42
        assert await store.feed_cursor("other") == 7
        # Set as given, also backwards (to send everything again on purpose).
        await store.set_feed_cursor("metrics-mirror", 0)
        assert await store.feed_cursor("metrics-mirror") == 0


# --- [mirror] in the hub config ------------------------------------------------------------

BASE = """
[hub]
site = "shop1"
"""


def parse(extra: str, base_dir: Path) -> HubConfig:
    return parse_config(BASE + extra, source="hub.toml", base_dir=base_dir)


def test_no_mirror_section_means_no_mirror(tmp_path: Path) -> None:
    assert parse("", tmp_path).mirror is None


def test_a_full_mirror_section(tmp_path: Path) -> None:
    (tmp_path / "influx.token").write_text("s3cret-token\n")
    config = parse(
        """
[mirror]
url = "https://influx.example:8086/"
org = "shop"
bucket = "machines"
token_file = "influx.token"
measurement_prefix = "shopfloor_"
state_name_field = false
batch_size = 200
poll_s = 0.5
timeout_s = 5
retry_initial_s = 2
retry_max_s = 120
""",
        tmp_path,
    )
    assert config.mirror == MirrorSection(
        url="https://influx.example:8086",
        bucket="machines",
        org="shop",
        token="s3cret-token",
        measurement_prefix="shopfloor_",
        state_name_field=False,
        batch_size=200,
        poll_s=0.5,
        timeout_s=5.0,
        retry_initial_s=2.0,
        retry_max_s=120.0,
    )
    assert "s3cret" not in repr(config.mirror)
    assert parse('[mirror]\nurl = "http://vm:8428"\n', tmp_path).mirror == MirrorSection(
        url="http://vm:8428"
    )


def test_the_target_hides_credentials() -> None:
    assert MirrorSection(url="http://user:pw@vm:8428/x").target == "http://vm:8428/x"


@pytest.mark.parametrize(
    ("section", "key", "fix"),
    [
        ("[mirror]\nbucket = 'b'\n", "mirror.url", "http://127.0.0.1:8428"),
        ("[mirror]\nurl = 'vm:8428'\n", "mirror.url", "http://127.0.0.1:8428"),
        ("[mirror]\nurl = 'mqtt://vm:1883'\n", "mirror.url", "http://"),
        ("[mirror]\nurl = 'http://vm:99999'\n", "mirror.url", "http://"),
        ("[mirror]\nurl = 'http://vm:8428/?db=x'\n", "mirror.url", "org and bucket"),
        ("[mirror]\nurl = 'http://vm'\nbuckt = 'b'\n", "mirror.buckt", "did you mean 'bucket'"),
        (
            "[mirror]\nurl = 'http://vm'\ntoken = 't'\ntoken_file = 'f'\n",
            "mirror.token_file",
            "only one",
        ),
        ("[mirror]\nurl = 'http://vm'\ntoken_file = 'missing'\n", "mirror.token_file", "token"),
        ("[mirror]\nurl = 'http://vm'\ntoken_file = 'empty'\n", "mirror.token_file", "token"),
        ("[mirror]\nurl = 'http://vm'\ntoken = ''\n", "mirror.token", "quote"),
        (
            "[mirror]\nurl = 'http://vm'\nmeasurement_prefix = 'shop floor'\n",
            "mirror.measurement_prefix",
            "shopfloor_",
        ),
        ("[mirror]\nurl = 'http://vm'\nbatch_size = 0\n", "mirror.batch_size", "in range"),
        ("[mirror]\nurl = 'http://vm'\nbatch_size = 'many'\n", "mirror.batch_size", "500"),
        (
            "[mirror]\nurl = 'http://vm'\nretry_initial_s = 10\nretry_max_s = 5\n",
            "mirror.retry_max_s",
            "at least retry_initial_s",
        ),
        (
            "[mirror]\nurl = 'http://vm'\nstate_name_field = 'no'\n",
            "mirror.state_name_field",
            "true or false",
        ),
    ],
)
def test_bad_mirror_config_names_the_key_and_the_fix(
    tmp_path: Path, section: str, key: str, fix: str
) -> None:
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError) as info:
        parse(section, tmp_path)
    assert info.value.key == key
    assert info.value.path == "hub.toml"
    assert fix in str(info.value)


def test_mirror_must_be_a_section(tmp_path: Path) -> None:
    text = 'mirror = "http://vm:8428"\n' + BASE
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="hub.toml", base_dir=tmp_path)
    assert info.value.key == "mirror"
    assert "[mirror]" in str(info.value)
