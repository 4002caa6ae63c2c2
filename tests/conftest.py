"""Shared test fixtures."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator

import pytest

from localinfra.azurite import Azurite, running_azurite
from localinfra.postgres import scratch_database
from shared.config import DEFAULT_DATABASE_URL
from shared.db import Database, migrate

# =========================================================================================
# PostgreSQL
#
# Tests never use an existing database: the session creates ``blobseal_test_<random>`` on
# the server at DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres),
# migrates it once, and drops it at the end. ``pg_db`` hands each test a fresh ``Database``
# on it with every table but ``schema_migrations`` truncated. ``pg_empty_database_url`` is
# a database of its own, never migrated (for migration tests).
# =========================================================================================

PG_SERVER_URL = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def pg_scratch_database() -> contextlib.AbstractContextManager[str]:
    """A throwaway database on the server at DATABASE_URL (dropped on exit, even with sessions)."""
    return scratch_database(PG_SERVER_URL)


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    with pg_scratch_database() as url:
        asyncio.run(migrate(url))
        yield url


@pytest.fixture(scope="module")
def module_database_url() -> Iterator[str]:
    """A migrated database of one test module's own (for tests that run the app on it)."""
    with pg_scratch_database() as url:
        asyncio.run(migrate(url))
        yield url


@pytest.fixture
def pg_empty_database_url() -> Iterator[str]:
    with pg_scratch_database() as url:
        yield url


@pytest.fixture
async def pg_db(pg_database_url: str) -> AsyncIterator[Database]:
    database = Database(pg_database_url, pool_max=4)
    async with database.connection() as conn:
        tables = await conn.fetch(
            "SELECT quote_ident(tablename) AS t FROM pg_tables "
            "WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
        )
        if tables:
            await conn.execute(f"TRUNCATE {', '.join(r['t'] for r in tables)} RESTART IDENTITY CASCADE")
    yield database
    await database.close()


# ============================================================================ end PostgreSQL


# =========================================================================================
# Azurite
#
# One real Azurite per test session (from node_modules, free loopback ports, data in a
# temporary folder). Tests isolate themselves with containers of their own.
# =========================================================================================


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with running_azurite(tmp_path_factory.mktemp("azurite")) as instance:
        yield instance


# ============================================================================== end Azurite
