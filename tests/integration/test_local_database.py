"""Which PostgreSQL ``make dev`` and ``make test`` use: the configured one, the local one, or an embedded one."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import asyncpg
import pytest

from localinfra.postgres import DatabaseProblem, database, with_database
from shared.db import MIGRATIONS, migrate

pytestmark = pytest.mark.postgres


def dead_url() -> str:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        return f"postgresql://postgres@127.0.0.1:{probe.getsockname()[1]}/postgres"


async def answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


def test_with_nothing_set_and_nothing_answering_an_embedded_server_starts_and_stops(tmp_path: Path) -> None:
    with database(None, tmp_path / "pgdata", default=dead_url()) as url:
        assert "host=" in url and str(tmp_path) not in url.split("?")[0]  # a unix socket, no TCP port
        applied = asyncio.run(migrate(with_database(url, "postgres")))
        assert applied == [m.version for m in MIGRATIONS]
    assert not asyncio.run(answers(url))  # stopped with the command that started it
    with database(None, tmp_path / "pgdata", default=dead_url()) as again:  # data kept in the folder
        assert asyncio.run(migrate(again)) == []


def test_a_local_server_on_the_default_address_is_used(pg_server_url: str, tmp_path: Path) -> None:
    with database(None, tmp_path / "unused", default=pg_server_url) as url:
        assert url == pg_server_url
    assert not (tmp_path / "unused").exists()


def test_a_set_url_always_wins_and_one_that_does_not_answer_fails_within_seconds(
        pg_server_url: str, tmp_path: Path) -> None:
    with database(pg_server_url, tmp_path / "unused", default=dead_url()) as url:
        assert url == pg_server_url
    started = time.monotonic()
    with pytest.raises(DatabaseProblem, match="does not answer"), database(dead_url(), tmp_path / "unused"):
        pass
    assert time.monotonic() - started < 6 and not (tmp_path / "unused").exists()  # never an embedded one instead


def test_a_wrong_database_or_user_says_so(pg_server_url: str, tmp_path: Path) -> None:
    with pytest.raises(DatabaseProblem, match="database does not exist"), \
            database(with_database(pg_server_url, "no_such_db_here"), tmp_path):
        pass
    wrong_user = pg_server_url.replace("postgresql://postgres", "postgresql://nobody_here", 1)
    assert wrong_user != pg_server_url  # (an embedded server's URL names its user the same way)
    with pytest.raises(DatabaseProblem, match="refuses that user"), database(wrong_user, tmp_path):
        pass
