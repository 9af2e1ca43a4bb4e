from __future__ import annotations

from pathlib import Path

import pytest

from shopfloor.agent.config import (
    AgentConfig,
    MqttProtocol,
    example_config,
    load_config,
    parse_config,
)
from shopfloor.agent.errors import ConfigError

MINIMAL = """
[agent]
id = "pi-1"
site = "shop"

[[machines]]
id = "router-1"
protocol = "grbl"
port = "/dev/ttyUSB0"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def error_for(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)  # every message names the file
    assert info.value.path == str(path)
    return info.value


def test_example_config_is_valid(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, example_config(data_dir="data")))
    assert isinstance(config, AgentConfig)
    assert config.agent.id == "pi-1"
    assert config.agent.data_dir == (tmp_path / "data").resolve()
    (machine,) = config.machines
    assert machine.protocol == "grbl"
    assert machine.kind == "cnc_router"
    assert machine.name == "Big router"
    assert config.path == tmp_path / "agent.toml"


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.agent.topic_root == "shopfloor/v1"
    assert str(config.agent.data_dir) == "/var/lib/shopfloor"
    mqtt = config.mqtt
    assert (mqtt.host, mqtt.port, mqtt.tls) == ("localhost", 1883, False)
    assert mqtt.client_id == "pi-1"  # the agent id by default
    assert mqtt.keepalive_s == 30
    assert mqtt.protocol is MqttProtocol.V5
    assert not mqtt.tls_insecure
    (machine,) = config.machines
    assert machine.name == "router-1"
    assert machine.baudrate == 115200
    assert machine.poll_interval_s == 0.25
    assert machine.silence_timeout_s == 5.0
    assert machine.laser_mode is False
    assert machine.kind == "other"


def test_laser_mode_defaults_on_for_lasers(tmp_path: Path) -> None:
    text = MINIMAL.replace('protocol = "grbl"', 'protocol = "grbl"\nkind = "laser"')
    assert load_config(write(tmp_path, text)).machines[0].laser_mode is True


def test_typo_key_suggests_closest(tmp_path: Path) -> None:
    err = error_for(tmp_path, MINIMAL.replace('protocol = "grbl"', 'protocl = "grbl"'))
    assert err.key == "machines[0].protocl"
    assert "machines[0].protocl: unknown key" in str(err)
    assert "Did you mean 'protocol'?" in str(err)


def test_typo_top_level_table(tmp_path: Path) -> None:
    err = error_for(tmp_path, MINIMAL + '\n[mqqt]\nurl = "mqtt://x"\n')
    assert err.key == "mqqt"
    assert "Did you mean 'mqtt'?" in str(err)


def test_wrong_type_names_key_and_fix(tmp_path: Path) -> None:
    err = error_for(tmp_path, MINIMAL + 'baudrate = "fast"\n')
    assert err.key == "machines[0].baudrate"
    assert "must be an integer" in str(err)
    assert "baudrate = 30" in str(err)  # shows how to write it


def test_bool_is_not_a_number(tmp_path: Path) -> None:
    err = error_for(tmp_path, MINIMAL + "poll_interval_s = true\n")
    assert err.key == "machines[0].poll_interval_s"


def test_second_machine_is_indexed(tmp_path: Path) -> None:
    text = MINIMAL + '\n[[machines]]\nid = "laser-1"\nprotocol = "grbI"\nport = "/dev/ttyUSB1"\n'
    err = error_for(tmp_path, text)
    assert err.key == "machines[1].protocol"
    assert "Did you mean 'grbl'?" in str(err)
    assert "Use one of: grbl" in str(err)


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("/nonexistent/agent.toml")
    assert "/nonexistent/agent.toml" in str(info.value)
    assert "not found" in str(info.value)
    assert "--config" in str(info.value)  # the fix


def test_bad_machine_id(tmp_path: Path) -> None:
    err = error_for(tmp_path, MINIMAL.replace('id = "router-1"', 'id = "Router 1"'))
    assert err.key == "machines[0].id"
    assert "'Router 1' is not a valid id" in str(err)
    assert "lower-case letters" in str(err)


def test_missing_required_key(tmp_path: Path) -> None:
    err = error_for(tmp_path, MINIMAL.replace('port = "/dev/ttyUSB0"', ""))
    assert err.key == "machines[0].port"
    assert "is missing" in str(err)


def test_duplicate_machine_id_and_port(tmp_path: Path) -> None:
    dup = MINIMAL + '\n[[machines]]\nid = "router-1"\nprotocol = "grbl"\nport = "/dev/ttyUSB1"\n'
    assert error_for(tmp_path, dup).key == "machines[1].id"
    dup_port = MINIMAL + '\n[[machines]]\nid = "r2"\nprotocol = "grbl"\nport = "/dev/ttyUSB0"\n'
    assert error_for(tmp_path, dup_port).key == "machines[1].port"


def test_poll_interval_respects_grbl_limit(tmp_path: Path) -> None:
    err = error_for(tmp_path, MINIMAL + "poll_interval_s = 0.1\n")
    assert err.key == "machines[0].poll_interval_s"
    assert "from 0.2" in str(err)


def test_silence_must_exceed_poll(tmp_path: Path) -> None:
    err = error_for(tmp_path, MINIMAL + "poll_interval_s = 1.0\nsilence_timeout_s = 0.5\n")
    assert err.key == "machines[0].silence_timeout_s"


@pytest.mark.parametrize("port", ["COM3", "tcp://host", "pty:relative", "tcp://:80"])
def test_bad_ports(tmp_path: Path, port: str) -> None:
    err = error_for(tmp_path, MINIMAL.replace("/dev/ttyUSB0", port))
    assert err.key == "machines[0].port"


def test_good_ports(tmp_path: Path) -> None:
    for port in ("tcp://10.0.0.5:5051", "pty:/tmp/ttyGRBL", "/dev/serial/by-id/x"):
        config = load_config(write(tmp_path, MINIMAL.replace("/dev/ttyUSB0", port)))
        assert config.machines[0].port == port


def test_mqtt_url_forms(tmp_path: Path) -> None:
    tls = load_config(write(tmp_path, MINIMAL + '[mqtt]\nurl = "mqtts://broker.local"\n'))
    assert (tls.mqtt.host, tls.mqtt.port, tls.mqtt.tls) == ("broker.local", 8883, True)
    for url in ("http://x", "mqtt://user:pw@host", "mqtt://", "mqtt://h:99999"):
        err = error_for(tmp_path, MINIMAL + f'[mqtt]\nurl = "{url}"\n')
        assert err.key == "mqtt.url"


def test_tls_options_need_mqtts(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("x")
    err = error_for(tmp_path, MINIMAL + '[mqtt]\nurl = "mqtt://h"\nca_file = "ca.crt"\n')
    assert err.key == "mqtt.ca_file"
    assert "mqtts://" in str(err)


def test_tls_file_must_exist(tmp_path: Path) -> None:
    err = error_for(tmp_path, MINIMAL + '[mqtt]\nurl = "mqtts://h"\nca_file = "nope.crt"\n')
    assert err.key == "mqtt.ca_file"
    assert "does not exist" in str(err)


def test_password_file_and_secret_not_in_repr(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    config = load_config(
        write(tmp_path, MINIMAL + '[mqtt]\nusername = "pi-1"\npassword_file = "pw"\n')
    )
    assert config.mqtt.password == "s3cret"
    assert "s3cret" not in repr(config)
    err = error_for(tmp_path, MINIMAL + '[mqtt]\npassword = "a"\npassword_file = "pw"\n')
    assert err.key == "mqtt.password"


def test_bad_toml_syntax(tmp_path: Path) -> None:
    err = error_for(tmp_path, "[agent\nid = 1\n")
    assert "not valid TOML" in str(err)
    assert "line 1" in str(err)


def test_missing_agent_table(tmp_path: Path) -> None:
    err = error_for(tmp_path, '[mqtt]\nurl = "mqtt://h"\n')
    assert err.key == "agent"
    assert "Add a [agent] table" in str(err)


def test_parse_config_without_file() -> None:
    config = parse_config(MINIMAL)
    assert config.path is None
    with pytest.raises(ConfigError, match=r"<config>: agent\.topic_root"):
        parse_config(MINIMAL.replace('site = "shop"', 'site = "shop"\ntopic_root = "a/#"'))
