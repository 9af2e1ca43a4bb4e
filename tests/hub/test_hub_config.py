"""Configuration: valid files load; every mistake names the file, the key and the fix."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from shopfloor.hub.config import Scope, load_config, parse_config
from shopfloor.hub.errors import ConfigError

GOOD = """
[hub]
site = "shop1"
sites = "+"
data_dir = "var"
stale_after_s = 45

[mqtt]
url = "mqtt://broker.local:1884"
username = "hub"
password = "s3cret"

[api]
port = 9000

[[api.tokens]]
name = "wall"
sha256 = "{digest}"
scopes = ["read"]
"""


def test_a_good_file_loads_with_defaults(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"tok").hexdigest()
    file = tmp_path / "hub.toml"
    file.write_text(GOOD.format(digest=digest))
    config = load_config(file)
    assert config.hub.sites is None
    assert config.hub.database == tmp_path / "var" / "hub.sqlite3"
    assert config.hub.stale_after_s == 45
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.tls) == ("broker.local", 1884, False)
    assert config.mqtt.client_id == "hub-shop1"
    assert config.api.port == 9000
    [token] = config.api.tokens
    assert token.allows(Scope.READ)
    assert not token.allows(Scope.WRITE)
    assert "s3cret" not in repr(config)
    assert digest not in repr(config)


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        (
            '[hub]\nsite = "shop1"\nstale_after = 3\n',
            "hub.stale_after",
            "did you mean 'stale_after_s'",
        ),
        ('[hub]\nsite = "Shop 1"\n', "hub.site", "not valid"),
        ("[hub]\n", "hub.site", "is required"),
        ('[hub]\nsite = "s"\n[mqtt]\nurl = "http://x"\n', "mqtt.url", "not an MQTT URL"),
        ('[hub]\nsite = "s"\nstale_after_s = 0\n', "hub.stale_after_s", "outside"),
        ("[hbu]\n", "hbu", "did you mean 'hub'"),
        (
            '[hub]\nsite = "s"\n[[api.tokens]]\nname = "a"\nsha256 = "tok"\n',
            "api.tokens[0].sha256",
            "not the token itself",
        ),
        (
            '[hub]\nsite = "s"\n[[api.tokens]]\nname = "a"\nsha256 = "'
            + "a" * 64
            + '"\nscopes = ["raed"]\n',
            "api.tokens[0].scopes",
            "did you mean 'read'",
        ),
    ],
)
def test_errors_name_file_key_and_fix(text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="/etc/shopfloor/hub.toml")
    err = info.value
    assert err.path == "/etc/shopfloor/hub.toml"
    assert err.key == key
    assert fragment in str(err)
    assert str(err).startswith(f"/etc/shopfloor/hub.toml: {key}:")


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[hub\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
