"""The ``KeyWrapper`` port on an Azure Key Vault RSA key, through the async ``CryptographyClient``.

The KEK is an RSA key (3072 bits, operations ``wrapKey``/``unwrapKey`` only) named
``KEY_VAULT_KEK_NAME``; its private part never leaves the vault. A KEK reference is
``<name>/<version>``, the Key Vault key version (32 hex digits) that wrapped a key.

Vault calls (measured against ``tests/support/keyvault_server.py``)::

    current()  GET /keys/{name}/ once per ``current_ttl`` (5 minutes), then from memory
    wrap()     none while the current version is cached: RSA-OAEP-256 with the public key,
               in this process (the SDK's local provider), by the version's own client
    unwrap()   POST /keys/{name}/{version}/unwrapkey, one per call (the private key is in the
               vault); the first unwrap under a version this process has not seen also GETs it
    create()   POST /keys/{name}/create: a new version (the first KEK, or a rotation)

A KEK rotated by another instance is used for new wraps here within ``current_ttl``; keys
wrapped under any version stay readable for as long as that version is enabled.

Errors as the secrets adapter (``shared.vault.azure``): the same retry policy inside the SDK
pipeline, then 404 -> ``KekMissingError``; 408/429/5xx after retries and connection errors ->
``VaultUnavailableError``; everything else (a wrapped key the vault will not unwrap, a
disabled version, 403) -> ``KeyVaultError``. Messages name the operation and the KEK
reference; never key bytes, wrapped bytes or tokens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.keys import KeyOperation, KeyVaultKey, KeyVaultKeyIdentifier
from azure.keyvault.keys.aio import KeyClient
from azure.keyvault.keys.crypto import KeyWrapAlgorithm
from azure.keyvault.keys.crypto.aio import CryptographyClient

from shared.config import Settings
from shared.errors import ConfigError, KeyVaultError
from shared.metrics import timed
from shared.vault.azure import (
    BACKEND,
    RetryOptions,
    TransportOptions,
    build_credential,
    classify,
    translated,
    vault_error,
)
from shared.vault.base import check_secret_name, format_key_reference, parse_key_reference
from shared.vault.kek import KekMissingError, Wrapped

__all__ = ["ALGORITHM", "KEY_SIZE", "AzureKeyWrapper"]

ALGORITHM: Final = KeyWrapAlgorithm.rsa_oaep_256
KEY_SIZE: Final = 3072
CURRENT_TTL: Final = 300.0  # seconds a fetched current version is used without asking again
_KEY_OPERATIONS: Final[list[str | KeyOperation]] = [KeyOperation.wrap_key, KeyOperation.unwrap_key]


class AzureKeyWrapper:
    """Wrap and unwrap keys with the RSA key ``name`` of one Azure Key Vault.

    One ``KeyClient`` (get, create) and one ``CryptographyClient`` per KEK version, built from
    the fetched ``KeyVaultKey`` so that the SDK never fetches it again. Clients are built on
    first use, never at construction.
    """

    def __init__(
        self,
        vault_url: str,
        credential: AsyncTokenCredential,
        name: str,
        *,
        retry: RetryOptions | None = None,
        transport: TransportOptions | None = None,
        current_ttl: float = CURRENT_TTL,
        key_size: int = KEY_SIZE,
        close_credential: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not vault_url.lower().startswith("https://"):
            raise ConfigError([f"Key Vault URL must be https://, got {vault_url!r}"])
        try:
            check_secret_name(name, "azure_kek")  # Key Vault's one rule for key and secret names
        except KeyVaultError:
            raise ConfigError([f"the KEK name must be 1-127 letters, digits or dashes, got {name!r}"]) from None
        self.vault_url = vault_url.rstrip("/")
        self.name = name
        self._credential = credential
        self._retry = retry or RetryOptions()
        self._transport = (transport or TransportOptions()).client_kwargs()
        self._current_ttl, self._clock = current_ttl, clock
        self._key_size = key_size
        self._close_credential = close_credential
        self._keys: KeyClient | None = None
        self._crypto: dict[str, CryptographyClient] = {}  # by version
        self._current: tuple[KeyVaultKey, float] | None = None  # (key, monotonic time fetched)
        self._lock = asyncio.Lock()  # one GET at a time: concurrent cold callers share its answer
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, *, retry: RetryOptions | None = None) -> AzureKeyWrapper:
        return cls(settings.key_vault_url, build_credential(settings), settings.key_vault_kek_name, retry=retry)

    # --- the port ---

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
            with translated("unwrap_key", wrapped.kek_reference, translate_kek):
                client = await self._version_client(version)
                return (await client.unwrap_key(ALGORITHM, wrapped.wrapped)).key

    async def current(self) -> str:
        with self._call("get_kek", self.name):
            kek = await self._current_key()
            return self._reference_of(kek.id)

    async def create(self) -> str:
        with self._call("create_kek", self.name):
            self._current = None
            kek = await self._client().create_rsa_key(
                self.name, size=self._key_size, key_operations=list(_KEY_OPERATIONS)
            )
            reference = self._reference_of(kek.id)
            self._current = (kek, self._clock())  # the newest version: no GET for the next wrap
            return reference

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        clients: list[KeyClient | CryptographyClient] = [*self._crypto.values()]
        if self._keys is not None:
            clients.append(self._keys)
        self._keys, self._crypto, self._current = None, {}, None
        try:
            for client in clients:
                await client.close()
        finally:
            if self._close_credential:
                await self._credential.close()

    # --- plumbing ---

    async def _current_key(self) -> KeyVaultKey:
        if (cached := self._fresh()) is not None:
            return cached
        async with self._lock:
            if (cached := self._fresh()) is not None:
                return cached
            kek = await self._client().get_key(self.name)
            if kek.properties.enabled is False:  # the service refuses operations on it anyway
                raise KeyVaultError("the current KEK version is disabled", operation="get_kek",
                                    details={"kek": self._reference_of(kek.id)})
            self._current = (kek, self._clock())
            return kek

    def _fresh(self) -> KeyVaultKey | None:
        if self._current is None:
            return None
        kek, fetched = self._current
        return kek if self._clock() - fetched < self._current_ttl else None

    async def _version_client(self, version: str) -> CryptographyClient:
        """The client of one exact version; the first use of a version this process has not seen GETs it."""
        if (client := self._crypto.get(version)) is not None:
            return client
        async with self._lock:
            if (client := self._crypto.get(version)) is not None:
                return client
            kek = await self._client().get_key(self.name, version)
            if self._reference_of(kek.id) != format_key_reference(self.name, version):
                raise KeyVaultError("the vault answered with another KEK version", operation="unwrap_key",
                                    details={"kek": format_key_reference(self.name, version)})
            return self._crypto_client(kek)

    def _crypto_client(self, kek: KeyVaultKey) -> CryptographyClient:
        """One client per version, built from the fetched key: the SDK never GETs it again."""
        version = KeyVaultKeyIdentifier(kek.id).version or ""
        client = self._crypto.get(version)
        if client is None:
            client = CryptographyClient(kek, self._credential, retry_policy=self._retry.policy(), **self._transport)
            self._crypto[version] = client
        return client

    def _client(self) -> KeyClient:
        if self._closed:
            raise KeyVaultError("the KEK adapter is closed", operation="key_vault")
        if self._keys is None:
            self._keys = KeyClient(self.vault_url, self._credential, retry_policy=self._retry.policy(),
                                   **self._transport)
        return self._keys

    def _reference_of(self, key_id: str | None) -> str:
        """``<name>/<version>`` of the exact key version the SDK names (refusing anything else)."""
        parsed = KeyVaultKeyIdentifier(key_id) if key_id else None
        if parsed is None or parsed.name != self.name or not parsed.version:
            raise KeyVaultError("the vault answered for another key or without a version", operation="azure_kek",
                                details={"kek": self.name})
        return format_key_reference(parsed.name, parsed.version)

    @contextmanager
    def _call(self, operation: str, reference: str) -> Iterator[None]:
        """Count the call and translate what the SDK raises (``shared.vault.azure.translated``)."""
        with timed(operation, backend=BACKEND), translated(operation, reference, translate_kek):
            yield


# --- translation ---


def translate_kek(exc: Exception, operation: str, reference: str) -> KeyVaultError:
    """The ``KeyVaultError`` for an SDK failure on the KEK; its text names only the operation and KEK."""
    kind, reason = _classify(exc, operation)
    return vault_error(exc, kind, f"{reason} (KEK {reference})", operation, {"kek": reference})


def _classify(exc: Exception, operation: str) -> tuple[type[KeyVaultError], str]:
    if isinstance(exc, ResourceNotFoundError):
        return KekMissingError, "KEK not found"
    status = exc.status_code if isinstance(exc, HttpResponseError) else None
    if status == 400 and operation == "unwrap_key":
        return KeyVaultError, "the vault refused to unwrap the key with this KEK version (HTTP 400)"
    if status == 403:
        return KeyVaultError, "access to the KEK is denied, or the KEK version is disabled"
    if status == 409:
        return KeyVaultError, "the KEK name is soft-deleted and cannot be reused until purged or recovered"
    return classify(exc)
