"""The one place that talks to the metrics server, through influxdb-client.

influxdb-client's write API is used in SYNCHRONOUS mode only: one blocking HTTP POST to
``/api/v2/write`` per call, errors raised, no background threads. Its default batching
mode buffers points in memory on a thread pool and loses them unless it is closed
(docs/operations.md, "Metrics mirror"); the hub's store is the buffer instead. The async
client would need aiohttp, which the hub does not depend on, so each blocking call runs in
a worker thread (``asyncio.to_thread``), bounded by ``timeout_s``.

Errors are translated here into :class:`~shopfloor.hub.errors.MirrorError`: HTTP 400, 413
and 422 are *permanent* (the server refused these lines; sending them again cannot help);
everything else (connection refused, timeouts, 401/403/404 from a wrong token or URL, 429,
5xx) is *transient* and the batch is retried until it goes through.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Final

import urllib3.exceptions
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS, WriteApi
from influxdb_client.domain.write_precision import WritePrecision

from shopfloor.hub.errors import MirrorError
from shopfloor.hub.mirror.settings import MirrorSection

PERMANENT_STATUSES: Final = frozenset({400, 413, 422})


class LineWriter:
    """Owns one InfluxDBClient. ``async with LineWriter(settings) as w: await w.write(body)``."""

    def __init__(self, settings: MirrorSection) -> None:
        self.settings = settings
        self._client: InfluxDBClient | None = None
        self._api: WriteApi | None = None

    async def __aenter__(self) -> LineWriter:
        s = self.settings
        # The library annotates its optional token as plain ``str``; None is what it means
        # by "not set" (no Authorization header).
        options: dict[str, Any] = {"url": s.url, "token": s.token, "org": s.org}
        self._client = InfluxDBClient(**options, timeout=int(s.timeout_s * 1000))
        self._api = self._client.write_api(write_options=SYNCHRONOUS)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        api, client = self._api, self._client
        self._api = self._client = None
        if api is not None:
            api.close()  # type: ignore[no-untyped-call]  # synchronous: nothing buffered
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]

    async def write(self, body: bytes) -> None:
        """POST ``body`` (line protocol, ms precision); return once the server accepted it."""
        if self._api is None:
            raise MirrorError("the writer is not open")
        if not body:
            return
        await asyncio.to_thread(self._write_blocking, self._api, body)

    def _write_blocking(self, api: WriteApi, body: bytes) -> None:
        s = self.settings
        request: dict[str, Any] = {
            "bucket": s.bucket,
            "org": s.org,
            "record": body,
            "write_precision": WritePrecision.MS,
        }
        try:
            api.write(**request)
        except InfluxDBError as exc:
            status = getattr(exc, "status", None)
            if status is None and exc.response is not None:
                status = getattr(exc.response, "status", None)
            raise MirrorError(
                f"{s.target} refused the write: HTTP {status}: {exc.message}",
                status=status,
                permanent=status in PERMANENT_STATUSES,
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise MirrorError(f"{s.target} cannot be reached: {exc}") from exc
