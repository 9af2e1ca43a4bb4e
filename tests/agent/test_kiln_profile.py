"""Register maps load from TOML with errors that name the file, key and fix; kiln options."""

from __future__ import annotations

from pathlib import Path

import pytest

from shopfloor.agent.adapters.kiln_profile import (
    bundled_profiles,
    load_profile,
    parse_profile,
)
from shopfloor.agent.config import parse_config
from shopfloor.agent.errors import ConfigError
from shopfloor.agent.protocols.modbus_rtu import Function
from shopfloor.agent.sessions.kiln import BUNDLED_SCHEDULES, ENTRY, KilnOptions
from shopfloor.sim.kiln.schedules import SCHEDULES


def test_bundled_profiles_load() -> None:
    assert {"cn7500", "omron-e5cc", "watlow-pm"} <= set(bundled_profiles())
    for name in bundled_profiles():
        profile = load_profile(name)
        assert "pv" in profile.fields
        assert profile.blocks()


def test_cn7500_blocks_merge_neighbours_and_read_the_run_coil() -> None:
    profile = load_profile("cn7500")
    blocks = {(b.function, b.address, b.count) for b in profile.blocks()}
    assert (Function.READ_HOLDING_REGISTERS, 0x1000, 2) in blocks
    assert (Function.READ_HOLDING_REGISTERS, 0x1032, 4) in blocks  # 0x1033 read across the gap
    assert (Function.READ_COILS, 0x0814, 1) in blocks
    assert profile.fields["pv"].scale == 0.1
    assert 0x8003 in profile.fields["pv"].sensor_break


@pytest.mark.parametrize(
    ("text", "key", "fix"),
    [
        ('name = "x"\n[fields.sp]\naddress = 1\n', "fields.pv", "[fields.pv]"),
        ('name = "x"\n[fields.pv]\naddress = 1\ntype = "bool"\n', "fields.pv.type", "bool"),
        ('name = "x"\n[fields.pv]\nadress = 1\n', "fields.pv.adress", "address"),
        ('name = "x"\n[fields.pv]\naddress = 70000\n', "fields.pv.address", "0 to 65535"),
        ('name = "x"\n[fields.pv]\naddress = 1\nfunction = "hold"\n', "function", "holding"),
        ('name = "x"\nparity = "X"\n[fields.pv]\naddress = 1\n', "parity", "E, N, O"),
        ("[fields.pv]\naddress = 1\n", "name", "Add it"),
        ('name = "x"\n[fields.flux]\naddress = 1\n', "fields.flux", "Valid keys"),
        ("name = ", "", "TOML"),
    ],
)
def test_profile_errors_name_file_key_and_fix(text: str, key: str, fix: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_profile(text, source="my-map.toml")
    message = str(info.value)
    assert message.startswith("my-map.toml")
    assert key in message
    assert fix in message


def test_profile_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\n[fields.pv]\naddress = 0x10\ntype = "uint16"\n')
    assert load_profile(str(path)).fields["pv"].address == 0x10
    with pytest.raises(ConfigError, match="cn7500"):
        load_profile(str(tmp_path / "missing.toml"))


CONFIG = """
[agent]
id = "pi-1"
site = "shop"
[[machines]]
id = "kiln-1"
kind = "kiln"
protocol = "modbus_kiln"
port = "/dev/ttyUSB0"
"""


def test_options_defaults_and_bundled_schedule() -> None:
    config = parse_config(CONFIG + '[machines.options]\nschedule = "cone6-glaze"\n')
    machine = config.machines[0]
    assert machine.baudrate == ENTRY.default_baudrate == 9600
    options = machine.options
    assert isinstance(options, KilnOptions)
    assert options.profile.name == "cn7500"
    assert options.device_id == 1
    assert options.parity == "N"
    assert options.schedule is BUNDLED_SCHEDULES["cone6-glaze"]


def test_options_custom_schedule() -> None:
    text = CONFIG + (
        '[machines.options]\nprofile = "omron-e5cc"\ndevice_id = 5\n'
        '[machines.options.schedule]\nname = "slow-bisque"\n'
        "segments = [{ramp_c_per_h = 80, target_c = 600}, "
        "{ramp_c_per_h = 150, target_c = 1000, hold_min = 10}]\n"
    )
    options = parse_config(text).machines[0].options
    assert isinstance(options, KilnOptions)
    assert options.parity == "E"  # the profile's default
    assert options.schedule is not None
    assert options.schedule.segments[1].hold_min == 10
    assert round(options.schedule.scheduled_s(20.0)) == round(
        580 / 80 * 3600 + 400 / 150 * 3600 + 600
    )


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ('profile = "nope"', "machines[0].options.profile"),
        ("device_id = 0", "machines[0].options.device_id"),
        ('schedule = "cone10"', "machines[0].options.schedule"),
        ("devce_id = 2", "machines[0].options.devce_id"),
        (
            '[machines.options.schedule]\nname = "x"\nsegments = [{target_c = 600}]',
            "machines[0].options.schedule.segments[0].ramp_c_per_h",
        ),
    ],
)
def test_option_errors(options: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(CONFIG + "[machines.options]\n" + options + "\n", source="agent.toml")
    assert info.value.key == key
    assert str(info.value).startswith("agent.toml")


def test_agent_and_simulator_bundle_the_same_schedules() -> None:
    for name, schedule in BUNDLED_SCHEDULES.items():
        sim = SCHEDULES[name]
        assert [(s.rate_c_per_h, s.target_c, s.hold_min) for s in schedule.segments] == [
            (s.rate_c_per_h, s.target_c, s.hold_min) for s in sim.segments
        ]
        assert schedule.scheduled_s(20.0) == pytest.approx(sim.duration_s(20.0))
