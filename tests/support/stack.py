"""The real service stack for tests, and the checks of the state every fault must end in."""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable

from azure.storage.blob.aio import BlobServiceClient

from localinfra.azurite import Azurite
from shared.bootstrap import Services
from shared.identity import ALL_ROLES, Caller
from tests.integration.service_fixtures import blob_names, collect, upload

StackFactory = Callable[..., Awaitable[Services]]

# An operator with every role, as the CLI calls the services (tests that are about roles make their own callers).
OPERATOR = Caller("cli:test-operator", ALL_ROLES, "127.0.0.1")


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
            recorded = {r["ref"] for r in await conn.fetch(
                "SELECT key_reference AS ref FROM file_keys WHERE file_id = $1 "
                "UNION SELECT vault_reference FROM file_keys WHERE file_id = $1 AND vault_reference IS NOT NULL",
                file_id)}
        for version in await stack.vault.list_versions(f"file-{file_id}"):
            if version.enabled and version.key_reference not in recorded:
                found.append(version.key_reference)
    return found


async def encrypted(stack: Services, azurite: Azurite, count: int, size: int) -> dict[uuid.UUID, bytes]:
    """``count`` random uploads of ``size`` bytes, each dropped into ingest and encrypted: file id -> content."""
    contents: dict[uuid.UUID, bytes] = {}
    for _ in range(count):
        name, content = f"{uuid.uuid4()}.bin", os.urandom(size)
        await upload(azurite, stack.settings.ingest_container, name, content)
        file_id = (await stack.files.encrypt_ingest_blob(name)).file_id
        assert file_id is not None
        contents[file_id] = content
    return contents


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
