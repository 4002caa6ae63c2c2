"""Blob storage adapter: streamed reads, staged-block writes committed at the end.

Built on the async ``azure.storage.blob.aio`` clients. Reads are ranged and chunked (never
``readall`` on a user file); writes stage blocks and commit the block list once, so a reader
never sees half a blob. Block ids carry a random per-attempt prefix, so two concurrent
attempts at the same blob (duplicate trigger deliveries) never mix their blocks: the last
commit wins whole. Azure SDK exceptions are translated to ``StorageError`` here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobBlock, ContentSettings
from azure.storage.blob.aio import BlobServiceClient

from shared.config import Settings
from shared.errors import BlobChangedError, BlobNotFoundError, StorageError, StorageUnavailableError

__all__ = ["BlobInfo", "BlobStore", "BlockWriter"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlobInfo:
    name: str
    size: int
    etag: str
    content_type: str
    created_on: datetime | None
    metadata: dict[str, str]


@contextlib.contextmanager
def _translated(operation: str, container: str, name: str = "") -> Iterator[None]:
    details = {"container": container, "blob": name} if name else {"container": container}
    try:
        yield
    except ResourceNotFoundError as exc:
        raise BlobNotFoundError("blob not found", operation=operation, details=details) from exc
    except ResourceModifiedError as exc:
        raise BlobChangedError("blob changed while being read", operation=operation, details=details) from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise StorageUnavailableError("storage did not answer", operation=operation, details=details) from exc
    except AzureError as exc:
        status = getattr(exc, "status_code", None)
        raise StorageError(f"storage request failed (status {status})", operation=operation,
                           details={**details, "status": status}) from exc


_DONE = object()


async def prefetched(source: AsyncIterator[bytes], depth: int = 1) -> AsyncIterator[bytes]:
    """Fetch up to ``depth`` chunks ahead while the caller works on the current one.

    Overlaps network waits with the caller's processing; memory grows by ``depth`` chunks.
    """
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=depth)

    async def pump() -> None:
        try:
            async for chunk in source:
                await queue.put(chunk)
            await queue.put(_DONE)
        except Exception as exc:  # handed to the consumer, raised there (cancellation is not)
            await queue.put(exc)

    task = asyncio.create_task(pump())
    try:
        while (item := await queue.get()) is not _DONE:
            if isinstance(item, Exception):
                raise item
            yield cast(bytes, item)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class BlobStore:
    """One async ``BlobServiceClient`` for the worker's lifetime (create lazily, close at exit)."""

    def __init__(self, service: BlobServiceClient, *, chunk_size: int) -> None:
        self._service = service
        self.chunk_size = chunk_size

    @classmethod
    def from_settings(cls, settings: Settings) -> BlobStore:
        options: dict[str, Any] = {
            "max_single_get_size": settings.chunk_size,
            "max_chunk_get_size": settings.chunk_size,
            "connection_timeout": 10,
            "read_timeout": 60,
            "retry_total": 4,
        }
        if settings.data_storage_blob_uri:
            from azure.identity.aio import DefaultAzureCredential

            service = BlobServiceClient(settings.data_storage_blob_uri, credential=DefaultAzureCredential(), **options)
        else:
            service = BlobServiceClient.from_connection_string(settings.data_storage_connection, **options)
        return cls(service, chunk_size=settings.chunk_size)

    async def close(self) -> None:
        await self._service.close()

    async def ensure_containers(self, *names: str) -> None:
        for name in names:
            with _translated("create_container", name), contextlib.suppress(ResourceExistsError):
                await self._service.create_container(name)

    async def ping(self, container: str) -> None:
        with _translated("ping", container):
            await self._service.get_container_client(container).get_container_properties()

    async def info(self, container: str, name: str) -> BlobInfo:
        with _translated("get_properties", container, name):
            props = await self._service.get_blob_client(container, name).get_blob_properties()
        return BlobInfo(name=name, size=props.size, etag=props.etag,
                        content_type=props.content_settings.content_type or "application/octet-stream",
                        created_on=props.creation_time, metadata=dict(props.metadata or {}))

    async def read(self, container: str, name: str, *, offset: int = 0, length: int | None = None,
                   etag: str | None = None) -> AsyncIterator[bytes]:
        """The bytes of ``[offset, offset+length)`` in chunks of at most ``chunk_size``.

        With ``etag``, the read fails with ``BlobChangedError`` if the blob changes meanwhile.
        """
        client = self._service.get_blob_client(container, name)
        conditions: dict[str, Any] = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        with _translated("download", container, name):
            # offset None for a whole blob: the SDK then handles an empty blob (a range would get 416)
            start = offset if offset or length is not None else None
            stream = await client.download_blob(offset=start, length=length, max_concurrency=1, **conditions)
            async for chunk in prefetched(stream.chunks()):
                yield chunk

    async def read_exact(self, container: str, name: str, offset: int, length: int, *,
                         etag: str | None = None) -> bytes:
        """A small range (a header, one block) as one bytes object."""
        parts = [chunk async for chunk in self.read(container, name, offset=offset, length=length, etag=etag)]
        return b"".join(parts)

    def writer(self, container: str, name: str) -> BlockWriter:
        return BlockWriter(self._service.get_blob_client(container, name), container, name)

    async def delete(self, container: str, name: str, *, etag: str | None = None) -> bool:
        """Delete (only if unchanged, with ``etag``); False if it was gone or changed."""
        conditions: dict[str, Any] = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        try:
            with _translated("delete", container, name):
                await self._service.get_blob_client(container, name).delete_blob(**conditions)
        except (BlobNotFoundError, BlobChangedError) as exc:
            log.info("blob not deleted: %s", exc.message, extra={"container": container, "blob": name})
            return False
        return True


class BlockWriter:
    """Stages blocks of one blob and commits them at once (atomic for readers)."""

    def __init__(self, client: Any, container: str, name: str) -> None:
        self._client, self._container, self._name = client, container, name
        self._attempt = os.urandom(6).hex()
        self._blocks: list[BlobBlock] = []

    async def stage(self, data: bytes | bytearray | memoryview) -> None:
        """Stage one block. ``data`` is copied first, so the caller may reuse its buffer."""
        data = bytes(data)
        block_id = base64.b64encode(f"{self._attempt}-{len(self._blocks):08d}".encode()).decode()
        with _translated("stage_block", self._container, self._name):
            await self._client.stage_block(block_id, data, length=len(data))
        self._blocks.append(BlobBlock(block_id=block_id))

    async def commit(self, *, metadata: dict[str, str] | None = None,
                     content_type: str = "application/octet-stream") -> str:
        """Commit the staged blocks as the blob's whole content; returns the new ETag."""
        with _translated("commit_block_list", self._container, self._name):
            result = await self._client.commit_block_list(
                self._blocks, metadata=metadata, content_settings=ContentSettings(content_type=content_type))
        return str(result.get("etag", ""))
