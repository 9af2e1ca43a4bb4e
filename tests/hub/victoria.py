"""A real VictoriaMetrics for the mirror tests (Debian package ``victoria-metrics``, installed
by ``scripts/setup``): started on a free port with its own storage directory, stopped by PID.

``-retentionPeriod=100y`` keeps test timestamps from any year; ``-search.latencyOffset=1s``
and ``/internal/force_flush`` make written points readable at once (reference note
storage-grafana.md §1). Without ``-dedup.minScrapeInterval`` VictoriaMetrics keeps every
sample it receives, so a point written twice shows up twice: the tests count on that.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

EXE = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    values: list[float]
    timestamps: list[int]

    @property
    def name(self) -> str:
        return self.labels["__name__"]


@dataclass
class Victoria:
    """One victoria-metrics process; ``start()`` again after ``stop()`` reuses the storage."""

    storage: Path
    port: int = field(default_factory=_free_port)
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __post_init__(self) -> None:
        if not Path(EXE).exists():
            pytest.fail(f"{EXE} is missing: run ./scripts/setup (Debian package victoria-metrics)")
        self.storage.mkdir(parents=True, exist_ok=True)

    async def start(self) -> None:
        with (self.storage.parent / f"vm-{self.port}.log").open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                EXE,
                f"-storageDataPath={self.storage}",
                f"-httpListenAddr=127.0.0.1:{self.port}",
                "-retentionPeriod=100y",
                "-search.latencyOffset=1s",
                stdout=log,
                stderr=log,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    if (await client.get(f"{self.url}/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if self.process.returncode is not None or loop.time() > deadline:
                    pytest.fail(f"victoria-metrics did not come up on {self.url}")
                await asyncio.sleep(0.05)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(sig)
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def export(self, match: str = '{__name__=~".+"}') -> list[Series]:
        """Every sample of the matching series (after a force flush), from any time."""
        async with httpx.AsyncClient(base_url=self.url, timeout=20) as client:
            (await client.get("/internal/force_flush")).raise_for_status()
            response = await client.get("/api/v1/export", params={"match[]": match, "start": "0"})
        response.raise_for_status()
        out = []
        for line in response.text.splitlines():
            if line.strip():
                obj: dict[str, Any] = json.loads(line)
                out.append(Series(obj["metric"], obj["values"], obj["timestamps"]))
        return out

    async def samples_per_series(self, match: str = '{__name__=~".+"}') -> Counter[str]:
        """Number of samples per series, keyed by name and sorted labels."""
        counts: Counter[str] = Counter()
        for s in await self.export(match):
            key = s.name + json.dumps(dict(sorted(s.labels.items())))
            counts[key] += len(s.values)
        return counts
