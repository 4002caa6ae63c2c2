"""Key derivation, key commitment and the sealing of single blocks (STREAM over AES-256-GCM).

From the 256-bit file key K and the header prefix P (the header without its commitment,
which holds a random 32-byte salt)::

    okm          = HKDF-SHA256(ikm=K, salt=P.salt, info=b"blobseal v1" || P, length=71)
    subkey       = okm[0:32]     AES-256-GCM key of this encryption only
    nonce_prefix = okm[32:39]
    commitment   = okm[39:71]    stored in the header, checked before any block is opened

    nonce(i, last) = nonce_prefix || uint32_be(i) || (0x01 if last else 0x00)
    aad            = the whole encoded header (prefix || commitment)

Every block is bound to its position, to finality, to this encryption (salt) and to the
header. All authentication failures raise the same ``IntegrityError``.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.crypto.format import COMMITMENT_SIZE, KEY_SIZE, MAX_BLOCKS, TAG_SIZE, Buffer, Header
from shared.errors import EncryptionError, IntegrityError

__all__ = ["BlockCipher", "aead_open_into", "aead_seal_into", "open_header", "seal_header"]

_INFO = b"blobseal v1"
_NONCE_PREFIX_SIZE = 7
_NONCE = struct.Struct(">7sIB")


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise EncryptionError("file key must be 32 bytes", operation="derive_key")


def _derive(key: bytes, header: Header) -> tuple[bytes, bytes, bytes]:
    _check_key(key)
    prefix = header.encode_prefix()
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_SIZE + _NONCE_PREFIX_SIZE + COMMITMENT_SIZE,
        salt=header.salt,
        info=_INFO + prefix,
    ).derive(bytes(key))
    return okm[:KEY_SIZE], okm[KEY_SIZE : KEY_SIZE + _NONCE_PREFIX_SIZE], okm[KEY_SIZE + _NONCE_PREFIX_SIZE :]


def seal_header(key: bytes, header: Header) -> tuple[Header, BlockCipher]:
    """Commit ``header`` to ``key``: the header with its commitment, and the cipher for its blocks."""
    subkey, nonce_prefix, commitment = _derive(key, header)
    sealed = replace(header, commitment=commitment)
    return sealed, BlockCipher(subkey, nonce_prefix, sealed.encode())


def open_header(key: bytes, header: Header) -> BlockCipher:
    """The cipher for the blocks of ``header``, after checking its key commitment."""
    subkey, nonce_prefix, commitment = _derive(key, header)
    if not hmac.compare_digest(commitment, header.commitment):
        raise IntegrityError("authentication failed (wrong key or modified header)", operation="open_header")
    return BlockCipher(subkey, nonce_prefix, header.encode())


def aead_seal_into(aead: AESGCM, nonce: bytes, plaintext: Buffer, aad: bytes, out: Buffer) -> None:
    """AES-GCM: write ciphertext || 16-byte tag into ``out``."""
    aead.encrypt_into(nonce, plaintext, aad, out)


def _refused(index: int) -> IntegrityError:
    """Every authentication failure alike: no hint of why, only where (the block index is no secret)."""
    return IntegrityError("authentication failed", operation="open_block", details={"block": index})


def aead_open_into(aead: AESGCM, nonce: bytes, sealed: Buffer, aad: bytes, out: Buffer, index: int = 0) -> None:
    """AES-GCM: check the tag of ciphertext || tag and write the plaintext into ``out``.

    Every failure is the same ``IntegrityError``; ``out`` must then be discarded.
    """
    if len(memoryview(sealed)) < TAG_SIZE:
        raise _refused(index)
    try:
        aead.decrypt_into(nonce, sealed, aad, out)
    except InvalidTag:
        raise _refused(index) from None


class BlockCipher:
    """Seals and opens single blocks of one encryption. Holds key material: never logged."""

    __slots__ = ("_aead", "_nonce_prefix", "aad")

    def __init__(self, subkey: bytes, nonce_prefix: bytes, aad: bytes) -> None:
        self._aead = AESGCM(subkey)
        self._nonce_prefix = nonce_prefix
        self.aad = aad

    def __repr__(self) -> str:
        return "BlockCipher(<redacted>)"

    def nonce(self, index: int, last: bool) -> bytes:
        if not 0 <= index < MAX_BLOCKS:
            raise EncryptionError("block index out of range", operation="nonce", details={"index": index})
        return _NONCE.pack(self._nonce_prefix, index, last)

    def seal_into(self, index: int, last: bool, plaintext: Buffer, out: Buffer) -> None:
        """Write ciphertext||tag of ``plaintext`` into ``out`` (exactly len(plaintext) + 16 bytes)."""
        aead_seal_into(self._aead, self.nonce(index, last), plaintext, self.aad, out)

    def open_into(self, index: int, last: bool, sealed: Buffer, out: Buffer) -> None:
        """Write the plaintext of one sealed block into ``out`` or raise IntegrityError.

        On failure ``out`` may hold unverified bytes: the caller must discard it.
        """
        aead_open_into(self._aead, self.nonce(index, last), sealed, self.aad, out, index)

    def seal_run_into(self, index: int, count: int, block: int, plaintext: memoryview, out: memoryview) -> None:
        """Seal ``count`` consecutive full, non-final blocks (the hot path: one tight loop)."""
        self._check_run(index, count)
        aead, pack, prefix, aad, sealed = self._aead, _NONCE.pack, self._nonce_prefix, self.aad, block + TAG_SIZE
        for i in range(count):
            aead.encrypt_into(pack(prefix, index + i, False), plaintext[i * block : (i + 1) * block], aad,
                              out[i * sealed : (i + 1) * sealed])

    def open_run_into(self, index: int, count: int, block: int, sealed_data: memoryview, out: memoryview) -> None:
        """Open ``count`` consecutive full, non-final blocks into ``out``; IntegrityError on any failure."""
        self._check_run(index, count)
        aead, pack, prefix, aad, sealed = self._aead, _NONCE.pack, self._nonce_prefix, self.aad, block + TAG_SIZE
        i = 0
        try:
            for i in range(count):
                aead.decrypt_into(pack(prefix, index + i, False), sealed_data[i * sealed : (i + 1) * sealed], aad,
                                  out[i * block : (i + 1) * block])
        except InvalidTag:
            raise _refused(index + i) from None

    def _check_run(self, index: int, count: int) -> None:
        if index < 0 or index + count > MAX_BLOCKS:
            raise EncryptionError("block index out of range", operation="nonce", details={"index": index + count})

    def open(self, index: int, last: bool, sealed: Buffer) -> bytes:
        """The plaintext of one sealed block, or IntegrityError; nothing is released on failure."""
        out = bytearray(max(0, len(memoryview(sealed)) - TAG_SIZE))
        self.open_into(index, last, sealed, out)
        return bytes(out)
