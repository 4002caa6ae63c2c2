"""Wrapping a file key under an intermediate key, bound to its row (envelope key mode; pure).

A wrapped file key is ``nonce (12) || AES-256-GCM(intermediate key, nonce, file key, aad)``
with the associated data::

    b"blobseal/file-key/v1" || file_id (16 bytes) || intermediate_id (16 bytes) || key_reference (ASCII)

so a wrapped key opens only for the file, the key reference and the intermediate key it was
made for: copied to another file's row, to another version of the same file, or pointed at
another intermediate key, it is refused (``WrappedKeyError``). Nonces are random; an
intermediate key wraps at most ``ENVELOPE_INTERMEDIATE_MAX_FILES`` (10 million at the most)
keys, far below the 2^32 random-nonce bound of AES-GCM.
"""

from __future__ import annotations

import os
import uuid

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.crypto.format import KEY_SIZE
from shared.errors import WrappedKeyError

__all__ = ["WRAPPED_SIZE", "unwrap_file_key", "wrap_file_key"]

_NONCE_BYTES = 12
_LABEL = b"blobseal/file-key/v1"
WRAPPED_SIZE = _NONCE_BYTES + KEY_SIZE + 16


def _aad(file_id: uuid.UUID, intermediate_id: uuid.UUID, key_reference: str) -> bytes:
    return _LABEL + file_id.bytes + intermediate_id.bytes + key_reference.encode("ascii")


def wrap_file_key(intermediate: bytes, key: bytes, *, file_id: uuid.UUID, intermediate_id: uuid.UUID,
                  key_reference: str) -> bytes:
    if len(intermediate) != KEY_SIZE or len(key) != KEY_SIZE:
        raise ValueError("the intermediate key and the file key must be 32 bytes")
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(intermediate).encrypt(nonce, key, _aad(file_id, intermediate_id, key_reference))


def unwrap_file_key(intermediate: bytes, wrapped: bytes, *, file_id: uuid.UUID, intermediate_id: uuid.UUID,
                    key_reference: str) -> bytes:
    """The file key, or ``WrappedKeyError`` if ``wrapped`` was not made for exactly this row."""
    if len(wrapped) != WRAPPED_SIZE:
        raise WrappedKeyError("the wrapped file key has the wrong size", operation="unwrap_file_key",
                              details={"file_id": str(file_id), "size": len(wrapped)})
    try:
        return AESGCM(intermediate).decrypt(wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:],
                                            _aad(file_id, intermediate_id, key_reference))
    except InvalidTag:
        raise WrappedKeyError("the wrapped file key does not belong to this file's key row",
                              operation="unwrap_file_key",
                              details={"file_id": str(file_id), "key_reference": key_reference}) from None
