"""The hub's environment variables: each overrides its key, bad values name the variable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from shopfloor.hub.config import load_config, parse_config
from shopfloor.hub.env import HUB_ENVIRONMENT, apply_env, config_path, log_format
from shopfloor.hub.errors import ConfigError

BASE = """
[hub]
site = "shop1"
data_dir = "data"

[mqtt]
url = "mqtt://127.0.0.1:1883"
username = "hub"
password = "from-the-file"

[api]
host = "127.0.0.1"
port = 8470
"""


def test_every_variable_is_named_and_maps_to_a_known_key() -> None:
    names = [v.name for v in HUB_ENVIRONMENT]
    assert len(names) == len(set(names))
    assert all(n.startswith("SHOPFLOOR_") and n.isupper() for n in names)
    keys = {v.key for v in HUB_ENVIRONMENT if v.key is not None}
    assert keys >= {"hub.database", "mqtt.url", "mqtt.password_file", "api.port"}
    assert all(v.meaning and v.example for v in HUB_ENVIRONMENT)


def test_variables_override_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    file = tmp_path / "hub.toml"
    file.write_text(BASE)
    environ = {
        "SHOPFLOOR_MQTT_URL": "mqtts://broker.example:8883",
        "SHOPFLOOR_MQTT_USERNAME": "hub-2",
        "SHOPFLOOR_MQTT_PASSWORD_FILE": str(secret),
        "SHOPFLOOR_API_HOST": "0.0.0.0",
        "SHOPFLOOR_API_PORT": "9000",
        "SHOPFLOOR_DATABASE": "other.sqlite3",
        "SHOPFLOOR_LOG_FORMAT": "json",
        "SHOPFLOOR_SOMETHING_ELSE": "ignored",
    }
    config = load_config(file, environ=environ)
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.tls) == ("broker.example", 8883, True)
    assert config.mqtt.username == "hub-2"
    assert config.mqtt.password == "s3cret"  # the file's password is replaced
    assert (config.api.host, config.api.port) == ("0.0.0.0", 9000)
    assert str(config.hub.database).endswith("data/other.sqlite3")
    # without an environment, the file alone counts
    plain = load_config(file)
    assert (plain.mqtt.password, plain.api.port) == ("from-the-file", 8470)


def test_empty_variables_change_nothing() -> None:
    raw = {"api": {"port": 8470}}
    assert apply_env(raw, {"SHOPFLOOR_API_PORT": "  "}) == raw


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("SHOPFLOOR_API_PORT", "eighty", "is not a port number"),
        ("SHOPFLOOR_API_PORT", "70000", "outside 0..65535"),
        ("SHOPFLOOR_MQTT_URL", "http://broker:1883", "is not an MQTT URL"),
        ("SHOPFLOOR_MQTT_URL", "mqtt://hub:pw@broker:1883", "credentials in the URL"),
        ("SHOPFLOOR_MQTT_PASSWORD_FILE", "/nonexistent/secret", "does not exist"),
        ("SHOPFLOOR_LOG_FORMAT", "xml", "is not a log format"),
    ],
)
def test_bad_values_name_the_variable_and_the_fix(name: str, value: str, words: str) -> None:
    def load() -> object:
        if name == "SHOPFLOOR_LOG_FORMAT":
            return log_format({name: value})
        return parse_config(BASE, environ={name: value})

    with pytest.raises(ConfigError) as caught:
        load()
    message = str(caught.value)
    assert message.startswith(f"environment: {name}: "), message
    assert words in message
    assert "(fix: " in message


def test_password_file_in_the_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-a-file\n")
    text = BASE.replace('password = "from-the-file"', 'password_file = "pw"')
    assert parse_config(text, base_dir=tmp_path).mqtt.password == "from-a-file"
    both = BASE.replace('password = "from-the-file"', 'password = "x"\npassword_file = "pw"')
    with pytest.raises(ConfigError, match=r"mqtt\.password: both password and password_file"):
        parse_config(both, base_dir=tmp_path)
    missing = BASE.replace('password = "from-the-file"', 'password_file = "nope"')
    with pytest.raises(ConfigError, match=r"mqtt\.password_file: .*nope cannot be read"):
        parse_config(missing, base_dir=tmp_path)


def test_config_path_comes_from_the_argument_or_the_variable() -> None:
    assert config_path(Path("a.toml"), {"SHOPFLOOR_HUB_CONFIG": "b.toml"}) == Path("a.toml")
    assert config_path(None, {"SHOPFLOOR_HUB_CONFIG": "b.toml"}) == Path("b.toml")
    with pytest.raises(ConfigError, match="SHOPFLOOR_HUB_CONFIG"):
        config_path(None, {})


def test_the_command_reports_a_bad_variable_and_exits_2(tmp_path: Path) -> None:
    import subprocess

    file = tmp_path / "hub.toml"
    file.write_text(BASE)
    result = subprocess.run(
        [sys.executable, "-m", "shopfloor", "hub", "run"],
        env={"SHOPFLOOR_HUB_CONFIG": str(file), "SHOPFLOOR_API_PORT": "x", "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "environment: SHOPFLOOR_API_PORT: 'x' is not a port number" in result.stderr
