"""The ``KeyVault`` port on Azure Key Vault secrets, through the async ``SecretClient``.

Owns how a file key lives in Key Vault (secret ``file-<file_id>``, value base64 text, content
type ``application/octet-stream``, one version per key, rotation = add a version and disable
the old one), the retry policy, and the translation of SDK errors::

    ResourceNotFoundError (404)                          -> SecretNotFoundError
    403 with inner error "SecretDisabled"                -> SecretDisabledError
    408/429/5xx left after retries, connection errors,
    timeouts, a delete that does not finish              -> VaultUnavailableError
    ClientAuthenticationError, any other 403, 409
    (name soft-deleted), other SDK errors                -> KeyVaultError

Retries happen inside the SDK pipeline (azure-core ``AsyncRetryPolicy``): 408, 429, 500, 502,
503, 504 and connection errors, waiting what ``Retry-After`` says when the service sends it and
a jittered exponential backoff otherwise, all bounded by ``RetryOptions.deadline``.

The client (and its aiohttp session) is built on first use, never at construction. Messages name
the operation and the secret; never a value or a token.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.policies import AsyncRetryPolicy
from azure.identity.aio import ClientSecretCredential, DefaultAzureCredential
from azure.keyvault.secrets import KeyVaultSecret
from azure.keyvault.secrets import SecretProperties as SdkSecretProperties
from azure.keyvault.secrets.aio import SecretClient

from shared.config import Settings
from shared.errors import (
    ConfigError,
    KeyVaultError,
    SecretDisabledError,
    SecretNotFoundError,
    VaultUnavailableError,
)
from shared.metrics import timed
from shared.vault.base import SecretProperties, SecretVersion, check_secret_name

__all__ = [
    "AzureKeyVault",
    "RetryOptions",
    "TransportOptions",
    "build_credential",
    "classify",
    "translate",
    "translated",
    "vault_error",
]

logger = logging.getLogger(__name__)

BACKEND: Final = "azure"
CONTENT_TYPE: Final = "application/octet-stream"
PING_NAME: Final = "blobseal-ping"  # never created: a 404 for it proves reachability and auth
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNAVAILABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_SOFT_DELETED = frozenset({"ObjectIsDeletedButRecoverable", "ObjectIsBeingDeleted"})
# azure-core retries PATCH only on 500/503/504 (and any status with Retry-After), not after a
# dropped connection. Disabling a version is idempotent, so that call also retries PATCH.
_IDEMPOTENT_METHODS = frozenset({"HEAD", "GET", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH"})


class _JitteredRetryPolicy(AsyncRetryPolicy):  # type: ignore[type-arg]
    """azure-core's policy with the backoff (not Retry-After) scaled by a random 0.5-1.0.

    Many function instances throttled by the same vault would otherwise retry in lockstep.
    """

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        return float(super().get_backoff_time(settings)) * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class RetryOptions:
    """How one vault call retries (see the azure-core ``AsyncRetryPolicy`` keywords).

    ``status`` counts 408/429/5xx answers, ``connect`` failures before the request left,
    ``read`` failures after it left; ``total`` caps all of them. Without ``Retry-After`` the n-th
    retry waits ``backoff_factor * 2**(n-1)`` (the first one is immediate), at most
    ``backoff_max``, jittered. ``deadline`` bounds the whole call, waits included.
    """

    total: int = 6
    status: int = 6
    connect: int = 3
    read: int = 2
    backoff_factor: float = 0.8
    backoff_max: float = 30.0
    deadline: float = 60.0

    def __post_init__(self) -> None:
        problems = [f"RetryOptions.{k} must be >= 0" for k, v in self._numbers().items() if v < 0]
        if self.deadline <= 0:
            problems.append("RetryOptions.deadline must be > 0")
        if problems:
            raise ConfigError(problems)

    def _numbers(self) -> dict[str, float]:
        return {
            "total": self.total,
            "status": self.status,
            "connect": self.connect,
            "read": self.read,
            "backoff_factor": self.backoff_factor,
            "backoff_max": self.backoff_max,
        }

    def policy(self) -> AsyncRetryPolicy:  # type: ignore[type-arg]
        return _JitteredRetryPolicy(
            retry_total=self.total,
            retry_status=self.status,
            retry_connect=self.connect,
            retry_read=self.read,
            retry_backoff_factor=self.backoff_factor,
            retry_backoff_max=self.backoff_max,
            timeout=self.deadline,
        )


@dataclass(frozen=True)
class TransportOptions:
    """How an SDK client reaches the vault: the Key Vault client keywords every adapter passes."""

    verify_challenge_resource: bool = True
    connection_verify: bool | str = True
    connection_timeout: float = 10.0
    read_timeout: float = 30.0
    api_version: str | None = None

    def client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "verify_challenge_resource": self.verify_challenge_resource,
            "connection_verify": self.connection_verify,
            "connection_timeout": self.connection_timeout,
            "read_timeout": self.read_timeout,
        }
        if self.api_version is not None:
            kwargs["api_version"] = self.api_version
        return kwargs


def build_credential(settings: Settings) -> AsyncTokenCredential:
    """A service principal when a client secret is configured, else the managed identity chain."""
    if settings.key_vault_client_secret:
        return ClientSecretCredential(
            settings.key_vault_tenant_id, settings.key_vault_client_id, settings.key_vault_client_secret
        )
    # Passing managed_identity_client_id=None would override AZURE_CLIENT_ID: pass it only if set.
    if settings.key_vault_client_id:
        return DefaultAzureCredential(managed_identity_client_id=settings.key_vault_client_id)
    return DefaultAzureCredential()


class AzureKeyVault:
    """Secrets ``file-<id>`` in one Azure Key Vault; each key is a version of its file's secret.

    Deleting is a soft delete: the name cannot be set again until the deleted secret is purged
    (7-90 days, or an explicit purge), which is why rotation never deletes.
    """

    def __init__(
        self,
        vault_url: str,
        credential: AsyncTokenCredential,
        *,
        retry: RetryOptions | None = None,
        verify_challenge_resource: bool = True,
        connection_verify: bool | str = True,
        connection_timeout: float = 10.0,
        read_timeout: float = 30.0,
        delete_poll_interval: float = 2.0,
        delete_timeout: float = 120.0,
        api_version: str | None = None,
        close_credential: bool = True,
    ) -> None:
        if not vault_url.lower().startswith("https://"):
            raise ConfigError([f"Key Vault URL must be https://, got {vault_url!r}"])
        self.vault_url = vault_url
        self._credential = credential
        self._retry = retry or RetryOptions()
        self._transport = TransportOptions(
            verify_challenge_resource, connection_verify, connection_timeout, read_timeout, api_version
        ).client_kwargs()
        self._delete_poll_interval = delete_poll_interval
        self._delete_timeout = delete_timeout
        self._close_credential = close_credential
        self._client: SecretClient | None = None
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, *, retry: RetryOptions | None = None) -> AzureKeyVault:
        return cls(settings.key_vault_url, build_credential(settings), retry=retry)

    # --- the port ---

    async def set_secret(self, name: str, value: bytes, *, expires_on: datetime | None = None) -> SecretProperties:
        with self._call("set_secret", name):
            _check_expiry(expires_on)
            secret = await self._secrets().set_secret(
                name, _encode(value), content_type=CONTENT_TYPE, expires_on=expires_on
            )
            return _properties(secret.properties, "set_secret", name)

    async def get_secret(self, name: str, version: str | None = None) -> SecretVersion:
        with self._call("get_secret", name, version):
            secret = await self._secrets().get_secret(name, version)
            return _secret_version(secret, name)

    async def disable_version(self, name: str, version: str) -> None:
        with self._call("disable_version", name, version):
            await self._secrets().update_secret_properties(
                name, version, enabled=False, retry_on_methods=_IDEMPOTENT_METHODS
            )

    async def delete_secret(self, name: str) -> None:
        """Delete ``name`` (every version): soft-delete, wait until the service reports it deleted, then
        purge it where the vault allows (purge protection, or no purge permission, keeps it soft-deleted
        until the retention ends: only a vault administrator could recover it)."""
        with self._call("delete_secret", name):
            async with asyncio.timeout(self._delete_timeout):
                # ``_polling_interval`` is the SDK's own (private) knob for its delete poller.
                await self._secrets().delete_secret(name, _polling_interval=self._delete_poll_interval)
        with self._call("purge_deleted_secret", name):
            try:
                await self._secrets().purge_deleted_secret(name)
            except HttpResponseError as exc:
                if exc.status_code != 403:
                    raise
                logger.info("secret %s deleted; not purged (purge protection or no purge permission): it stays "
                            "soft-deleted until the vault's retention ends", name)

    async def list_versions(self, name: str) -> list[SecretProperties]:
        with self._call("list_versions", name):
            try:
                found = [p async for p in self._secrets().list_properties_of_secret_versions(name)]
            except ResourceNotFoundError:
                return []
            listed = [_properties(p, "list_versions", name) for p in found]
        # The service lists versions in id order, and created_on has one-second resolution:
        # versions made within the same second come back in id order.
        return sorted(listed, key=lambda p: (p.created_on, p.version))

    async def ping(self) -> None:
        with self._call("ping", PING_NAME):
            try:
                await self._secrets().get_secret(PING_NAME)
            except ResourceNotFoundError:
                return

    async def initialize(self) -> None:
        """Nothing to create: a Key Vault is deployed (``infra/``), never made by the app."""

    async def check_writable(self) -> None:
        """Not probed: a probe would leave a secret version behind (a refused create shows in each upload's
        failure, and ``ping`` covers reachability)."""

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        client, self._client = self._client, None
        try:
            if client is not None:
                await client.close()
        finally:
            if self._close_credential:
                await self._credential.close()

    # --- plumbing ---

    def _secrets(self) -> SecretClient:
        if self._closed:
            raise KeyVaultError("the vault adapter is closed", operation="key_vault")
        if self._client is None:
            self._client = SecretClient(
                self.vault_url, self._credential, retry_policy=self._retry.policy(), **self._transport
            )
        return self._client

    @contextmanager
    def _call(self, operation: str, name: str, version: str | None = None) -> Iterator[None]:
        """Count the call, check its arguments, translate what the SDK raises."""
        with timed(operation, backend=BACKEND):
            check_secret_name(name, operation, version)
            with translated(operation, name):
                yield


# --- translation ---

Translator = Callable[[Exception, str, str], KeyVaultError]


@contextmanager
def translated(operation: str, name: str, translator: Translator | None = None) -> Iterator[None]:
    """Raise what the SDK raises as the ``KeyVaultError`` that ``translator`` (default ``translate``) makes."""
    try:
        yield
    except (AzureError, ValueError, TimeoutError) as exc:
        error = (translator or translate)(exc, operation, name)
        if isinstance(error, VaultUnavailableError):
            logger.warning("key vault unavailable: %s on %s (%s)", operation, name, error.details)
        raise error from exc


def translate(exc: Exception, operation: str, name: str) -> KeyVaultError:
    """The ``KeyVaultError`` for an SDK failure; its text names only the operation and secret."""
    kind, reason = classify(exc)
    return vault_error(exc, kind, f"{reason} (secret {name})", operation, {"secret_name": name})


def vault_error(
    exc: Exception, kind: type[KeyVaultError], message: str, operation: str, subject: dict[str, Any]
) -> KeyVaultError:
    """``kind(message)`` with ``subject``, the SDK exception's type and (for HTTP errors) status and codes."""
    details: dict[str, Any] = {**subject, "cause": type(exc).__name__}
    if isinstance(exc, HttpResponseError):
        details.update(_http_details(exc))
    return kind(message, operation=operation, details=details)


def classify(exc: Exception) -> tuple[type[KeyVaultError], str]:
    """The error type and reason for an SDK failure (the secret wording for 404, 403 and 409)."""
    if isinstance(exc, ClientAuthenticationError):
        return KeyVaultError, "authentication to the vault failed"
    if isinstance(exc, ResourceNotFoundError):
        return SecretNotFoundError, "secret not found"
    if isinstance(exc, HttpResponseError):
        return _classify_status(exc.status_code, _inner_code(exc))
    if isinstance(exc, ServiceRequestError | ServiceResponseError | TimeoutError):
        return VaultUnavailableError, "vault unreachable or too slow"
    if isinstance(exc, ValueError):
        return KeyVaultError, "the SDK refused the request or the vault's challenge"
    return KeyVaultError, "vault call failed"


def _classify_status(status: int | None, inner: str | None) -> tuple[type[KeyVaultError], str]:
    if status == 403 and inner == "SecretDisabled":
        return SecretDisabledError, "secret version is disabled"
    if status == 403:
        return KeyVaultError, "access to the secret is denied"
    if status == 409 and inner in _SOFT_DELETED:
        return KeyVaultError, "secret name is soft-deleted and cannot be reused until purged"
    if status in _UNAVAILABLE_STATUS:
        return VaultUnavailableError, f"vault still answering HTTP {status} after retries"
    return KeyVaultError, f"vault refused the request with HTTP {status}"


def _inner_code(exc: HttpResponseError) -> str | None:
    inner = exc.error.innererror if exc.error is not None else None
    code = inner.get("code") if inner else None
    return code if isinstance(code, str) else None


def _http_details(exc: HttpResponseError) -> dict[str, Any]:
    details: dict[str, Any] = {
        "status": exc.status_code,
        "error_code": exc.error.code if exc.error is not None else None,
        "inner_code": _inner_code(exc),
    }
    retry_after = _retry_after(exc)
    if retry_after is not None:  # what the vault asked for, for the caller's own backoff
        details["retry_after"] = retry_after
    return details


def _retry_after(exc: HttpResponseError) -> float | None:
    headers = getattr(exc.response, "headers", None) or {}
    try:
        return float(headers.get("Retry-After", ""))
    except ValueError:
        return None


# --- values and properties ---


def _check_expiry(expires_on: datetime | None) -> None:
    if expires_on is not None and expires_on.tzinfo is None:
        raise KeyVaultError("expires_on must be timezone-aware", operation="set_secret")


def _encode(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _decode(text: str | None, name: str) -> bytes:
    try:
        return base64.b64decode(text or "", validate=True)
    except ValueError as exc:  # binascii.Error or non-ASCII text; the message never holds the data
        raise KeyVaultError(
            f"secret value is not base64 (secret {name})", operation="get_secret", details={"secret_name": name}
        ) from exc


def _secret_version(secret: KeyVaultSecret, name: str) -> SecretVersion:
    properties = _properties(secret.properties, "get_secret", name)
    if properties.content_type != CONTENT_TYPE or not secret.value:
        raise KeyVaultError(
            f"secret was not written by blobseal (secret {name})",
            operation="get_secret",
            details={"secret_name": name, "content_type": properties.content_type},
        )
    return SecretVersion(properties=properties, value=_decode(secret.value, name))


def _properties(props: SdkSecretProperties, operation: str, name: str) -> SecretProperties:
    if props.name is None or props.version is None:
        raise KeyVaultError(
            f"vault answered without a versioned id (secret {name})",
            operation=operation,
            details={"secret_name": name},
        )
    return SecretProperties(
        name=props.name,
        version=props.version,
        enabled=props.enabled is True,
        created_on=props.created_on or _EPOCH,
        expires_on=props.expires_on,
        content_type=props.content_type or "",
    )
