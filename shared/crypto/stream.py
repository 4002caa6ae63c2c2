"""Streaming encryption and decryption, push style: feed bytes in, take sealed/verified bytes out.

Push objects work the same from sync code (files, the CLI) and async code (blob streams):
the caller reads a transfer chunk, calls ``update``, writes what comes back. Memory is the
chunk plus at most one block held back, whatever the file size.

``Decryptor.update`` returns only plaintext whose block tags verified; a block is held back
until the next byte arrives (or ``finalize``), because only then is it known whether it
must be the final block. After any failure the object refuses further use.
"""

from __future__ import annotations

import os
import uuid

from shared.crypto.cipher import BlockCipher, open_header, seal_header
from shared.crypto.format import (
    FIXED_HEADER_SIZE,
    MAX_HEADER_SIZE,
    SALT_SIZE,
    TAG_SIZE,
    Buffer,
    Header,
    check_magic,
    header_size_from_prefix,
)
from shared.errors import BlobsealError, EncryptionError, FormatError, IntegrityError

__all__ = ["DEFAULT_BLOCK_SIZE", "Decryptor", "Encryptor", "decrypt", "encrypt"]

DEFAULT_BLOCK_SIZE = 64 * 1024


class _OneShot:
    """Refuses use after finalize or after a failure (the stream stays failed)."""

    _state = "open"

    def _check_open(self) -> None:
        if self._state == "failed":
            raise IntegrityError("stream failed earlier", operation=self._operation)
        if self._state == "done":
            raise EncryptionError("stream already finalized", operation=self._operation)

    @property
    def _operation(self) -> str:
        return type(self).__name__.lower()


class Encryptor(_OneShot):
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
        self.header, self._cipher = seal_header(key, draft)
        self._block = block_size
        self._pending = bytearray()
        self._index = 0
        self._header_sent = False

    def update(self, data: Buffer) -> bytearray:
        """Seal every block of ``data`` known not to be the last; returns header and sealed blocks."""
        out = bytearray(self.update_size(len(data)))
        del out[self.update_into(data, out) :]
        return out

    def update_size(self, input_size: int) -> int:
        """How many bytes ``update_into`` will write for ``input_size`` more bytes of input."""
        header = 0 if self._header_sent else self.header.size
        return header + self._ready_blocks(input_size) * (self._block + TAG_SIZE)

    def buffer_size(self, chunk_size: int) -> int:
        """An output size that fits every ``update_into`` of at most ``chunk_size`` bytes."""
        blocks = (self._block + chunk_size - 1) // self._block
        return self.header.size + blocks * (self._block + TAG_SIZE)

    def update_into(self, data: Buffer, out: Buffer) -> int:
        """Like ``update`` but writes into ``out`` (see ``update_size``); returns the bytes written.

        Lets a caller reuse one output buffer: a fresh multi-MiB buffer per call costs more
        (page faults) than the AES itself.
        """
        self._check_open()
        view = memoryview(data).cast("B")
        count = self._ready_blocks(len(view))
        with memoryview(out).cast("B") as target:
            position = self._write_header(target)
            taken = 0
            if count and self._pending:
                taken = self._block - len(self._pending)
                self._pending += view[:taken]
                position = self._seal(self._pending, False, target, position)
                self._pending.clear()
                count -= 1
            self._cipher.seal_run_into(self._index, count, self._block, view[taken:], target[position:])
            self._index += count
            taken += count * self._block
            position += count * (self._block + TAG_SIZE)
        self._pending += view[taken:]
        return position

    def _ready_blocks(self, input_size: int) -> int:
        """Blocks that can be sealed now: full ones followed by at least one more byte."""
        return max(0, len(self._pending) + input_size - 1) // self._block

    def finalize(self) -> bytearray:
        """Seal the final block (empty for an empty file); returns the remaining output."""
        self._check_open()
        header = 0 if self._header_sent else self.header.size
        out = bytearray(header + len(self._pending) + TAG_SIZE)
        with memoryview(out) as target:
            self._seal(self._pending, True, target, self._write_header(target))
        self._pending.clear()
        self._state = "done"
        return out

    def _write_header(self, target: memoryview) -> int:
        if self._header_sent:
            return 0
        encoded = self.header.encode()
        target[: len(encoded)] = encoded
        self._header_sent = True
        return len(encoded)

    def _seal(self, plaintext: Buffer, last: bool, target: memoryview, position: int) -> int:
        end = position + len(plaintext) + TAG_SIZE
        self._cipher.seal_into(self._index, last, plaintext, target[position:end])
        self._index += 1
        return end


class Decryptor(_OneShot):
    """Opens a blobseal v1 file as a stream; releases only verified plaintext."""

    def __init__(self, key: bytes, *, expect_file_id: uuid.UUID | None = None) -> None:
        self._key = key
        self._expect_file_id = expect_file_id
        self._pending = bytearray()
        self.header: Header | None = None
        self._cipher: BlockCipher | None = None
        self._sealed = 0
        self._index = 0

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
        self._check_open()
        with memoryview(out).cast("B") as target:
            try:
                view = memoryview(data).cast("B")
                if self._cipher is None:
                    view = self._read_header(view)
                return self._open_available(view, target) if self._cipher is not None else 0
            except BlobsealError:
                target[:] = bytes(len(target))
                self._fail()
                raise

    def finalize(self) -> bytearray:
        """Verify the final block and return its plaintext; refuses a truncated file."""
        self._check_open()
        try:
            out = self._open_final()
        except BlobsealError:
            self._fail()
            raise
        self._state = "done"
        return out

    def _fail(self) -> None:
        self._state = "failed"
        self._pending = bytearray()

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
        self._cipher = open_header(self._key, header)
        self.header, self._sealed = header, header.block_size + TAG_SIZE
        self._pending.clear()
        return view[header.size - before :]

    def _open_available(self, view: memoryview, out: memoryview) -> int:
        count = max(0, len(self._pending) + len(view) - 1) // self._sealed
        position = taken = 0
        if count and self._pending:
            taken = self._sealed - len(self._pending)
            self._pending += view[:taken]
            position = self._open(self._pending, False, out, position)
            self._pending.clear()
            count -= 1
        assert self._cipher is not None and self.header is not None
        self._cipher.open_run_into(self._index, count, self.header.block_size, view[taken:], out[position:])
        self._index += count
        self._pending += view[taken + count * self._sealed :]
        return position + count * self.header.block_size

    def _open_final(self) -> bytearray:
        if self._cipher is None:
            raise FormatError("truncated header", operation="decrypt", details={"got": len(self._pending)})
        rest = len(self._pending)
        if rest < TAG_SIZE or (rest == TAG_SIZE and self._index > 0):
            raise IntegrityError("authentication failed (truncated file)", operation="decrypt")
        out = bytearray(rest - TAG_SIZE)
        with memoryview(out) as target:
            self._open(self._pending, True, target, 0)
        return out

    def _open(self, sealed: Buffer, last: bool, target: memoryview, position: int) -> int:
        assert self._cipher is not None
        end = position + len(sealed) - TAG_SIZE
        self._cipher.open_into(self._index, last, sealed, target[position:end])
        self._index += 1
        return end


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
