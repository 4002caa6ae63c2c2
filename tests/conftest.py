"""Shared test fixtures."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from localinfra.azurite import Azurite, running_azurite
from localinfra.postgres import DatabaseProblem, database, scratch_database
from shared.bootstrap import Services
from shared.db import Database, migrate
from shared.vault.base import KeyVault
from shared.vault.kek import KeyWrapper
from shared.vault.signer import Signer
from tests.integration.service_fixtures import open_stack, stack_settings
from tests.support import KeyVaultServer, TlsMaterial, make_tls_material
from tests.support.keyvault_server import serving
from tests.support.pg_proxy import PgProxy
from tests.support.stack import StackFactory

# =========================================================================================
# PostgreSQL
#
# Tests never use an existing database: the session creates ``blobseal_test_<random>`` on
# the server at DATABASE_URL (unset: 127.0.0.1:5432, else an embedded PostgreSQL),
# migrates it once, and drops it at the end. ``pg_db`` hands each test a fresh ``Database``
# on it with every table but ``schema_migrations`` truncated. ``pg_empty_database_url`` is
# a database of its own, never migrated (for migration tests).
# =========================================================================================

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """DATABASE_URL if set (a clear error if it does not answer); else 127.0.0.1:5432; else embedded."""
    try:
        with database(os.environ.get("DATABASE_URL"), ROOT / ".dev" / "pgdata-test") as url:
            yield url
    except DatabaseProblem as exc:
        pytest.exit(str(exc), returncode=1)


@pytest.fixture(scope="session")
def pg_database_url(pg_server_url: str) -> Iterator[str]:
    with scratch_database(pg_server_url) as url:
        asyncio.run(migrate(url))
        yield url


@pytest.fixture(scope="module")
def module_database_url(pg_server_url: str) -> Iterator[str]:
    """A migrated database of one test module's own (for tests that run the app on it)."""
    with scratch_database(pg_server_url) as url:
        asyncio.run(migrate(url))
        yield url


@pytest.fixture
def pg_empty_database_url(pg_server_url: str) -> Iterator[str]:
    with scratch_database(pg_server_url) as url:
        yield url


@pytest.fixture
async def pg_db(pg_database_url: str) -> AsyncIterator[Database]:
    database = Database(pg_database_url, pool_max=4)
    async with database.connection() as conn:
        tables = await conn.fetch(
            "SELECT quote_ident(tablename) AS t FROM pg_tables "
            "WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
        )
        if tables:  # the access log refuses TRUNCATE by trigger: a superuser's cleanup turns triggers off
            async with conn.transaction():
                await conn.execute("SET LOCAL session_replication_role = replica")
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


# =========================================================================================
# The Key Vault stand-in (tests/support/keyvault_server.py): its TLS material once per session,
# a fresh server per test (the SDKs' challenge caches cleared).
# =========================================================================================


@pytest.fixture(scope="session")
def keyvault_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return make_tls_material(tmp_path_factory.mktemp("keyvault-tls"))


@pytest.fixture
async def keyvault_server(keyvault_tls: TlsMaterial) -> AsyncIterator[KeyVaultServer]:
    async with serving(keyvault_tls) as server:
        yield server


@pytest.fixture(scope="module")
def database_url(module_database_url: str) -> str:
    """The database a test module runs the app on (its own, migrated)."""
    return module_database_url


@pytest.fixture(scope="module")
def vault_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One local vault for the module's database: a new vault beside recorded keys is refused (fail closed)."""
    return tmp_path_factory.mktemp("vault") / "secrets"


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[PgProxy]:
    """A TCP proxy in front of the test PostgreSQL server, to cut, stall and restore (any database on it)."""
    server = PgProxy.for_url(database_url)
    await server.start()
    yield server
    await server.close()


# =========================================================================================
# The service stack
#
# ``make_stack(**settings)`` builds the real services (Azurite, the module's database, its
# vault) for a test module that defines the ``database_url`` and ``vault_dir`` fixtures.
# =========================================================================================


@pytest.fixture
async def make_stack(azurite: Azurite, database_url: str, vault_dir: Path) -> AsyncIterator[StackFactory]:
    opened: list[Services] = []

    async def make(*, vault: KeyVault | None = None, kek: KeyWrapper | None = None, signer: Signer | None = None,
                   database_url_override: str | None = None, **overrides: str) -> Services:
        settings = stack_settings(azurite, database_url_override or database_url, vault_dir,
                                  **{"RECONCILE_AFTER_SECONDS": "0", "INGEST_RETRY_SECONDS": "30", **overrides})
        opened.append(await open_stack(settings, vault=vault, kek=kek, signer=signer))
        return opened[-1]

    yield make
    for services in opened:
        await services.close()
