"""Signed statements: what the service vouches for, and the ES256 signatures over them (pure).

A statement is a label naming its kind and version, then its fields, each length-prefixed
(4 bytes, big-endian), so no two different field lists encode to the same bytes and a
signature over one kind never passes for another. Signatures are ECDSA on P-256 with SHA-256
in the JOSE ``ES256`` form (``r || s``, 32 bytes each): what an Azure Key Vault EC key returns
from its ``sign`` operation, so a statement signed in Key Vault verifies here with the public
key alone, and the local signer produces the same bytes.

Kinds (``docs/THREATS.md`` says what each one defends):

- ``intermediate_statement``: an intermediate key row of the envelope key mode (its id, the KEK
  version that wrapped it, the wrapped bytes). Whoever can write the database can wrap a key of
  their own with the KEK's *public* key; only the service can sign the row.
"""

from __future__ import annotations

import hashlib
import uuid

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared.errors import SignatureError

__all__ = [
    "INTERMEDIATE_LABEL",
    "POINT_SIZE",
    "SIGNATURE_SIZE",
    "es256_public_point",
    "es256_sign",
    "es256_verify",
    "intermediate_statement",
    "statement",
    "statement_digest",
]

INTERMEDIATE_LABEL = b"blobseal/intermediate-key/v1"
SIGNATURE_SIZE = 64  # r || s
POINT_SIZE = 65  # an uncompressed P-256 point: 0x04 || x || y
_COORDINATE = 32


def statement(label: bytes, *fields: bytes) -> bytes:
    """``label`` then each field with its length: an unambiguous encoding of the field list."""
    parts = [len(label).to_bytes(4, "big"), label]
    for value in fields:
        parts += [len(value).to_bytes(4, "big"), value]
    return b"".join(parts)


def statement_digest(message: bytes) -> bytes:
    """The SHA-256 digest that ES256 signs (what Key Vault's ``sign`` takes)."""
    return hashlib.sha256(message).digest()


def intermediate_statement(intermediate_id: uuid.UUID, kek_reference: str, wrapped_key: bytes) -> bytes:
    return statement(INTERMEDIATE_LABEL, intermediate_id.bytes, kek_reference.encode("ascii"), wrapped_key)


def es256_sign(private_key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """``r || s`` over SHA-256 of ``message`` (for the local signer; Key Vault signs remotely)."""
    if not isinstance(private_key.curve, ec.SECP256R1):
        raise ValueError("ES256 needs a P-256 key")
    r, s = decode_dss_signature(private_key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(_COORDINATE, "big") + s.to_bytes(_COORDINATE, "big")


def es256_public_point(private_key: ec.EllipticCurvePrivateKey) -> bytes:
    """The uncompressed point of the key's public half (what a verifier needs)."""
    return private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def es256_verify(public_point: bytes, message: bytes, signature: bytes) -> None:
    """Raise ``SignatureError`` unless ``signature`` is ES256 over ``message`` by ``public_point``'s key."""
    if len(signature) != SIGNATURE_SIZE or len(public_point) != POINT_SIZE:
        raise SignatureError("malformed signature or public key", operation="verify_signature",
                             details={"signature_size": len(signature), "point_size": len(public_point)})
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_point)
        r, s = int.from_bytes(signature[:_COORDINATE], "big"), int.from_bytes(signature[_COORDINATE:], "big")
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise SignatureError("the signature does not verify", operation="verify_signature") from None
