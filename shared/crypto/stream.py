"""Streaming encryption and decryption, push style: feed bytes in, take sealed/verified bytes out.

Push objects work the same from sync code (files, the CLI) and async code (blob streams):
the caller reads a transfer chunk, calls ``update``, writes what comes back. Memory is the
chunk plus at most one block held back, whatever the file size. Both are ``BlockStream``s
(``shared.crypto.engine``): one block loop, one failure rule.

``Decryptor.update`` returns only plaintext whose block tags verified; a block is held back
until the next byte arrives (or ``finalize``), because only then is it known whether it
must be the final block. After any failure the object refuses further use.
"""

from __future__ import annotations

import os
import uuid

from shared.crypto.cipher import open_header, seal_header
from shared.crypto.engine import BlockStream, Opening, Sealing
from shared.crypto.format import (
    DEFAULT_BLOCK_SIZE,
    FIXED_HEADER_SIZE,
    MAX_HEADER_SIZE,
    SALT_SIZE,
    TAG_SIZE,
    Buffer,
    Header,
    check_magic,
    header_size_from_prefix,
)
from shared.errors import FormatError, IntegrityError

__all__ = ["Decryptor", "Encryptor", "decrypt", "encrypt"]

class Encryptor(BlockStream):
    """Seals a plaintext stream into a blobseal v1 file."""

    def __init__(
        self,
        key: bytes,
        *,
        file_id: uuid.UUID,
        key_reference: str = "",
        block_size: int = DEFAULT_BLOCK_SIZE,
        salt: bytes | None = None,
    ) -> None:
        draft = Header(block_size=block_size, file_id=file_id, salt=salt or os.urandom(SALT_SIZE),
                       key_reference=key_reference)
        self.header, cipher = seal_header(key, draft)
        super().__init__(Sealing(cipher, block_size), hold_back=True)
        self._header_due = True

    def update(self, data: Buffer) -> bytearray:
        """Seal every block of ``data`` known not to be the last; returns header and sealed blocks."""
        out = bytearray(self.update_size(len(data)))
        del out[self.update_into(data, out) :]
        return out

    def update_size(self, input_size: int) -> int:
        """How many bytes ``update_into`` will write for ``input_size`` more bytes of input."""
        return self._header_size() + self._ready_units(input_size) * (self.header.block_size + TAG_SIZE)

    def buffer_size(self, chunk_size: int) -> int:
        """An output size that fits every ``update_into`` of at most ``chunk_size`` bytes."""
        blocks = (self.header.block_size + chunk_size - 1) // self.header.block_size
        return self.header.size + blocks * (self.header.block_size + TAG_SIZE)

    def update_into(self, data: Buffer, out: Buffer) -> int:
        """Like ``update`` but writes into ``out`` (see ``update_size``); returns the bytes written.

        Lets a caller reuse one output buffer: a fresh multi-MiB buffer per call costs more
        (page faults) than the AES itself.
        """
        with self._step(out), memoryview(out).cast("B") as target:
            position = self._write_header(target)
            return position + self._feed(memoryview(data).cast("B"), target[position:])

    def finalize(self) -> bytearray:
        """Seal the final block (empty for an empty file); returns the remaining output."""
        with self._step():
            header = bytearray(self._header_size())
            self._write_header(memoryview(header))
            out = header + self._final()
            self._finished = True
        return out

    def _header_size(self) -> int:
        return self.header.size if self._header_due else 0

    def _write_header(self, target: memoryview) -> int:
        if not self._header_due:
            return 0
        encoded = self.header.encode()
        target[: len(encoded)] = encoded
        self._header_due = False
        return len(encoded)


class Decryptor(BlockStream):
    """Opens a blobseal v1 file as a stream; releases only verified plaintext."""

    def __init__(self, key: bytes, *, expect_file_id: uuid.UUID | None = None) -> None:
        super().__init__(None, hold_back=True)  # the transform comes with the header
        self._key = key
        self._expect_file_id = expect_file_id
        self.header: Header | None = None

    def update(self, data: Buffer) -> bytearray:
        """Verified plaintext of every block known not to be the last."""
        out = bytearray(self.update_size(len(data)))
        del out[self.update_into(data, out) :]
        return out

    def update_size(self, input_size: int) -> int:
        """An upper bound of what ``update_into`` writes for ``input_size`` more bytes."""
        return len(self._pending) + input_size

    def update_into(self, data: Buffer, out: Buffer) -> int:
        """Like ``update`` but writes into ``out``; returns the bytes written.

        On failure the bytes written into ``out`` so far are zeroed: nothing unverified stays.
        """
        with self._step(out), memoryview(out).cast("B") as target:
            view = memoryview(data).cast("B")
            if self._transform is None:
                view = self._read_header(view)
            return self._feed(view, target) if self._transform is not None else 0

    def finalize(self) -> bytearray:
        """Verify the final block and return its plaintext; refuses a truncated file."""
        with self._step():
            if self._transform is None:
                raise FormatError("truncated header", operation="decrypt", details={"got": len(self._pending)})
            out = self._final()
            self._finished = True
        return out

    def _read_header(self, view: memoryview) -> memoryview:
        """Buffer header bytes; once complete, open it and return the rest of ``view``."""
        before = len(self._pending)
        self._pending += view[: MAX_HEADER_SIZE]
        check_magic(self._pending)
        if len(self._pending) < FIXED_HEADER_SIZE or len(self._pending) < header_size_from_prefix(self._pending):
            return view[len(view) :]
        header = Header.parse(self._pending)
        if self._expect_file_id is not None and header.file_id != self._expect_file_id:
            raise IntegrityError("file id in header does not match", operation="decrypt")
        self._transform = Opening(open_header(self._key, header), header.block_size)
        self.header = header
        self._pending.clear()
        return view[header.size - before :]


def encrypt(
    key: bytes,
    plaintext: Buffer,
    *,
    file_id: uuid.UUID,
    key_reference: str = "",
    block_size: int = DEFAULT_BLOCK_SIZE,
    salt: bytes | None = None,
) -> bytes:
    """One-shot encryption of a small buffer."""
    encryptor = Encryptor(key, file_id=file_id, key_reference=key_reference, block_size=block_size, salt=salt)
    return bytes(encryptor.update(plaintext) + encryptor.finalize())


def decrypt(key: bytes, ciphertext: Buffer, *, expect_file_id: uuid.UUID | None = None) -> bytes:
    """One-shot decryption of a small buffer."""
    decryptor = Decryptor(key, expect_file_id=expect_file_id)
    return bytes(decryptor.update(ciphertext) + decryptor.finalize())
