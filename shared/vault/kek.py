"""The key-encryption key (KEK) port of the envelope key mode, and its local adapter.

In ``KEY_MODE=envelope`` a file's key is wrapped by an *intermediate* key, and an intermediate
key is wrapped by the KEK. The KEK never leaves its store: Azure Key Vault holds it as an RSA
*key* (``shared.vault.azure_kek.AzureKeyWrapper``: wrap and unwrap through the SDK's
``CryptographyClient``); in local mode it is a secret of the local JSON vault
(``LocalKeyWrapper``: AES key wrap, RFC 3394, in this process).

A *KEK reference* ``<name>/<version>`` names the exact KEK version that wrapped a key; it is
recorded beside the wrapped key, so rotating the KEK (a new version) leaves every recorded
wrapping readable until it is rewrapped.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from shared.errors import KeyVaultError, SecretNotFoundError
from shared.vault.base import KeyVault, SecretVersion, format_key_reference, parse_key_reference, set_in_new_vault

__all__ = ["DEFAULT_KEK_NAME", "KekMissingError", "KeyWrapper", "LocalKeyWrapper", "Wrapped"]

DEFAULT_KEK_NAME = "blobseal-kek"
_KEK_BYTES = 32


class KekMissingError(KeyVaultError):
    """The KEK does not exist (yet): created only where no wrapped key is recorded (local mode)."""


@dataclass(frozen=True)
class Wrapped:
    """A key wrapped by one exact KEK version (the wrapped bytes are not secret, but not logged either)."""

    kek_reference: str
    wrapped: bytes = field(repr=False)


class KeyWrapper(Protocol):
    """Wrap and unwrap 32-byte keys with a KEK that never leaves its store.

    Errors: ``KekMissingError`` when there is no KEK; ``VaultUnavailableError`` for transient
    failures (after the adapter's own retries); ``KeyVaultError`` for the rest, a wrapped key
    that does not unwrap included. Messages never hold key material.
    """

    async def wrap(self, key: bytes) -> Wrapped:
        """Wrap ``key`` with the current (latest enabled) KEK version."""
        ...

    async def unwrap(self, wrapped: Wrapped) -> bytes:
        """Unwrap with the exact KEK version ``wrapped.kek_reference`` names."""
        ...

    async def current(self) -> str:
        """The KEK reference that ``wrap`` uses now (``KekMissingError`` if none)."""
        ...

    async def create(self) -> str:
        """Add a new KEK version (the first one, or a rotation) and return its reference."""
        ...

    async def close(self) -> None: ...


class LocalKeyWrapper:
    """The KEK as a secret of a ``KeyVault`` (the local JSON vault); AES key wrap (RFC 3394)."""

    def __init__(self, vault: KeyVault, name: str = DEFAULT_KEK_NAME) -> None:
        self._vault = vault
        self._name = name

    async def wrap(self, key: bytes) -> Wrapped:
        secret = await self._latest()
        return Wrapped(secret.properties.key_reference, aes_key_wrap(secret.value, key))

    async def unwrap(self, wrapped: Wrapped) -> bytes:
        name, version = parse_key_reference(wrapped.kek_reference)
        if name != self._name:
            raise KeyVaultError("the key was wrapped by another KEK", operation="unwrap_key",
                                details={"kek": wrapped.kek_reference})
        try:
            secret = await self._vault.get_secret(name, version)
        except SecretNotFoundError:
            raise KekMissingError("the local vault holds no such KEK version", operation="unwrap_key",
                                  details={"kek": wrapped.kek_reference}) from None
        try:
            return aes_key_unwrap(secret.value, wrapped.wrapped)
        except InvalidUnwrap:
            raise KeyVaultError("the wrapped key does not unwrap with its KEK", operation="unwrap_key",
                                details={"kek": wrapped.kek_reference}) from None

    async def current(self) -> str:
        return (await self._latest()).properties.key_reference

    async def create(self) -> str:
        """A new KEK version; a missing local vault is created (the caller checked no key is recorded)."""
        props = await set_in_new_vault(self._vault, self._name, secrets.token_bytes(_KEK_BYTES))
        return format_key_reference(props.name, props.version)

    async def close(self) -> None:
        """The vault is shared with the secret custody; its owner closes it."""

    async def _latest(self) -> SecretVersion:
        try:
            return await self._vault.get_secret(self._name)
        except SecretNotFoundError:
            raise KekMissingError("the local vault holds no KEK", operation="wrap_key",
                                  details={"kek": self._name}) from None
