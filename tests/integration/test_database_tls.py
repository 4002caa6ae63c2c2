"""The database connection verifies the server: a password or an Entra token goes only to the database it names.

The suite's PostgreSQL is put behind a proxy that terminates TLS exactly as a PostgreSQL server does
(SSLRequest, then the handshake) with a throwaway CA's certificate, and refuses clients that do not
ask for TLS. ``sslmode=verify-full`` must connect only when the certificate chains to a trusted root
*and* names the host; with no ``sslrootcert`` (Azure's setting) the trusted roots are the system's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.db import Database
from shared.errors import DatabaseError, DatabaseUnavailableError
from tests.support.keyvault_server import TlsMaterial, make_tls_material
from tests.support.pg_proxy import PgProxy

pytestmark = pytest.mark.postgres


async def terminating(database_url: str, material: TlsMaterial) -> PgProxy:
    proxy = PgProxy.for_url(database_url, tls=material.server_context())
    await proxy.start()
    return proxy


@pytest.fixture
async def tls_server(pg_database_url: str, tmp_path: Path) -> AsyncIterator[tuple[PgProxy, TlsMaterial]]:
    material = make_tls_material(tmp_path)
    proxy = await terminating(pg_database_url, material)
    yield proxy, material
    await proxy.close()


async def answers(url: str) -> None:
    database = Database(url, migrate=False, connect_timeout=3)
    try:
        await database.ping()
    finally:
        await database.close()


def with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


async def test_verify_full_connects_to_the_server_its_root_vouches_for(
        tls_server: tuple[PgProxy, TlsMaterial], pg_database_url: str) -> None:
    proxy, material = tls_server
    await answers(with_query(proxy.url(pg_database_url, "localhost"),
                             f"sslmode=verify-full&sslrootcert={material.ca_file}"))
    with pytest.raises(DatabaseError):  # the proxy is a TLS-only server: a plain client is turned away
        await answers(with_query(proxy.url(pg_database_url), "sslmode=disable"))


async def test_without_sslrootcert_the_system_trust_store_decides(
        tls_server: tuple[PgProxy, TlsMaterial], pg_database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy, material = tls_server
    url = with_query(proxy.url(pg_database_url, "localhost"), "sslmode=verify-full")  # what Azure's DATABASE_URL says
    with pytest.raises(DatabaseError, match="certificate was not verified") as refused:
        await answers(url)  # a throwaway CA is in no system store
    assert not isinstance(refused.value, DatabaseUnavailableError)  # not a server that went away: no retry helps
    monkeypatch.setenv("SSL_CERT_FILE", str(material.ca_file))  # the platform's store, now holding that root
    await answers(url)
    await answers(with_query(proxy.url(pg_database_url, "localhost"), "sslmode=verify-full&sslrootcert=system"))


async def test_a_certificate_for_another_name_is_refused(pg_database_url: str, tmp_path: Path) -> None:
    material = make_tls_material(tmp_path, names=("db.example.internal",))
    proxy = await terminating(pg_database_url, material)
    try:
        with pytest.raises(DatabaseError, match="certificate was not verified"):
            await answers(with_query(proxy.url(pg_database_url, "localhost"),
                                     f"sslmode=verify-full&sslrootcert={material.ca_file}"))
    finally:
        await proxy.close()


async def test_a_certificate_from_another_root_is_refused(
        tls_server: tuple[PgProxy, TlsMaterial], pg_database_url: str, tmp_path: Path) -> None:
    proxy, _ = tls_server
    (tmp_path / "other").mkdir()
    stranger = make_tls_material(tmp_path / "other")
    with pytest.raises(DatabaseError, match="certificate was not verified"):
        await answers(with_query(proxy.url(pg_database_url, "localhost"),
                                 f"sslmode=verify-full&sslrootcert={stranger.ca_file}"))
