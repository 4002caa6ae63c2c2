"""Health and error statuses with a dependency down: PostgreSQL cut (through a proxy), Azurite
stopped, the vault file corrupted. The host answers 503 naming the failing dependency, never a
secret, and recovers when the dependency comes back."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from azure.storage.blob import BlobServiceClient

from localinfra.azurite import Azurite, running_azurite
from localinfra.hostprocess import DevHost, host_env
from tests.support.pg_proxy import PgProxy

pytestmark = [pytest.mark.postgres, pytest.mark.azurite, pytest.mark.slow]


async def health(client: httpx.AsyncClient, host: DevHost) -> tuple[int, dict[str, object]]:
    """The details (``/api/status``, the operate role); anonymous ``/api/health`` must agree on up or down."""
    response = await client.get(f"{host.url}/status", headers=host.headers, timeout=20)
    anonymous = await client.get(f"{host.url}/health", timeout=20)
    assert anonymous.json() == {"status": "up" if anonymous.status_code == 200 else "down"}
    return response.status_code, response.json()


async def wait_health(client: httpx.AsyncClient, host: DevHost, status: int, within: float = 30) -> dict[str, object]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        code, body = await health(client, host)
        if code == status or asyncio.get_running_loop().time() > deadline:
            assert code == status, body
            return body
        await asyncio.sleep(0.3)


async def start(host: DevHost) -> DevHost:
    return await asyncio.to_thread(host.start)


async def test_dependencies_down_and_back(proxy: PgProxy, database_url: str, tmp_path: Path) -> None:
    with running_azurite(tmp_path / "azurite") as azurite:
        env = host_env(azurite, proxy.url(database_url), tmp_path / "vault")
        host = await start(DevHost(env, tmp_path / "devhost.log"))
        try:
            async with httpx.AsyncClient() as client:
                assert (await wait_health(client, host, 200))["dependencies"] == {
                    "storage": "ok", "database": "ok", "vault": "ok"}
                await _database_down(client, host, proxy)
                await _one_encrypted_file(client, host, azurite)  # the vault now holds keys
                await _vault_corrupted(client, host)
                await _vault_deleted(client, host)
                await _storage_down(client, host, azurite)
        finally:
            await asyncio.to_thread(host.stop)


async def _database_down(client: httpx.AsyncClient, host: DevHost, proxy: PgProxy) -> None:
    await proxy.cut()
    body = await wait_health(client, host, 503)
    assert body["dependencies"]["database"] == "DatabaseUnavailableError"  # type: ignore[index]
    assert body["dependencies"]["storage"] == "ok"  # type: ignore[index]
    response = await client.get(f"{host.url}/files/{uuid.uuid4()}", headers=host.headers, timeout=30)
    assert response.status_code == 503 and response.json()["error"] == "DatabaseUnavailableError"
    assert "postgres" not in response.text.lower() and "127.0.0.1" not in response.text
    await proxy.restore()
    await wait_health(client, host, 200)


async def _vault_corrupted(client: httpx.AsyncClient, host: DevHost) -> None:
    secrets_file = Path(host.env["KEY_VAULT_LOCAL_PATH"]) / "secrets.json"
    original = secrets_file.read_bytes() if secrets_file.exists() else None
    secrets_file.parent.mkdir(parents=True, exist_ok=True)
    secrets_file.write_text("{ not json")
    body = await wait_health(client, host, 503)
    assert body["dependencies"]["vault"] == "KeyVaultError"  # type: ignore[index]
    assert "not json" not in json.dumps(body)
    if original is None:
        secrets_file.unlink()
    else:
        secrets_file.write_bytes(original)
    await wait_health(client, host, 200)


async def _storage_down(client: httpx.AsyncClient, host: DevHost, azurite: Azurite) -> None:
    file_id = await _one_encrypted_file(client, host, azurite)
    await asyncio.to_thread(azurite.stop)
    started = time.monotonic()
    body = await wait_health(client, host, 503, within=8)  # probes at most 1 s old here, each cut at 5 s
    assert time.monotonic() - started < 9  # (observed before the cut: 87 s)
    assert body["dependencies"]["storage"] in ("StorageUnavailableError", "TimeoutError")  # type: ignore[index]
    assert "AccountKey" not in json.dumps(body)
    started = time.monotonic()
    response = await client.get(f"{host.url}/files/{file_id}", headers=host.headers, timeout=30)
    waited = time.monotonic() - started
    assert response.status_code == 503 and response.json()["error"] == "StorageUnavailableError"
    assert waited < 10, f"a download with storage down waited {waited:.1f} s for its 503"


async def _vault_deleted(client: httpx.AsyncClient, host: DevHost) -> None:
    """The vault file deleted while the host runs: 503 for the vault, no new vault; restored: healthy."""
    secrets_file = Path(host.env["KEY_VAULT_LOCAL_PATH"]) / "secrets.json"
    saved = secrets_file.read_bytes()
    secrets_file.unlink()
    body = await wait_health(client, host, 503)
    assert body["dependencies"]["vault"] == "VaultMissingError"  # type: ignore[index]
    assert not secrets_file.exists()
    secrets_file.write_bytes(saved)
    await wait_health(client, host, 200)


async def _one_encrypted_file(client: httpx.AsyncClient, host: DevHost, azurite: Azurite) -> str:
    name = f"{uuid.uuid4()}.bin"
    await asyncio.to_thread(lambda: BlobServiceClient.from_connection_string(azurite.connection_string)
                            .get_blob_client(host.env["INGEST_CONTAINER"], name).upload_blob(b"x" * 1000))
    for _ in range(150):
        response = await client.get(f"{host.url}/files", params={"name": name}, headers=host.headers, timeout=10)
        if response.status_code == 200 and response.json()["status"] == "encrypted":
            return str(response.json()["file_id"])
        await asyncio.sleep(0.2)
    raise AssertionError("the upload was not encrypted")
