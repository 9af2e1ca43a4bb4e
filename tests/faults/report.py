"""Run the fault scenarios and print one table: produced, stored, duplicates, lost, recovery.

    .venv/bin/python tests/faults/report.py                  # the CI subset
    SHOPFLOOR_FAULTS_FULL=1 .venv/bin/python tests/faults/report.py   # all, long faults
    .venv/bin/python tests/faults/report.py network-cut hub-kill --keep

Each scenario runs in its own temp folder (configs, logs, databases, the simulators'
truth), kept with ``--keep`` and always when the scenario found a problem. ``--parallel N``
runs N scenarios at once (each has its own broker, hub, agents and simulators on their own
ports); ``--out-dir DIR`` writes ``NAME.json`` (or ``NAME.error``) there as each one ends,
which is how the pytest suite reads them; ``--json FILE`` writes every figure at the end.
The exit status is 1 if any scenario lost or doubled a record, or its states differ from
the truth in a way no known hub bug explains.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faultlib import kill_all
from scenarios import FULL, SCENARIOS, Scenario, run, selected


def _die(signum: int, frame: object) -> None:
    """SIGTERM or Ctrl-C: end every process we started (by PID), then exit at once."""
    del frame
    kill_all()
    os._exit(128 + signum)


def code_version() -> str:
    repo = Path(__file__).resolve().parents[2]
    git = ["git", "--no-optional-locks", "-C", str(repo)]
    try:
        head = subprocess.run(
            [*git, "log", "-1", "--format=%h"],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (f" + {len(dirty)} modified tracked files" if dirty else "")


def failed(result: dict[str, Any]) -> bool:
    return bool(result["problems"] or result["state_problems"])


def table(results: list[dict[str, Any]]) -> str:
    """The Markdown table of tests/faults/README.md."""
    lines = [
        "| scenario | produced | stored | duplicates | lost | time to recover, s "
        "| states off truth, s | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        off = sum(s["mismatched_s"] for s in r["states"])
        notes = []
        skipped = sum(b - a + 1 for s in r["streams"] for a, b in s["skipped"])
        if skipped:
            notes.append(f"{skipped} seqs skipped by the kill, declared lost (never used)")
        left = sum(s["left_in_outbox"] for s in r["streams"])
        if left:
            notes.append(f"{left} still in the outbox at the stop")
        extra = r["extra"]
        if "rejected" in extra:
            notes.append(f"{extra['rejected']} of {extra['hostile']} malformed rejected")
        blind = sum(s["blind_s"] for s in r["states"])
        if blind:
            offline = sum(s["blind_offline_s"] for s in r["states"])
            notes.append(f"OFFLINE {offline:.1f} of {blind:.1f} s not observable")
        for bug, seconds in r["known_hub_bugs"].items():
            notes.append(f"hub bug {bug}: {seconds:.1f} s")
        notes.extend(r["notes"])
        if r["problems"]:
            notes.append("PROBLEMS: " + "; ".join(r["problems"]))
        recover = "n/a" if r["recover_s"] is None else f"{r['recover_s']:.1f}"
        lines.append(
            f"| {r['scenario']} | {r['produced']} | {r['stored']} | {r['duplicates']} "
            f"| {r['lost']} | {recover} | {off:.1f} | {'; '.join(notes)} |"
        )
    return "\n".join(lines)


def run_one(scenario: Scenario, base: Path, out_dir: Path | None) -> dict[str, Any] | None:
    folder = base / scenario.name
    try:
        result = run(scenario, folder).to_json()
    except Exception:  # noqa: BLE001 - one scenario's failure is reported; the others go on
        text = traceback.format_exc()
        if out_dir is not None:
            (out_dir / f"{scenario.name}.error").write_text(text + f"\nfolder: {folder}\n")
        print(f"{scenario.name}: FAILED TO RUN (folder {folder})\n{text}", flush=True)
        return None
    if out_dir is not None:
        tmp = out_dir / f".{scenario.name}.json"
        tmp.write_text(json.dumps(result, indent=1, default=str))
        tmp.replace(out_dir / f"{scenario.name}.json")
    problems = result["problems"] + result["state_problems"]
    print(
        f"{scenario.name}: {result['duration_s']:.0f} s, produced {result['produced']},"
        f" stored {result['stored']}, lost {result['lost']}, duplicates {result['duplicates']},"
        f" recover {result['recover_s']} s" + (f"\n  PROBLEMS: {problems}" if problems else ""),
        flush=True,
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", help=f"default: the selected ones of {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--parallel", type=int, default=1, help="scenarios at once (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep every temp folder")
    parser.add_argument("--out-dir", type=Path, help="NAME.json per scenario as it ends")
    parser.add_argument("--json", type=Path, help="every figure of every scenario, at the end")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _die)
    signal.signal(signal.SIGINT, _die)
    chosen = [SCENARIOS[n] for n in args.names] if args.names else selected()
    base = Path(tempfile.mkdtemp(prefix="shopfloor-faults-"))
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    print(
        f"# fault suite: {time.strftime('%Y-%m-%d %H:%M:%S %Z')},"
        f" {'full' if FULL else 'CI subset'}, {len(chosen)} scenarios, {args.parallel} at a time,"
        f" {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f},"
        f" Python {platform.python_version()}, code {code_version()}",
        flush=True,
    )
    with ThreadPoolExecutor(max(1, args.parallel), thread_name_prefix="scenario") as pool:
        done = list(pool.map(lambda s: run_one(s, base, args.out_dir), chosen))
    results = [r for r in done if r is not None]
    bad = len(results) < len(chosen) or any(failed(r) for r in results)
    if not args.keep:  # keep the folders of scenarios that failed or did not run
        for r in results:
            if not failed(r):
                shutil.rmtree(r["folder"], ignore_errors=True)
        with contextlib.suppress(OSError):
            base.rmdir()  # only if empty
    if base.exists():
        print(f"kept {base}: {', '.join(sorted(p.name for p in base.iterdir()))}")
    print()
    print(table(results))
    print(f"\n{len(results)} of {len(chosen)} scenarios ran, in {time.time() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
