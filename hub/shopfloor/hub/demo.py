"""``shopfloor demo``: the whole shop on one computer.

A private MQTT broker (Mosquitto on a free port when it is installed, otherwise the
pure-Python amqtt with a warning), the hub on SQLite, three simulated GRBL machines (two CNC
routers and a laser in laser mode) on pseudo-terminals running jobs in a loop, and two
agents reading them over those pseudo-terminals exactly as they would read real ports.
Everything is configured through the same TOML files a real installation uses, written to
the demo's data folder so they can be read and copied.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from shopfloor.agent.app import AgentApp
from shopfloor.agent.config import load_config as load_agent_config
from shopfloor.hub.config import load_config as load_hub_config
from shopfloor.hub.errors import HubError
from shopfloor.hub.service import HubServer, build_server
from shopfloor.sim.grbl import GrblSimConfig, run_grbl_sim
from shopfloor.sim.haas.config import HaasSimConfig
from shopfloor.sim.haas.runner import run_haas_sim
from shopfloor.sim.kiln.config import KilnSimConfig
from shopfloor.sim.kiln.runner import run_kiln_sim
from shopfloor.sim.marlin.config import MarlinSimConfig
from shopfloor.sim.marlin.runner import run_marlin_sim

log = logging.getLogger("shopfloor.demo")

SITE: Final = "demo-shop"
DEFAULT_API_PORT: Final = 8470


@dataclass(frozen=True, slots=True)
class DemoMachine:
    """One simulated machine: how the agent's config reads it, and how it is simulated."""

    id: str
    name: str
    kind: str
    agent: str
    protocol: str = "grbl"
    laser: bool = False
    line_numbers: bool = False
    #: Lines for the machine's ``[machines.options]`` table in the agent's config.
    options: tuple[str, ...] = ()


MACHINES: Final = (
    DemoMachine("router-1", "Router 1", "cnc_router", agent="pi-wood"),
    DemoMachine("router-2", "Router 2", "cnc_router", agent="pi-wood", line_numbers=True),
    DemoMachine("laser", "Laser", "laser", agent="pi-laser", laser=True),
    DemoMachine(
        "mill",
        "Haas mill",
        "cnc_mill",
        agent="pi-metal",
        protocol="haas",
        options=("parts_required_variable = 500",),
    ),
    DemoMachine(
        "kiln",
        "Kiln",
        "kiln",
        agent="pi-ceramics",
        protocol="modbus_kiln",
        # At 600x a soak lasts seconds, so the set point trend is judged over one second.
        options=('profile = "cn7500"', 'schedule = "cone6-glaze"', "trend_window_s = 1"),
    ),
    DemoMachine("printer", "Printer", "printer_3d", agent="pi-laser", protocol="marlin"),
)


class DemoError(HubError):
    """The demo could not start one of its parts."""


def _free_port(preferred: int | None = None) -> int:
    candidates = [preferred] if preferred else []
    candidates.append(0)
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port or 0))
            except OSError:
                continue
            found: int = sock.getsockname()[1]
            return found
    raise DemoError("no free TCP port on 127.0.0.1")


async def _wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                raise DemoError(f"the broker did not start listening on port {port}") from None
            await asyncio.sleep(0.05)
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


@dataclass(frozen=True, slots=True)
class Broker:
    url: str
    kind: str  # "mosquitto" or "amqtt"

    @property
    def protocol(self) -> str:
        return "3.1.1" if self.kind == "amqtt" else "5"


@contextlib.asynccontextmanager
async def _mosquitto(exe: str, folder: Path) -> AsyncIterator[Broker]:
    port = _free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 100000\n"
    )
    proc = await asyncio.create_subprocess_exec(
        exe,
        "-c",
        str(conf),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        # Its own session: Ctrl-C in the terminal signals the whole foreground group, and
        # the broker must outlive the agents and the hub, which say goodbye through it.
        start_new_session=True,
    )
    try:
        await _wait_for_port(port)
        yield Broker(url=f"mqtt://127.0.0.1:{port}", kind="mosquitto")
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@contextlib.asynccontextmanager
async def _amqtt() -> AsyncIterator[Broker]:
    from amqtt.broker import Broker as AmqttBroker  # noqa: PLC0415 - only when no mosquitto

    port = _free_port()
    config: dict[str, Any] = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = AmqttBroker(config)
    await broker.start()
    try:
        yield Broker(url=f"mqtt://127.0.0.1:{port}", kind="amqtt")
    finally:
        await broker.shutdown()


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


@contextlib.asynccontextmanager
async def start_broker(choice: str, folder: Path, exe: str | None) -> AsyncIterator[Broker]:
    """A private broker for the demo: ``choice`` is auto, mosquitto or amqtt."""
    if choice == "mosquitto" and exe is None:
        raise DemoError("mosquitto is not installed: apt-get install mosquitto, or use amqtt")
    if exe is not None and choice != "amqtt":
        async with _mosquitto(exe, folder) as broker:
            yield broker
        return
    print(
        "warning: using the embedded amqtt broker (mosquitto is not installed). It is for "
        "trying things out only: about 10x slower than Mosquitto, MQTT 3.1.1 only.",
        file=sys.stderr,
    )
    async with _amqtt() as broker:
        yield broker


def write_configs(folder: Path, broker: Broker, api_port: int) -> tuple[Path, list[Path]]:
    """The hub's and each agent's TOML file, exactly as a real shop would write them."""
    (folder / "hub").mkdir(parents=True, exist_ok=True)
    hub_toml = folder / "hub" / "hub.toml"
    hub_toml.write_text(
        f'[hub]\nsite = "{SITE}"\ndata_dir = "."\nstale_after_s = 60\n\n'
        f'[mqtt]\nurl = "{broker.url}"\nprotocol = "{broker.protocol}"\n\n'
        f'[api]\nhost = "127.0.0.1"\nport = {api_port}\n'
    )
    agent_tomls = []
    for agent in sorted({m.agent for m in MACHINES}):
        agent_dir = folder / agent
        agent_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f'[agent]\nid = "{agent}"\nsite = "{SITE}"\ndata_dir = "."\n',
            f'[mqtt]\nurl = "{broker.url}"\nprotocol = "{broker.protocol}"\n',
        ]
        lines.extend(
            (
                f'[[machines]]\nid = "{machine.id}"\nname = "{machine.name}"\n'
                f'kind = "{machine.kind}"\nprotocol = "{machine.protocol}"\n'
                f'port = "pty:{_pty_path(folder, machine)}"\n'
                f"laser_mode = {'true' if machine.laser else 'false'}\n"
                "telemetry_interval_s = 2.0\n"
                + (
                    "[machines.options]\n" + "\n".join(machine.options) + "\n"
                    if machine.options
                    else ""
                )
            )
            for machine in MACHINES
            if machine.agent == agent
        )
        toml = agent_dir / "agent.toml"
        toml.write_text("\n".join(lines))
        agent_tomls.append(toml)
    return hub_toml, agent_tomls


def _pty_path(folder: Path, machine: DemoMachine) -> Path:
    return folder / "ports" / f"tty-{machine.id}"


def _simulate(
    machine: DemoMachine, path: Path, time_scale: float, seed: int
) -> Coroutine[Any, Any, None]:
    """The simulator for ``machine``, running jobs in a loop on the pseudo-terminal ``path``."""
    if machine.protocol == "haas":
        return run_haas_sim(HaasSimConfig(cycle_s=80.0 / time_scale, parts_required=10), path)
    if machine.protocol == "modbus_kiln":
        # 600x: a cone-6 glaze firing (about 13 h) takes a minute and a half.
        return run_kiln_sim(KilnSimConfig(time_scale=600.0, repeat_after_s=10.0), path)
    if machine.protocol == "marlin":
        return run_marlin_sim(
            MarlinSimConfig(
                file_name="bracket.gcode",
                print_s=600.0,
                auto_start=True,
                time_scale=time_scale * 2,
                seed=seed,
            ),
            path,
        )
    return run_grbl_sim(
        GrblSimConfig(
            laser=machine.laser,
            line_numbers=machine.line_numbers,
            time_scale=time_scale,
            demo_loop=True,
            seed=seed,
        ),
        path,
    )


class _QuietServer(HubServer):
    """The demo handles Ctrl-C for all its parts, so uvicorn must not take the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run_demo(
    folder: Path,
    *,
    api_port: int = DEFAULT_API_PORT,
    broker_choice: str = "auto",
    time_scale: float = 4.0,
    duration_s: float | None = None,
) -> None:
    """Run the demo until Ctrl-C / SIGTERM, or for ``duration_s`` seconds.

    ``folder`` must exist, with a ``ports`` subfolder (see :func:`prepare_folder`).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with start_broker(broker_choice, folder, find_mosquitto()) as broker:
            port = _free_port(api_port)
            hub_toml, agent_tomls = write_configs(folder, broker, port)
            server = build_server(load_hub_config(hub_toml))
            server.__class__ = _QuietServer
            server.config.access_log = False
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
                logging.getLogger(name).setLevel(logging.WARNING)
            agents = [AgentApp(load_agent_config(path)) for path in agent_tomls]
            async with asyncio.TaskGroup() as tg:
                sims = [
                    tg.create_task(
                        _simulate(m, _pty_path(folder, m), time_scale, i),
                        name=f"demo.sim:{m.id}",
                    )
                    for i, m in enumerate(MACHINES)
                ]
                hub_task = tg.create_task(server.serve(), name="demo.hub")
                while not server.started:
                    if hub_task.done():
                        raise DemoError(f"the hub did not start (is port {port} taken?)")
                    await asyncio.sleep(0.05)
                agent_tasks = [
                    tg.create_task(agent.run(), name=f"demo.agent:{i}")
                    for i, agent in enumerate(agents)
                ]
                _print_banner(port, broker, folder)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), duration_s)
                print("\nstopping the demo…", file=sys.stderr)
                for agent in agents:
                    agent.stop()
                await asyncio.wait(agent_tasks, timeout=10)
                server.should_exit = True
                await asyncio.wait([hub_task], timeout=10)
                for task in sims:
                    task.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def prepare_folder(folder: Path) -> Path:
    folder = folder.resolve()
    (folder / "ports").mkdir(parents=True, exist_ok=True)
    return folder


def _print_banner(port: int, broker: Broker, folder: Path) -> None:
    base = f"http://127.0.0.1:{port}"
    print(
        f"\nShopfloor demo is running: {len(MACHINES)} simulated machines, "
        f"{len({m.agent for m in MACHINES})} agents, 1 hub.\n"
        f"  Wall page  {base}/wall\n"
        f"  API        {base}/api/v1/machines   (interactive docs: {base}/docs)\n"
        f"  MQTT       {broker.url}   ({broker.kind}, private to the demo)\n"
        f"  Files      {folder}   (configs, database, pseudo-terminals)\n"
        "Press Ctrl-C to stop.\n",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="shopfloor demo",
        description="Run the whole shop on this computer with simulated machines.",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_API_PORT, help="HTTP port (a free one if taken)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("var/demo"),
        help="where configs, the database and the pseudo-terminals go (default: var/demo)",
    )
    parser.add_argument("--broker", choices=("auto", "mosquitto", "amqtt"), default="auto")
    parser.add_argument(
        "--time-scale", type=float, default=4.0, help="how much faster than real time jobs run"
    )
    parser.add_argument("--duration", type=float, default=None, help="stop after this many s")
    args = parser.parse_args(list(argv or []))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    logging.getLogger("gmqtt").setLevel(logging.ERROR)  # its reconnect chatter is ours to log
    folder = prepare_folder(args.data_dir)
    try:
        asyncio.run(
            run_demo(
                folder,
                api_port=args.port,
                broker_choice=args.broker,
                time_scale=args.time_scale,
                duration_s=args.duration,
            )
        )
    except HubError as exc:
        print(f"shopfloor demo: {exc}", file=sys.stderr)
        return 1
    return 0
