"""The one seal step: a stream of plaintext (or of a file to re-encrypt) into a committed protected blob.

Ingest and rotation both call ``seal``: a key in, the bytes streamed through an
``Encryptor`` into staged blocks, committed once. One transfer chunk is read, transformed and
staged at a time (the next one is prefetched), so memory stays at a few chunks whatever the
file size. The crypto work runs in a worker thread (AES-GCM releases the GIL), so the event
loop keeps serving other requests and the prefetch meanwhile.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from shared.blobs import BlockWriter, Container
from shared.crypto.format import FORMAT_VERSION
from shared.crypto.stream import Decryptor, Encryptor

__all__ = ["Sealed", "Transfer", "seal"]


@dataclass(frozen=True)
class Sealed:
    """What a seal wrote: the plaintext size, the committed blob's ETag, the format's block size."""

    size: int
    etag: str
    block_size: int


@dataclass(frozen=True)
class Transfer:
    """How bytes move: ``chunk_size`` read and staged at a time, ``block_size`` of the format for new files."""

    chunk_size: int
    block_size: int


async def seal(source: AsyncIterator[bytes], target: Container, blob_name: str, *, key: bytes, file_id: uuid.UUID,
               key_reference: str, transfer: Transfer, opener: Decryptor | None = None,
               size_hint: int | None = None) -> Sealed:
    """Encrypt ``source`` (plaintext, or ciphertext opened by ``opener``) into ``blob_name``; commit.

    ``size_hint`` (the source's size, when known) keeps the buffers of a small file small.
    """
    encryptor = Encryptor(key, file_id=file_id, key_reference=key_reference, block_size=transfer.block_size)
    writer = target.writer(blob_name, target=transfer.chunk_size)
    piece = transfer.chunk_size if size_hint is None else max(1, min(transfer.chunk_size, size_hint))
    out = bytearray(encryptor.buffer_size(piece + transfer.block_size))
    size = 0
    async for chunk in source:
        plaintext = await asyncio.to_thread(opener.update, chunk) if opener is not None else chunk
        size += len(plaintext)
        out = await _seal_into(plaintext, encryptor, writer, out)
    if opener is not None:
        final_plain = opener.finalize()
        size += len(final_plain)
        await _seal_into(final_plain, encryptor, writer, out)
    await writer.stage(encryptor.finalize())
    etag = await writer.commit(metadata={"blobseal_format": str(FORMAT_VERSION), "blobseal_file_id": str(file_id)})
    return Sealed(size=size, etag=etag, block_size=transfer.block_size)


async def _seal_into(plaintext: bytes | bytearray, encryptor: Encryptor, writer: BlockWriter,
                     out: bytearray) -> bytearray:
    if encryptor.update_size(len(plaintext)) > len(out):  # a source chunk larger than announced
        out = bytearray(encryptor.update_size(len(plaintext)))
    written = await asyncio.to_thread(encryptor.update_into, plaintext, out)  # off the loop: AES drops the GIL
    if written:
        await writer.stage(memoryview(out)[:written])
    return out
