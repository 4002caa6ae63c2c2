"""The signing key port: how the service vouches for what it made, and its local adapter.

Whoever can write the database can write any row; only the holder of the signing key can sign
one. The service signs what it must be able to prove its own later (intermediate key rows of the
envelope key mode; the access log's digests) and verifies before it trusts. The key is an EC
P-256 key that only signs (ES256, ``shared.crypto.attest``): in Azure a Key Vault key the app may
use to sign and read the public half of, nothing else (``shared.vault.azure_signer``); locally a
secret of the local vault, sealed at rest like every other (``LocalSigner``).

A *signing key reference* ``<name>/<version>`` names the exact version that signed; it is
stored beside the signature, so a new version (a rotation) leaves every older signature
verifiable for as long as that version exists. Verifying needs only the public half, fetched
once per version and process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.crypto.attest import es256_public_point, es256_sign, es256_verify
from shared.errors import KeyVaultError, SecretNotFoundError, SignatureError
from shared.vault.base import KeyVault, SecretVersion, format_key_reference, parse_key_reference, set_in_new_vault

__all__ = ["DEFAULT_SIGNING_KEY_NAME", "LocalSigner", "Signature", "Signer", "SigningKeyMissingError", "verify"]

DEFAULT_SIGNING_KEY_NAME = "blobseal-signing"


class SigningKeyMissingError(KeyVaultError):
    """There is no signing key (yet): made only where nothing signed is recorded (local mode)."""


@dataclass(frozen=True)
class Signature:
    """An ES256 signature (``r || s``) and the exact signing key version that made it."""

    key_reference: str
    value: bytes


class Signer(Protocol):
    """Sign with the current version of the signing key ``name``; give the public half of any version.

    Errors: ``SigningKeyMissingError`` when there is no signing key; ``VaultUnavailableError`` for
    transient failures; ``KeyVaultError`` for the rest.
    """

    name: str

    async def sign(self, message: bytes) -> Signature: ...

    async def public_key(self, key_reference: str) -> bytes:
        """The uncompressed P-256 point of the exact version ``key_reference`` names."""
        ...

    async def current(self) -> str:
        """The reference ``sign`` uses now (``SigningKeyMissingError`` if none)."""
        ...

    async def create(self) -> str:
        """Add a new version (the first one, or a rotation) and return its reference."""
        ...

    async def close(self) -> None: ...


async def verify(signer: Signer, message: bytes, signature: Signature) -> None:
    """Raise ``SignatureError`` unless ``signature`` is the signing key's, over exactly ``message``."""
    try:
        name, _ = parse_key_reference(signature.key_reference)
    except KeyVaultError:
        name = ""
    if name != signer.name:
        raise SignatureError("signed by a key that is not the service's signing key", operation="verify_signature",
                             details={"signing_key": signature.key_reference[:200]})
    es256_verify(await signer.public_key(signature.key_reference), message, signature.value)


class LocalSigner:
    """The signing key as a secret of a ``KeyVault`` (the local vault): a PKCS#8 P-256 key, used here."""

    def __init__(self, vault: KeyVault, name: str = DEFAULT_SIGNING_KEY_NAME) -> None:
        self.name = name
        self._vault = vault
        self._keys: dict[str, ec.EllipticCurvePrivateKey] = {}  # by reference: parsed once

    async def sign(self, message: bytes) -> Signature:
        secret = await self._latest()
        reference = secret.properties.key_reference
        return Signature(reference, es256_sign(self._private(reference, secret.value), message))

    async def public_key(self, key_reference: str) -> bytes:
        private = self._keys.get(key_reference)
        if private is None:
            name, version = parse_key_reference(key_reference)
            try:
                secret = await self._vault.get_secret(name, version)
            except SecretNotFoundError:
                raise SigningKeyMissingError("the local vault holds no such signing key version",
                                             operation="verify_signature", details={"signing_key": key_reference}) \
                    from None
            private = self._private(key_reference, secret.value)
        return es256_public_point(private)

    async def current(self) -> str:
        return (await self._latest()).properties.key_reference

    async def create(self) -> str:
        """A new version; a missing local vault is created (the caller checked nothing signed is recorded)."""
        value = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        props = await set_in_new_vault(self._vault, self.name, value)
        return format_key_reference(props.name, props.version)

    async def close(self) -> None:
        """The vault is shared with the key custodies; its owner closes it."""
        self._keys.clear()

    async def _latest(self) -> SecretVersion:
        try:
            return await self._vault.get_secret(self.name)
        except SecretNotFoundError:
            raise SigningKeyMissingError("the local vault holds no signing key", operation="sign",
                                         details={"signing_key": self.name}) from None

    def _private(self, reference: str, value: bytes) -> ec.EllipticCurvePrivateKey:
        if (known := self._keys.get(reference)) is not None:
            return known
        try:
            private = serialization.load_der_private_key(value, password=None)
        except ValueError:
            private = None
        if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(private.curve, ec.SECP256R1):
            raise KeyVaultError("the signing key in the local vault is not a P-256 private key", operation="sign",
                                details={"signing_key": reference})
        self._keys[reference] = private
        return private
