"""``[hub] database`` as a PostgreSQL URL: parsing, the password file, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from shopfloor.hub.config import parse_config
from shopfloor.hub.database_url import PostgresUrl
from shopfloor.hub.errors import ConfigError
from shopfloor.hub.store import SqliteStore
from shopfloor.hub.store.factory import make_store
from shopfloor.hub.store.postgres import PostgresStore


def hub(tmp_path: Path, lines: str) -> str:
    return f'[hub]\nsite = "shop1"\n{lines}\n'


def parse(tmp_path: Path, lines: str) -> PostgresUrl | None:
    config = parse_config(hub(tmp_path, lines), source="hub.toml", base_dir=tmp_path)
    return config.hub.database_url


def error(tmp_path: Path, lines: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(hub(tmp_path, lines), source="hub.toml", base_dir=tmp_path)
    return caught.value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "postgresql://hub@db.local/shopfloor",
            PostgresUrl("db.local", 5432, "hub", "shopfloor"),
        ),
        (
            "postgres://hub:p%40ss%3Aword@10.0.0.5:6543/shop%2Dfloor?sslmode=require",
            PostgresUrl("10.0.0.5", 6543, "hub", "shop-floor", "p@ss:word", "require"),
        ),
        ("postgresql://hub@[::1]:5433/db", PostgresUrl("::1", 5433, "hub", "db")),
    ],
)
def test_urls_select_postgresql(tmp_path: Path, text: str, expected: PostgresUrl) -> None:
    url = parse(tmp_path, f'database = "{text}"')
    assert url == expected
    assert url is not None
    assert url.password == expected.password  # compare=True, repr=False


def test_a_path_stays_sqlite_and_the_factory_follows(tmp_path: Path) -> None:
    config = parse_config(hub(tmp_path, 'database = "x.sqlite3"'), base_dir=tmp_path)
    assert config.hub.database_url is None
    assert config.hub.database == tmp_path / "data" / "x.sqlite3"
    assert isinstance(make_store(config.hub), SqliteStore)
    text = 'database = "postgresql://hub@db/shop"\ndatabase_pool = 7'
    config = parse_config(hub(tmp_path, text), base_dir=tmp_path)
    store = make_store(config.hub)
    assert isinstance(store, PostgresStore)
    assert store.pool_size == 7


@pytest.mark.parametrize(
    ("text", "problem", "fix"),
    [
        ("postgresql://hub@db", "names no database", "end the URL with /DBNAME"),
        ("postgresql://db.local/shop", "names no user", "write the user before an @"),
        ("postgresql:///shop", "names no host", "write the server's host"),
        ("postgresql://hub@db:99999/shop", "is not a valid URL", "use e.g. postgresql://"),
        ("postgresql://hub@db/shop?pool=3", "unknown URL parameter 'pool'", "?sslmode="),
        ("postgresql://hub@db/shop?sslmode=on", "sslmode='on' is not known", "verify-full"),
        ("postgresql://hub@db/a/b", "names no database", "end the URL with /DBNAME"),
    ],
)
def test_a_malformed_url_names_the_key_and_the_fix(
    tmp_path: Path, text: str, problem: str, fix: str
) -> None:
    exc = error(tmp_path, f'database = "{text}"')
    assert exc.key == "hub.database"
    assert problem in exc.problem
    assert exc.fix is not None
    assert fix in exc.fix


def test_the_password_never_shows_in_errors_or_repr(tmp_path: Path) -> None:
    exc = error(tmp_path, 'database = "postgresql://hub:s3cr3t@db:99999/shop"')
    assert "s3cr3t" not in str(exc)
    url = parse(tmp_path, 'database = "postgresql://hub:s3cr3t@db/shop"')
    assert url is not None
    assert "s3cr3t" not in repr(url)
    assert "s3cr3t" not in url.display
    assert url.display == "postgresql://hub@db:5432/shop"


def test_the_password_can_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "pg.secret").write_text("correct horse\n")
    url = parse(
        tmp_path,
        'database = "postgresql://hub@db/shop"\ndatabase_password_file = "pg.secret"',
    )
    assert url is not None
    assert url.password == "correct horse"
    exc = error(
        tmp_path,
        'database = "postgresql://hub:x@db/shop"\ndatabase_password_file = "pg.secret"',
    )
    assert (exc.key, exc.problem) == (
        "hub.database_password_file",
        "the database URL holds a password too",
    )
    exc = error(tmp_path, 'database = "postgresql://hub@db/shop"\ndatabase_password_file = "nope"')
    assert exc.key == "hub.database_password_file"
    assert "cannot be read" in exc.problem
    (tmp_path / "empty").write_text("\n")
    exc = error(tmp_path, 'database = "postgresql://hub@db/shop"\ndatabase_password_file = "empty"')
    assert "is empty" in exc.problem


@pytest.mark.parametrize("key", ["database_pool = 3", 'database_password_file = "f"'])
def test_postgresql_only_keys_need_a_url(tmp_path: Path, key: str) -> None:
    exc = error(tmp_path, f'database = "hub.sqlite3"\n{key}')
    assert exc.problem == "applies only to PostgreSQL, but database is an SQLite file"
    assert exc.fix is not None
    assert "postgresql://" in exc.fix


def test_the_pool_size_is_bounded(tmp_path: Path) -> None:
    exc = error(tmp_path, 'database = "postgresql://hub@db/shop"\ndatabase_pool = 0')
    assert exc.key == "hub.database_pool"
    assert "outside 1..100" in exc.problem
