"""Container health checks for the Shopfloor images (standard library only).

    python healthcheck.py hub     # GET /api/v1/health answers "ok": store and MQTT fine
    python healthcheck.py agent [DATA_DIR]   # the agent wrote its outbox (in DATA_DIR,
                                             # default /var/lib/shopfloor) within 2 minutes

Exit code 0 means healthy, 1 unhealthy (Docker's HEALTHCHECK convention); the reason is
printed, and `docker inspect` shows it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

#: The agent stamps a state snapshot of every machine at least every 15 s, and every
#: record goes to its outbox first, even while the broker is away.
AGENT_MAX_SILENCE_S = 120.0


def hub(args: list[str]) -> str | None:
    del args
    port = os.environ.get("SHOPFLOOR_API_PORT", "").strip() or "8470"
    url = f"http://127.0.0.1:{port}/api/v1/health"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:  # 503 when degraded: the body says why
        body = json.load(exc)
    if body.get("status") != "ok":
        return f"hub health is {body.get('status')!r}: {body.get('store')=} {body.get('mqtt')=}"
    return None


def agent(args: list[str]) -> str | None:
    data = Path(args[0] if args else "/var/lib/shopfloor")
    files = list(data.glob("agent.sqlite3*"))
    if not files:
        return f"no outbox in {data} yet"
    age = time.time() - max(f.stat().st_mtime for f in files)
    if age > AGENT_MAX_SILENCE_S:
        return f"the outbox in {data} was last written {age:.0f} s ago"
    return None


def main(argv: list[str]) -> int:
    checks = {"hub": hub, "agent": agent}
    if not argv or argv[0] not in checks:
        print("usage: healthcheck.py hub | agent [DATA_DIR]", file=sys.stderr)
        return 2
    try:
        problem = checks[argv[0]](argv[1:])
    except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy", with its reason
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        print(problem)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
