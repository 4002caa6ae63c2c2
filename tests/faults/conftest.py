"""The fault suite: every failure mode of issue 8, reproduced on the real local stack.

Real PostgreSQL (a scratch database per module; cut through a TCP proxy), real Azurite (stopped
and restarted), the real local vault (corrupted, deleted, restored) and the real Azure SDK
against the loopback Key Vault stand-in (429 + Retry-After). Each test asserts the final state:
every upload encrypted once and downloadable byte-identical, ingest empty, no pending attempt,
no orphan blob or staged block, no enabled unrecorded vault version.

Fast cases run in ``make test``; the long ones (``@pytest.mark.long``: 100 race trials, 1,000
throttled files, killed host processes) in ``make faults``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from azure.storage.blob.aio import BlobServiceClient

from localinfra.azurite import Azurite
from shared.bootstrap import Services
from shared.vault.base import KeyVault
from tests.integration.service_fixtures import blob_names, collect, open_stack, stack_settings

StackFactory = Callable[..., Awaitable[Services]]
TRIALS = int(os.environ.get("BLOBSEAL_FAULT_TRIALS", "20"))


@pytest.fixture(scope="module")
def database_url(module_database_url: str) -> str:
    return module_database_url


@pytest.fixture(scope="module")
def vault_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vault") / "secrets"


@pytest.fixture
async def make_stack(azurite: Azurite, database_url: str, vault_dir: Path) -> AsyncIterator[StackFactory]:
    opened: list[Services] = []

    async def make(*, vault: KeyVault | None = None, database_url_override: str | None = None,
                   **overrides: str) -> Services:
        settings = stack_settings(azurite, database_url_override or database_url, vault_dir,
                                  **{"RECONCILE_AFTER_SECONDS": "0", "INGEST_RETRY_SECONDS": "30", **overrides})
        opened.append(await open_stack(settings, vault=vault))
        return opened[-1]

    yield make
    for services in opened:
        await services.close()


async def pending_rows(stack: Services) -> list[str]:
    async with stack.db.connection() as conn:
        rows = await conn.fetch("SELECT file_id FROM files WHERE pending_etag IS NOT NULL")
    return [str(r["file_id"]) for r in rows]


async def all_blobs(azurite: Azurite, container: str) -> list[str]:
    """Every blob, those with only staged (uncommitted) blocks included."""
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        client = service.get_container_client(container)
        return sorted([b.name async for b in client.list_blobs(include=["uncommittedblobs"])])


async def unreferenced_blobs(stack: Services, azurite: Azurite) -> list[str]:
    names = await all_blobs(azurite, stack.settings.protected_container)
    async with stack.db.connection() as conn:
        referenced = {r["n"] for r in await conn.fetch(
            "SELECT protected_blob AS n FROM files WHERE protected_blob IS NOT NULL "
            "UNION SELECT blob_name FROM retired_blobs")}
    return [n for n in names if n not in referenced]


async def enabled_unrecorded_versions(stack: Services, file_ids: list[uuid.UUID]) -> list[str]:
    found = []
    for file_id in file_ids:
        async with stack.db.connection() as conn:
            recorded = {r["key_reference"] for r in await conn.fetch(
                "SELECT key_reference FROM file_keys WHERE file_id = $1", file_id)}
        for version in await stack.vault.list_versions(f"file-{file_id}"):
            if version.enabled and version.key_reference not in recorded:
                found.append(version.key_reference)
    return found


async def download(stack: Services, file_id: uuid.UUID | str) -> bytes:
    return await collect(await stack.files.open(await stack.files.encrypted_file(str(file_id)), None))


async def assert_clean(stack: Services, azurite: Azurite, expected: dict[uuid.UUID, bytes]) -> None:
    """The final state every fault must end in once healed."""
    for file_id, data in expected.items():
        assert await download(stack, file_id) == data, file_id
    assert await blob_names(azurite, stack.settings.ingest_container) == []
    assert await pending_rows(stack) == []
    assert await unreferenced_blobs(stack, azurite) == []
    assert await enabled_unrecorded_versions(stack, list(expected)) == []
