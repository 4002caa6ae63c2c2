"""The blobseal v1 container: header layout, limits and size arithmetic (no cryptography).

Byte layout (all integers big-endian; see docs/FORMAT.md for the reasons)::

    offset    size  field
    0         8     magic            89 42 53 45 41 4C 0D 0A  ("\\x89BSEAL\\r\\n")
    8         1     version          1
    9         1     algorithm        1 = AES-256-GCM, HKDF-SHA256 subkey, STREAM nonces
    10        2     reserved         0 (refused otherwise)
    12        4     block_size       plaintext bytes per block, MIN_BLOCK_SIZE..MAX_BLOCK_SIZE
    16        16    file_id          UUID, RFC 4122 byte order
    32        32    salt             random per encryption
    64        1     key_ref_len      L, 0..255
    65        L     key_reference    ASCII, e.g. "file-<uuid>/<version>"
    65+L      32    commitment       key commitment (see shared.crypto.cipher)
    97+L      ...   blocks           each: ciphertext (block_size, last one 0..block_size) + 16-byte tag

Every block but the last holds exactly ``block_size`` plaintext bytes; the last holds
1..block_size bytes, or 0 only when it is the only block (empty file).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from shared.errors import FormatError

__all__ = [
    "ALGORITHM_AES256GCM_HKDF",
    "COMMITMENT_SIZE",
    "DEFAULT_BLOCK_SIZE",
    "FIXED_HEADER_SIZE",
    "FORMAT_VERSION",
    "KEY_SIZE",
    "MAGIC",
    "MAX_BLOCKS",
    "MAX_BLOCK_SIZE",
    "MAX_HEADER_SIZE",
    "MIN_BLOCK_SIZE",
    "TAG_SIZE",
    "Buffer",
    "Header",
    "Layout",
    "check_magic",
    "header_size_from_prefix",
]

Buffer = bytes | bytearray | memoryview

KEY_SIZE = 32  # AES-256: the file key
DEFAULT_BLOCK_SIZE = 64 * 1024
MAGIC = b"\x89BSEAL\r\n"
FORMAT_VERSION = 1
ALGORITHM_AES256GCM_HKDF = 1
TAG_SIZE = 16
SALT_SIZE = 32
COMMITMENT_SIZE = 32
MIN_BLOCK_SIZE = 64
MAX_BLOCK_SIZE = 16 * 1024 * 1024
MAX_BLOCKS = 2**32
MAX_KEY_REFERENCE = 255

_FIXED = struct.Struct(">8sBBHI16s32sB")
FIXED_HEADER_SIZE = _FIXED.size  # 65: everything before the key reference
MAX_HEADER_SIZE = FIXED_HEADER_SIZE + MAX_KEY_REFERENCE + COMMITMENT_SIZE


def _fail(message: str, **details: object) -> FormatError:
    return FormatError(message, operation="parse_header", details=details)


@dataclass(frozen=True)
class Header:
    """The authenticated header of one encrypted file."""

    block_size: int
    file_id: uuid.UUID
    salt: bytes
    key_reference: str = ""
    commitment: bytes = b""
    version: int = FORMAT_VERSION
    algorithm: int = ALGORITHM_AES256GCM_HKDF

    def __post_init__(self) -> None:
        if not MIN_BLOCK_SIZE <= self.block_size <= MAX_BLOCK_SIZE:
            raise _fail("block size out of range", block_size=self.block_size)
        if len(self.salt) != SALT_SIZE:
            raise _fail("salt must be 32 bytes")
        if self.commitment and len(self.commitment) != COMMITMENT_SIZE:
            raise _fail("commitment must be 32 bytes")
        reference = self.key_reference.encode("ascii", errors="replace")
        if len(reference) > MAX_KEY_REFERENCE or not self.key_reference.isascii():
            raise _fail("key reference must be ASCII of at most 255 bytes")

    @property
    def size(self) -> int:
        return FIXED_HEADER_SIZE + len(self.key_reference) + COMMITMENT_SIZE

    def encode_prefix(self) -> bytes:
        """The header without its commitment: the input of key derivation."""
        fixed = _FIXED.pack(
            MAGIC, self.version, self.algorithm, 0, self.block_size, self.file_id.bytes,
            self.salt, len(self.key_reference),
        )
        return fixed + self.key_reference.encode("ascii")

    def encode(self) -> bytes:
        if len(self.commitment) != COMMITMENT_SIZE:
            raise _fail("header has no commitment yet")
        return self.encode_prefix() + self.commitment

    @classmethod
    def parse(cls, data: Buffer) -> Header:
        """Parse a header from the start of ``data`` (which may hold more than the header)."""
        size = header_size_from_prefix(data)
        if len(data) < size:
            raise _fail("truncated header", needed=size, got=len(data))
        (_, version, algorithm, _, block_size, file_id, salt, ref_len) = _FIXED.unpack_from(data)
        reference = bytes(data[FIXED_HEADER_SIZE : FIXED_HEADER_SIZE + ref_len])
        if not reference.isascii():
            raise _fail("key reference is not ASCII")
        return cls(
            block_size=block_size,
            file_id=uuid.UUID(bytes=file_id),
            salt=salt,
            key_reference=reference.decode("ascii"),
            commitment=bytes(data[size - COMMITMENT_SIZE : size]),
            version=version,
            algorithm=algorithm,
        )


def check_magic(data: Buffer) -> None:
    """Refuse ``data`` as soon as its first bytes cannot start a blobseal file."""
    head = bytes(data[: len(MAGIC)])
    if head != MAGIC[: len(head)]:
        raise _fail("not a blobseal file")


def header_size_from_prefix(data: Buffer) -> int:
    """The full header size, from its first ``FIXED_HEADER_SIZE`` bytes; refuses what we can't read."""
    if len(data) < FIXED_HEADER_SIZE:
        check_magic(data)
        raise _fail("truncated header", needed=FIXED_HEADER_SIZE, got=len(data))
    magic, version, algorithm, reserved, block_size, _, _, ref_len = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise _fail("not a blobseal file")
    if version != FORMAT_VERSION:
        raise _fail("unsupported format version", version=version)
    if algorithm != ALGORITHM_AES256GCM_HKDF:
        raise _fail("unsupported algorithm", algorithm=algorithm)
    if reserved != 0:
        raise _fail("reserved header bits set")
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise _fail("block size out of range", block_size=block_size)
    return FIXED_HEADER_SIZE + int(ref_len) + COMMITMENT_SIZE


@dataclass(frozen=True)
class Layout:
    """Where every block of a file of known ciphertext size lies, and what it holds."""

    header_size: int
    block_size: int
    ciphertext_size: int

    @property
    def sealed_block_size(self) -> int:
        return self.block_size + TAG_SIZE

    @property
    def block_count(self) -> int:
        body = self.ciphertext_size - self.header_size
        return max(1, -(-body // self.sealed_block_size))

    @property
    def plaintext_size(self) -> int:
        """The plaintext size, or FormatError if no valid file has this ciphertext size."""
        body = self.ciphertext_size - self.header_size
        count = self.block_count
        last = body - (count - 1) * self.sealed_block_size
        if body < TAG_SIZE or last < TAG_SIZE or (last == TAG_SIZE and count > 1) or count > MAX_BLOCKS:
            raise FormatError("ciphertext size does not match the format", operation="layout",
                              details={"ciphertext_size": self.ciphertext_size})
        return (count - 1) * self.block_size + last - TAG_SIZE

    def block_span(self, index: int) -> tuple[int, int]:
        """(offset, length) of sealed block ``index`` in the ciphertext."""
        start = self.header_size + index * self.sealed_block_size
        return start, min(self.sealed_block_size, self.ciphertext_size - start)

    @classmethod
    def for_plaintext(cls, header_size: int, block_size: int, plaintext_size: int) -> Layout:
        """The layout of a file that will hold ``plaintext_size`` bytes."""
        count = max(1, -(-plaintext_size // block_size))
        return cls(header_size, block_size, header_size + plaintext_size + count * TAG_SIZE)
