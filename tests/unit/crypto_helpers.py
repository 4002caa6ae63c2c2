"""Helpers for the format tests: a fixed key set, and a decryptor driver that records what it released."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

from shared.crypto.stream import Decryptor, encrypt
from shared.errors import BlobsealError

BLOCK = 64


@dataclass
class Sample:
    key: bytes
    file_id: uuid.UUID
    plaintext: bytes
    ciphertext: bytes
    header_size: int

    def block_offset(self, index: int) -> int:
        return self.header_size + index * (BLOCK + 16)


def sample(size: int, *, key: bytes | None = None, file_id: uuid.UUID | None = None) -> Sample:
    key = key or os.urandom(32)
    file_id = file_id or uuid.uuid4()
    plaintext = os.urandom(size)
    ciphertext = encrypt(key, plaintext, file_id=file_id, key_reference=f"file-{file_id}/v1", block_size=BLOCK)
    header_size = len(ciphertext) - size - 16 * max(1, -(-size // BLOCK))
    return Sample(key, file_id, plaintext, ciphertext, header_size)


def released_until_failure(key: bytes, data: bytes, *, chunk: int = 37,
                           expect_file_id: uuid.UUID | None = None) -> tuple[bytes, BlobsealError | None]:
    """Feed ``data`` in chunks; return every byte the decryptor released and the error, if any."""
    decryptor = Decryptor(key, expect_file_id=expect_file_id)
    released = bytearray()
    try:
        for start in range(0, len(data), chunk):
            released += decryptor.update(data[start : start + chunk])
        released += decryptor.finalize()
    except BlobsealError as exc:
        return bytes(released), exc
    return bytes(released), None
