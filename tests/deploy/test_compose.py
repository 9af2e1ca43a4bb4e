"""docker-compose.yml, the Dockerfiles and the systemd unit, checked without Docker: every
service is healthy-checked and restarted, every file it mounts or builds from exists, the
hub gets only variables it reads, and its config parses with the hub's own parser."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from shopfloor.agent.config import load_config as load_agent_config
from shopfloor.hub.config import parse_config
from shopfloor.hub.env import variable_names

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
SECRETS_DIR = "./deploy/secrets/"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_the_stack_has_every_part(compose: dict[str, Any]) -> None:
    names = set(services(compose))
    assert {"mosquitto", "postgres", "hub", "grafana", "victoriametrics"} <= names
    agents = {n for n in names if n.startswith("agent-")}
    assert len(agents) >= 3
    assert services(compose)["victoriametrics"]["profiles"] == ["metrics"]


def test_every_service_has_a_healthcheck_and_a_restart_policy(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert service.get("restart") in ("always", "unless-stopped"), name


def test_start_order_waits_for_healthy_services(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    for name, service in all_services.items():
        for dep, condition in service.get("depends_on", {}).items():
            assert dep in all_services, f"{name} depends on unknown {dep}"
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dep}"
            assert "profiles" not in all_services[dep], f"{name} needs optional {dep}"
    hub = all_services["hub"]["depends_on"]
    assert set(hub) == {"mosquitto", "postgres"}
    for name, service in all_services.items():
        if name.startswith("agent-"):
            assert "mosquitto" in service["depends_on"]
            assert "hub" not in service["depends_on"]  # agents buffer until the hub is up


def test_mounts_builds_and_secrets_point_at_files_that_exist(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes", {}))
    used_volumes = set()
    for name, service in services(compose).items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in named, f"{name} uses undeclared volume {source}"
                used_volumes.add(source)
        build = service.get("build")
        if build:
            assert (REPO / build["context"]).is_dir()
            assert (REPO / build["context"] / build["dockerfile"]).is_file(), name
        for secret in service.get("secrets", []):
            source = secret["source"] if isinstance(secret, dict) else secret
            assert source in compose["secrets"], f"{name} uses undeclared secret {source}"
    assert used_volumes == named, "declared volumes nobody uses"
    for secret in compose["secrets"].values():
        assert secret["file"].startswith(SECRETS_DIR)  # made by deploy/make-credentials


def test_host_ports_do_not_collide(compose: dict[str, Any]) -> None:
    seen: dict[str, str] = {}
    for name, service in services(compose).items():
        for port in service.get("ports", []):
            host = re.sub(r"\$\{[A-Z_]+:-(\d+)\}", r"\1", str(port)).rsplit(":", 1)[0]
            assert host not in seen, f"{name} and {seen.get(host)} both publish {host}"
            seen[host] = name
    assert set(seen) == {"1883", "8470", "3000", "8428"}


def test_the_hub_and_agents_get_only_variables_the_hub_reads(compose: dict[str, Any]) -> None:
    known = variable_names()
    for name, service in services(compose).items():
        if name != "hub" and not name.startswith("agent-"):
            continue
        for key in _environment(service):
            assert key.startswith("SHOPFLOOR_"), f"{name}: {key}"
            assert key in known, f"{name}: {key} is not in hub/shopfloor/hub/env.py"
    hub_env = _environment(services(compose)["hub"])
    assert {"SHOPFLOOR_DATABASE", "SHOPFLOOR_MQTT_PASSWORD_FILE"} <= set(hub_env)


def test_every_interpolated_variable_is_in_env_example(compose: dict[str, Any]) -> None:
    example = (REPO / "deploy" / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z_]+)=", example, re.MULTILINE))
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_]+)", COMPOSE.read_text()))
    assert used
    assert used <= documented, used - documented


def test_grafana_gets_what_its_provisioning_reads(compose: dict[str, Any]) -> None:
    grafana = services(compose)["grafana"]
    env = _environment(grafana)
    assert "SHOPFLOOR_GRAFANA_DB_PASSWORD" in env
    mounts = {m.split(":")[1]: m.split(":")[0] for m in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./dashboards/provisioning"
    assert mounts["/var/lib/grafana/dashboards/shopfloor"] == "./dashboards/json"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith("/var/lib/grafana/dashboards/shopfloor/")
    assert (REPO / "dashboards/json" / Path(home).name).is_file()
    datasources = list((REPO / "dashboards/provisioning").rglob("*.y*ml"))
    texts = "".join(p.read_text() for p in datasources)
    if "shopfloor-pg" in texts:  # written by the dashboards work, maybe not yet
        assert "SHOPFLOOR_GRAFANA_DB_PASSWORD" in texts
        assert "grafana_reader" in texts


def test_the_hub_config_parses_with_the_environment_compose_gives(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    hub = services(compose)["hub"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in hub["volumes"]}
    config_file = REPO / mounts["/etc/shopfloor/hub.toml"]
    env = _environment(hub)
    assert env["SHOPFLOOR_HUB_CONFIG"] == "/etc/shopfloor/hub.toml"
    # the secrets exist inside the container; here, stand-ins
    for key in ("SHOPFLOOR_MQTT_PASSWORD_FILE", "SHOPFLOOR_DATABASE_PASSWORD_FILE"):
        stand_in = tmp_path / Path(env[key]).name
        stand_in.write_text("secret\n")
        env[key] = str(stand_in)
    env = {k: v for k, v in env.items() if not v.startswith("${")}
    config = parse_config(config_file.read_text(), source=str(config_file), environ=env)
    assert config.mqtt.host == "mosquitto"
    assert config.mqtt.username == "hub"
    assert config.mqtt.password == "secret"
    assert config.api.host == "0.0.0.0"
    assert config.api.port == 8470
    assert "8470" in str(hub["ports"])
    database_url = getattr(config.hub, "database_url", None)
    if database_url is not None:  # the PostgreSQL backend's config
        assert (database_url.host, database_url.user) == ("postgres", "shopfloor")


def _agent_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services(compose).items() if n.startswith("agent-")}


def test_agent_configs_parse_and_match_their_credentials(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    ids = set()
    for name, service in _agent_services(compose).items():
        mount = next(m for m in service["volumes"] if m.endswith(":/etc/shopfloor/agent.toml:ro"))
        text = (REPO / mount.split(":")[0]).read_text()
        password = tmp_path / f"{name}-password"
        password.write_text("secret\n")
        assert '"/run/secrets/mqtt-password"' in text
        config_file = tmp_path / f"{name}.toml"
        config_file.write_text(text.replace("/run/secrets/mqtt-password", str(password)))
        config = load_agent_config(config_file)
        agent_id = config.agent.id
        ids.add(agent_id)
        assert config.mqtt.username == agent_id  # the ACL's %u
        assert (config.mqtt.host, config.mqtt.port) == ("mosquitto", 1883)
        assert str(config.agent.data_dir) == "/var/lib/shopfloor"
        (secret,) = service["secrets"]
        assert secret["target"] == "mqtt-password"
        assert compose["secrets"][secret["source"]]["file"] == f"{SECRETS_DIR}mqtt_{agent_id}"
        # every machine's pty is made by a simulator in the same container
        command = " ".join(service["command"])
        for machine in config.machines:
            assert machine.port.startswith("pty:")
            assert f"--pty {machine.port[4:]} " in command, (name, machine.id)
    assert len(ids) == len(_agent_services(compose))


def test_agent_containers_start_their_simulators(compose: dict[str, Any], tmp_path: Path) -> None:
    """Run every ``shopfloor sim ...`` of the agent commands (ptys moved to tmp_path): each
    parses its arguments and publishes its pseudo-terminal."""
    exe = shutil.which("shopfloor", path=str(REPO / ".venv/bin")) or "shopfloor"
    started: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for service in _agent_services(compose).values():
            script = service["command"][-1]
            for part in script.split("&"):
                words = shlex.split(part)
                if words[:2] != ["shopfloor", "sim"]:
                    continue
                i = words.index("--pty")
                pty = tmp_path / Path(words[i + 1]).name
                words[i + 1] = str(pty)
                proc = subprocess.Popen(
                    [exe, *words[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
                started.append((proc, pty))
        assert len(started) >= 4
        deadline = 20.0
        for proc, pty in started:
            while not pty.exists() and deadline > 0 and proc.poll() is None:
                time.sleep(0.1)
                deadline -= 0.1
            err = b"" if proc.poll() is None else (proc.stderr.read() if proc.stderr else b"")
            assert pty.exists(), f"{proc.args!r} made no pty: {err.decode()}"
    finally:
        for proc, _ in started:
            proc.terminate()
        for proc, _ in started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()


# --- Dockerfiles --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Dockerfile.hub", "Dockerfile.agent"])
def test_dockerfiles_copy_files_that_exist_and_run_as_a_user(name: str) -> None:
    text = (REPO / "deploy" / name).read_text()
    lines = re.sub(r"\\\n", " ", text).splitlines()
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms
    assert all(f.startswith("python:3.11-slim-bookworm") for f in froms)
    ignore = (REPO / "deploy" / f"{name}.dockerignore").read_text().splitlines()
    allowed = [p[1:].rstrip("/") for p in ignore if p.startswith("!")]
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            *sources, _ = line.split()[1:]
            for source in sources:
                assert (REPO / source).exists(), f"{name}: COPY {source} is missing"
                assert any(source == a or source.startswith(a + "/") for a in allowed), (
                    f"{name}: {source} is left out of the build context by the .dockerignore"
                )
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users
    assert users[-1] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK ") for line in lines)
    assert "deploy/secrets" not in "".join(allowed)


def test_the_agent_image_installs_no_hub_extra() -> None:
    text = (REPO / "deploy" / "Dockerfile.agent").read_text()
    assert "pip install" in text
    assert "[hub]" not in text
    assert "dialout" in text
    assert "[hub]" in (REPO / "deploy" / "Dockerfile.hub").read_text()


# --- systemd ------------------------------------------------------------------------------

UNIT = REPO / "deploy" / "systemd" / "shopfloor-agent.service"


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_keeps_serial_ports_reachable() -> None:
    s = _unit_settings()
    assert s["Restart"] == ["always"]
    assert s["SupplementaryGroups"] == ["dialout"]
    assert s["StateDirectory"] == ["shopfloor"]
    assert s["User"] == ["shopfloor"]
    assert "PrivateDevices" not in s  # it would hide /dev/ttyUSB*
    if s.get("DevicePolicy") == ["closed"]:
        allowed = " ".join(s["DeviceAllow"])
        for group in ("char-ttyUSB", "char-ttyACM"):
            assert f"{group} rw" in allowed
    assert s["Environment"] == ["SHOPFLOOR_LOG_FORMAT=json"]
    assert s["StandardError"] == ["journal"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_unit_verifies(tmp_path: Path) -> None:
    # ExecStart must exist for verify: point it at this checkout's command
    exe = REPO / ".venv" / "bin" / "shopfloor"
    text = UNIT.read_text().replace("/opt/shopfloor/bin/shopfloor", str(exe))
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # unknown keys are only warnings
