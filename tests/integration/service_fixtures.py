"""Builds the real service stack for a test: Azurite, a scratch PostgreSQL database, the JSON vault."""

from __future__ import annotations

import json
import os
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import BlobServiceClient
from fastapi import Request
from fastapi.responses import StreamingResponse

from localinfra.azurite import Azurite
from shared import http_api
from shared.bootstrap import Services, build_services
from shared.config import Settings
from shared.vault.base import KeyVault
from shared.vault.kek import KeyWrapper
from shared.vault.signer import Signer

# The local development key of every test stack: it has every role (tests about roles bring their own callers).
TEST_FUNCTION_KEY = "test-function-key"


def stack_settings(azurite: Azurite, database_url: str, vault_dir: Path, **overrides: str) -> Settings:
    suffix = secrets.token_hex(4)
    env = {
        "DataStorage": azurite.connection_string,
        "DATABASE_URL": database_url,
        "KEY_VAULT_LOCAL_PATH": str(vault_dir),
        "INGEST_CONTAINER": f"ingest-{suffix}",
        "PROTECTED_CONTAINER": f"protected-{suffix}",
        "AUDIT_DIGEST_CONTAINER": f"digests-{suffix}",
        "LOCAL_FUNCTION_KEY": TEST_FUNCTION_KEY,
        "ENCRYPTION_CHUNK_SIZE_MB": "1",
        "KEY_VAULT_CACHE_ENABLED": "true",
        **overrides,
    }
    return Settings.from_env(env)


async def open_stack(settings: Settings, *, vault: KeyVault | None = None, kek: KeyWrapper | None = None,
                     signer: Signer | None = None) -> Services:
    services = build_services(settings, vault=vault, kek=kek, signer=signer)
    await services.ingest.ensure()
    await services.protected.ensure()
    return services


async def upload(azurite: Azurite, container: str, name: str, data: bytes,
                 content_type: str = "application/octet-stream") -> str:
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        result = await service.get_blob_client(container, name).upload_blob(
            data, overwrite=True, content_settings=ContentSettings(content_type=content_type))
    return str(result["etag"])


async def blob_names(azurite: Azurite, container: str) -> list[str]:
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        return [b.name async for b in service.get_container_client(container).list_blobs()]


async def read_blob(azurite: Azurite, container: str, name: str) -> bytes:
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        stream = await service.get_blob_client(container, name).download_blob()
        return bytes(await stream.readall())  # test helper: small blobs only


async def collect(body: AsyncIterator[bytes] | None) -> bytes:
    assert body is not None
    return b"".join([piece async for piece in body])


async def http_download(stack: Services, file_id: str, headers: dict[str, str] | None = None,
                        method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """``GET /api/files/<id>`` through the HTTP face (``shared.http_api``), without a server (with the test key
    unless ``headers`` name another caller)."""
    headers = {"x-functions-key": TEST_FUNCTION_KEY, **(headers or {})}
    scope = {"type": "http", "method": method, "path": f"/api/files/{file_id}", "path_params": {"file_id": file_id},
             "query_string": b"", "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 50000)}
    response = await http_api.download(Request(scope), stack)
    if isinstance(response, StreamingResponse):
        body = b"".join([bytes(piece) async for piece in response.body_iterator])  # type: ignore[arg-type]
    else:
        body = bytes(response.body)
    return response.status_code, dict(response.headers), body


def new_name(suffix: str = ".bin") -> str:
    return f"{uuid.uuid4()}{suffix}"


def random_bytes(size: int) -> bytes:
    return os.urandom(size)


async def http_upload(stack: Services, name: str, data: bytes, headers: dict[str, str] | None = None,
                      piece: int = 256 * 1024) -> tuple[int, dict[str, str], dict[str, Any]]:
    """``POST /api/files`` through the HTTP face (``shared.http_api``), without a server: the body in pieces of
    ``piece`` bytes, with the test key unless ``headers`` name another caller; (status, headers, JSON body)."""
    headers = {"x-functions-key": TEST_FUNCTION_KEY, "x-file-name": name, "content-length": str(len(data)),
               "content-type": "application/octet-stream", **(headers or {})}
    pieces = [data[i:i + piece] for i in range(0, len(data), piece)] or [b""]

    async def receive() -> dict[str, Any]:
        chunk = pieces.pop(0) if pieces else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(pieces)}

    scope = {"type": "http", "method": "POST", "path": "/api/files", "path_params": {}, "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()], "client": ("127.0.0.1", 50000)}
    response = await http_api.upload(Request(scope, receive), stack)
    return response.status_code, dict(response.headers), json.loads(bytes(response.body))


async def http_delete(stack: Services, file_id: str) -> tuple[int, dict[str, Any]]:
    """``DELETE /api/files/<id>`` through the HTTP face, with the test key."""
    scope = {"type": "http", "method": "DELETE", "path": f"/api/files/{file_id}", "path_params": {"file_id": file_id},
             "query_string": b"", "headers": [(b"x-functions-key", TEST_FUNCTION_KEY.encode())],
             "client": ("127.0.0.1", 50000)}
    response = await http_api.delete(Request(scope), stack)
    return response.status_code, json.loads(bytes(response.body))
