"""The ``KeyWrapper`` port on an Azure Key Vault RSA key, through the async ``CryptographyClient``.

The KEK is an RSA key (3072 bits, operations ``wrapKey``/``unwrapKey`` only) named
``KEY_VAULT_KEK_NAME``; its private part never leaves the vault. A KEK reference is
``<name>/<version>``, the Key Vault key version (32 hex digits) that wrapped a key.

Vault calls (measured against ``tests/support/keyvault_server.py``)::

    current()  GET /keys/{name}/ once per ``current_ttl`` (``KEY_CACHE_SECONDS``, 60 s), then from memory
    wrap()     none while the current version is cached: RSA-OAEP-256 with the public key,
               in this process (the SDK's local provider), by the version's own client
    unwrap()   POST /keys/{name}/{version}/unwrapkey, one per call (the private key is in the
               vault); the first unwrap under a version this process has not seen also GETs it
    create()   POST /keys/{name}/create: a new version (the first KEK, or a rotation)

A KEK rotated, removed or disabled by another hand is seen here within ``current_ttl``; keys
wrapped under any version stay readable for as long as that version is enabled.

Errors as every key adapter (``shared.vault.azure_keys``): 404 -> ``KekMissingError``; 400 on an
unwrap (a wrapped key the vault will not unwrap) -> ``KeyVaultError``. Wrapping with the public
key proves nothing about who wrapped: an intermediate key row is trusted only with the signing
key's signature (``shared.custody.envelope``, ``docs/THREATS.md``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError
from azure.keyvault.keys import KeyOperation
from azure.keyvault.keys.crypto import KeyWrapAlgorithm

from shared.config import Settings
from shared.errors import KeyVaultError
from shared.metrics import timed
from shared.vault.azure import BACKEND, RetryOptions, build_credential
from shared.vault.azure_keys import AzureKey
from shared.vault.base import parse_key_reference
from shared.vault.kek import KekMissingError, Wrapped

__all__ = ["ALGORITHM", "KEY_SIZE", "AzureKeyWrapper"]

ALGORITHM: Final = KeyWrapAlgorithm.rsa_oaep_256
KEY_SIZE: Final = 3072
_KEY_OPERATIONS: Final[list[str | KeyOperation]] = [KeyOperation.wrap_key, KeyOperation.unwrap_key]


class AzureKeyWrapper(AzureKey):
    """Wrap and unwrap keys with the RSA key ``name`` of one Azure Key Vault (the ``KeyWrapper`` port)."""

    kind: ClassVar[str] = "KEK"
    missing: ClassVar[type[KeyVaultError]] = KekMissingError
    detail: ClassVar[str] = "kek"

    def __init__(self, vault_url: str, credential: AsyncTokenCredential, name: str, *, key_size: int = KEY_SIZE,
                 **options: Any) -> None:
        super().__init__(vault_url, credential, name, **options)
        self._key_size = key_size

    @classmethod
    def from_settings(cls, settings: Settings, *, retry: RetryOptions | None = None) -> AzureKeyWrapper:
        return cls(settings.key_vault_url, build_credential(settings), settings.key_vault_kek_name, retry=retry,
                   current_ttl=settings.key_ttl_seconds)

    async def wrap(self, key: bytes) -> Wrapped:
        with self._call("wrap_key", self.name):
            kek = await self._current_key()
            result = await self._crypto_client(kek).wrap_key(ALGORITHM, key)
            return Wrapped(self._reference_of(result.key_id), result.encrypted_key)

    async def unwrap(self, wrapped: Wrapped) -> bytes:
        with timed("unwrap_key", backend=BACKEND):
            name, version = parse_key_reference(wrapped.kek_reference)
            if name != self.name:
                raise KeyVaultError("the key was wrapped by another KEK", operation="unwrap_key",
                                    details={"kek": wrapped.kek_reference, "expected": self.name})
            with self._translated("unwrap_key", wrapped.kek_reference):
                client = self._crypto_client(await self._version_key(version))
                return (await client.unwrap_key(ALGORITHM, wrapped.wrapped)).key

    async def create(self) -> str:
        return await self._create("RSA", list(_KEY_OPERATIONS), size=self._key_size)

    def _classify(self, exc: Exception, operation: str) -> tuple[type[KeyVaultError], str]:
        status = exc.status_code if isinstance(exc, HttpResponseError) else None
        if status == 400 and operation == "unwrap_key":
            return KeyVaultError, "the vault refused to unwrap the key with this KEK version (HTTP 400)"
        return super()._classify(exc, operation)
