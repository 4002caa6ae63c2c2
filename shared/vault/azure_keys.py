"""One named Azure Key Vault *key*, through the async ``KeyClient`` and ``CryptographyClient``.

The base of the two key adapters: the KEK (``azure_kek.AzureKeyWrapper``, an RSA key that wraps)
and the signing key (``azure_signer.AzureSigner``, an EC key that signs). It owns what they
share: clients built on first use, the current version fetched once per ``current_ttl``
(``KEY_CACHE_SECONDS``, 60 s: a key removed or disabled is seen within it) and shared by concurrent
cold callers, each exact version fetched once per process
(a version's public half never changes), a key *reference* ``<name>/<version>`` read from the
identifiers the SDK returns (refusing any other key), and the translation of SDK errors::

    404                                   -> ``missing`` (the adapter's own missing-key error)
    403                                   -> KeyVaultError (access denied, or the version disabled)
    409                                   -> KeyVaultError (the name is soft-deleted)
    408/429/5xx after retries, no answer  -> VaultUnavailableError (as ``shared.vault.azure``)

Messages name the operation and the key reference; never key bytes, wrapped bytes or tokens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar, Final

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.keys import KeyOperation, KeyVaultKey, KeyVaultKeyIdentifier
from azure.keyvault.keys.aio import KeyClient
from azure.keyvault.keys.crypto.aio import CryptographyClient

from shared.errors import ConfigError, KeyVaultError
from shared.metrics import timed
from shared.vault.azure import BACKEND, RetryOptions, TransportOptions, classify, translated, vault_error
from shared.vault.base import check_secret_name, format_key_reference

__all__ = ["CURRENT_TTL", "AzureKey"]

CURRENT_TTL: Final = 60.0  # seconds a fetched current version is used without asking again (KEY_CACHE_SECONDS)


class AzureKey:
    """The key ``name`` of one vault: its current version, its exact versions, their crypto clients."""

    kind: ClassVar[str] = "key"  # in messages: "KEK", "signing key"
    missing: ClassVar[type[KeyVaultError]] = KeyVaultError  # raised for a 404
    detail: ClassVar[str] = "key"  # the name of the reference in error details

    def __init__(self, vault_url: str, credential: AsyncTokenCredential, name: str, *,
                 retry: RetryOptions | None = None, transport: TransportOptions | None = None,
                 current_ttl: float = CURRENT_TTL, close_credential: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not vault_url.lower().startswith("https://"):
            raise ConfigError([f"Key Vault URL must be https://, got {vault_url!r}"])
        try:
            check_secret_name(name, "azure_key")  # Key Vault's one rule for key and secret names
        except KeyVaultError:
            raise ConfigError([f"the {self.kind} name must be 1-127 letters, digits or dashes, got {name!r}"]) \
                from None
        self.vault_url, self.name = vault_url.rstrip("/"), name
        self._credential, self._close_credential = credential, close_credential
        self._retry = retry or RetryOptions()
        self._transport = (transport or TransportOptions()).client_kwargs()
        self._current_ttl, self._clock = current_ttl, clock
        self._keys: KeyClient | None = None
        self._versions: dict[str, KeyVaultKey] = {}
        self._crypto: dict[str, CryptographyClient] = {}  # by version
        self._current: tuple[KeyVaultKey, float] | None = None  # (key, monotonic time fetched)
        self._lock = asyncio.Lock()  # one GET at a time: concurrent cold callers share its answer
        self._closed = False

    async def current(self) -> str:
        with self._call(f"get_{self.kind_label}", self.name):
            return self._reference_of((await self._current_key()).id)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        clients: list[KeyClient | CryptographyClient] = [*self._crypto.values()]
        if self._keys is not None:
            clients.append(self._keys)
        self._keys, self._crypto, self._versions, self._current = None, {}, {}, None
        try:
            for client in clients:
                await client.close()
        finally:
            if self._close_credential:
                await self._credential.close()

    @property
    def kind_label(self) -> str:
        return self.kind.lower().replace(" ", "_")

    # --- for the adapters ---

    async def _create(self, key_type: str, operations: list[str | KeyOperation], **options: Any) -> str:
        """A new version (the first one, or a rotation); it becomes the current one here at once."""
        with self._call(f"create_{self.kind_label}", self.name):
            self._current = None
            key = await self._client().create_key(self.name, key_type, key_operations=operations, **options)
            self._current = (self._known(key), self._clock())
            return self._reference_of(key.id)

    async def _current_key(self) -> KeyVaultKey:
        if (cached := self._fresh()) is not None:
            return cached
        async with self._lock:
            if (cached := self._fresh()) is not None:
                return cached
            key = await self._client().get_key(self.name)
            if key.properties.enabled is False:  # the service refuses operations on it anyway
                raise KeyVaultError(f"the current {self.kind} version is disabled", operation=f"get_{self.kind_label}",
                                    details={self.detail: self._reference_of(key.id)})
            self._current = (self._known(key), self._clock())
            return key

    def _known(self, key: KeyVaultKey) -> KeyVaultKey:
        """Remember a fetched version (its public half never changes): no GET for it again."""
        self._versions[KeyVaultKeyIdentifier(key.id).version or ""] = key
        return key

    async def _version_key(self, version: str) -> KeyVaultKey:
        """One exact version; the first use of a version this process has not seen GETs it."""
        if (known := self._versions.get(version)) is not None:
            return known
        async with self._lock:
            if (known := self._versions.get(version)) is not None:
                return known
            key = await self._client().get_key(self.name, version)
            if self._reference_of(key.id) != format_key_reference(self.name, version):
                raise KeyVaultError(f"the vault answered with another {self.kind} version",
                                    operation=f"get_{self.kind_label}",
                                    details={self.detail: format_key_reference(self.name, version)})
            return self._known(key)

    def _crypto_client(self, key: KeyVaultKey) -> CryptographyClient:
        """One client per version, built from the fetched key: the SDK never GETs it again."""
        version = KeyVaultKeyIdentifier(key.id).version or ""
        client = self._crypto.get(version)
        if client is None:
            client = CryptographyClient(key, self._credential, retry_policy=self._retry.policy(), **self._transport)
            self._crypto[version] = client
        return client

    def _client(self) -> KeyClient:
        if self._closed:
            raise KeyVaultError(f"the {self.kind} adapter is closed", operation="key_vault")
        if self._keys is None:
            self._keys = KeyClient(self.vault_url, self._credential, retry_policy=self._retry.policy(),
                                   **self._transport)
        return self._keys

    def _fresh(self) -> KeyVaultKey | None:
        if self._current is None:
            return None
        key, fetched = self._current
        return key if self._clock() - fetched < self._current_ttl else None

    def _reference_of(self, key_id: str | None) -> str:
        """``<name>/<version>`` of the exact key version the SDK names (refusing anything else)."""
        parsed = KeyVaultKeyIdentifier(key_id) if key_id else None
        if parsed is None or parsed.name != self.name or not parsed.version:
            raise KeyVaultError("the vault answered for another key or without a version", operation="azure_key",
                                details={self.detail: self.name})
        return format_key_reference(parsed.name, parsed.version)

    @contextmanager
    def _call(self, operation: str, reference: str) -> Iterator[None]:
        """Count the call and translate what the SDK raises."""
        with timed(operation, backend=BACKEND), self._translated(operation, reference):
            yield

    def _translated(self, operation: str, reference: str) -> AbstractContextManager[None]:
        return translated(operation, reference, self._translate)

    def _translate(self, exc: Exception, operation: str, reference: str) -> KeyVaultError:
        """The ``KeyVaultError`` for an SDK failure; its text names only the operation and the key."""
        kind, reason = self._classify(exc, operation)
        return vault_error(exc, kind, f"{reason} ({self.kind} {reference})", operation, {self.detail: reference})

    def _classify(self, exc: Exception, operation: str) -> tuple[type[KeyVaultError], str]:
        status = exc.status_code if isinstance(exc, HttpResponseError) else None
        if isinstance(exc, ResourceNotFoundError) or status == 404:  # a raw request's 404 is a plain HttpResponseError
            return self.missing, f"{self.kind} not found"
        if status == 403:
            return KeyVaultError, f"access to the {self.kind} is denied, or the {self.kind} version is disabled"
        if status == 409:
            return KeyVaultError, f"the {self.kind} name is soft-deleted and cannot be reused until purged or recovered"
        return classify(exc)
