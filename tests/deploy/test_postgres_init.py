"""deploy/postgres/roles.sql on the real PostgreSQL (127.0.0.1:5432), with throwaway names:
the hub's role owns the database and creates (partitioned) tables; Grafana's role reads
them, including ones made later, and can change nothing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROLES_SQL = REPO / "deploy" / "postgres" / "roles.sql"
INIT_SH = REPO / "deploy" / "postgres" / "initdb" / "10-shopfloor.sh"

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(shutil.which("psql") is None, reason="needs psql"),
]


def psql(
    *args: str, user: str = "postgres", db: str = "postgres", password: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if password is not None:
        env["PGPASSWORD"] = password
    base = ["psql", "-h", "127.0.0.1", "-p", "5432", "-U", user, "-d", db, "--no-psqlrc", "-X"]
    return subprocess.run(
        [*base, "-v", "ON_ERROR_STOP=1", "-At", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


@pytest.fixture
def names(tmp_path: Path) -> Iterator[dict[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    n = {
        "database": f"sf_deploy_{suffix}",
        "hub_role": f"sf_hub_{suffix}",
        "reader_role": f"sf_reader_{suffix}",
        "hub_password": f"hub-{suffix}",
        "reader_password": f"reader-{suffix}",
    }
    if psql("-c", "select 1").returncode != 0:
        pytest.fail("the PostgreSQL on 127.0.0.1:5432 does not answer to user postgres")
    try:
        yield n
    finally:
        psql("-c", f'DROP DATABASE IF EXISTS "{n["database"]}" WITH (FORCE)')
        for role in (n["hub_role"], n["reader_role"]):
            psql("-c", f'DROP ROLE IF EXISTS "{role}"')


def test_the_init_script_passes_every_variable_roles_sql_reads() -> None:
    script = INIT_SH.read_text()
    given = set(re.findall(r"-v (\w+)=", script))
    read = set(re.findall(r":['\"]?(\w+)['\"]?", ROLES_SQL.read_text())) - {"ON_ERROR_STOP"}
    set_inside = set(re.findall(r"^\\set (\w+)", ROLES_SQL.read_text(), re.MULTILINE))
    read = {v for v in read if not v.isdigit()} - set_inside
    assert read
    assert read <= given, read - given
    assert "/etc/shopfloor/postgres/roles.sql" in script
    assert "/run/secrets/hub_db_password" in script
    assert "/run/secrets/grafana_db_password" in script
    assert re.search(r"-v database=shopfloor\b", script)
    assert re.search(r"-v reader_role=grafana_reader\b", script)


def test_roles_and_database_as_grafana_needs_them(names: dict[str, str], tmp_path: Path) -> None:
    hub_file, reader_file = tmp_path / "hub_pw", tmp_path / "reader_pw"
    hub_file.write_text(names["hub_password"] + "\n")
    reader_file.write_text(names["reader_password"] + "\n")
    created = psql(
        *("-v", f"database={names['database']}"),
        *("-v", f"hub_role={names['hub_role']}"),
        *("-v", f"reader_role={names['reader_role']}"),
        *("-v", f"hub_password_file={hub_file}"),
        *("-v", f"reader_password_file={reader_file}"),
        *("-f", str(ROLES_SQL)),
    )
    assert created.returncode == 0, created.stderr

    db = names["database"]
    hub = {"user": names["hub_role"], "db": db, "password": names["hub_password"]}
    reader = {"user": names["reader_role"], "db": db, "password": names["reader_password"]}

    # the passwords are the ones from the files
    check = psql(
        "-c",
        "select rolname from pg_authid where rolname in "
        f"('{names['hub_role']}', '{names['reader_role']}') and rolpassword is not null "
        "order by 1",
    )
    assert check.stdout.split() == sorted([names["hub_role"], names["reader_role"]])

    # the hub creates a partitioned table and a partition, as its store does
    made = psql(
        "-c",
        "create table events (ts bigint not null, machine text) partition by range (ts);"
        "create table events_p0 partition of events for values from (0) to (1000);"
        "insert into events values (1, 'router');"
        "create schema later; create table later.jobs (id int); insert into later.jobs values (7);",
        **hub,
    )
    assert made.returncode == 0, made.stderr

    # Grafana reads them all, including what was created after the grants
    rows = psql("-c", "select machine from events; select id from later.jobs;", **reader)
    assert rows.returncode == 0, rows.stderr
    assert rows.stdout.split() == ["router", "7"]
    assert psql("-c", "show default_transaction_read_only", **reader).stdout.strip() == "on"
    assert psql("-c", "show jit", **reader).stdout.strip() == "off"

    # and can change nothing
    for statement in (
        "insert into events values (2, 'x')",
        "delete from events",
        "create table mine (x int)",
        "begin read write; insert into events values (3, 'x'); commit",
    ):
        result = psql("-c", statement, **reader)
        assert result.returncode != 0, statement
        assert "permission denied" in result.stderr or "read-only" in result.stderr, result.stderr

    # nobody else (PUBLIC) may connect to the database
    acl = psql("-c", f"select datacl::text from pg_database where datname = '{db}'").stdout
    entries = acl.strip().strip("{}").split(",")
    public = [e for e in entries if e.startswith("=")]
    assert all("c" not in e.split("/")[0] for e in public), acl
    assert any(e.startswith(f"{names['reader_role']}=c/") for e in entries), acl
