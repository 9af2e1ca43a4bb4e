"""The optional metrics mirror: stored telemetry and state codes copied to InfluxDB or
VictoriaMetrics as line protocol (docs/operations.md, "Metrics mirror").

- :mod:`.line_protocol` — line protocol encoding and escaping, no I/O;
- :mod:`.record_points` — stored records to points (field names, state codes), no I/O;
- :mod:`.settings` — the ``[mirror]`` config section;
- :mod:`.writer` — the only module that talks to the server (influxdb-client, synchronous);
- :mod:`.worker` — follows the store's record feed, retries, commits its cursor;
- :mod:`.health` and :mod:`.backoff` — figures and retry delays.

Nothing is imported here, so that the config can read ``[mirror]`` without pulling in the
worker (and influxdb-client).
"""
