"""The key vault port: what every vault adapter (local JSON, Azure, cache wrapper) offers.

A secret is named ``file-<file_id>`` and has versions; setting a name again adds a version.
Rotation adds a version and disables the old one: names are never deleted and re-created
(Azure soft delete refuses that with 409 for days). A *key reference*
``file-<file_id>/<version>`` names one exact version and is what the database records.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from shared.errors import KeyVaultError, VaultMissingError

__all__ = [
    "KeyVault",
    "SecretProperties",
    "SecretVersion",
    "check_secret_name",
    "format_key_reference",
    "parse_key_reference",
    "secret_name",
    "set_in_new_vault",
]

_NAME = re.compile(r"[0-9a-zA-Z-]{1,127}")
_VERSION = re.compile(r"[0-9a-zA-Z-]{1,64}")


@dataclass(frozen=True)
class SecretProperties:
    """What a vault says about one version of a secret, without its value."""

    name: str
    version: str
    enabled: bool
    created_on: datetime
    expires_on: datetime | None = None
    content_type: str = "application/octet-stream"

    @property
    def key_reference(self) -> str:
        return format_key_reference(self.name, self.version)


@dataclass(frozen=True)
class SecretVersion:
    """One version of a secret with its value (key material: never logged, never in repr)."""

    properties: SecretProperties
    value: bytes = field(repr=False)


class KeyVault(Protocol):
    """Async secret store. Errors are ``KeyVaultError`` or its subclasses."""

    async def set_secret(self, name: str, value: bytes, *, expires_on: datetime | None = None) -> SecretProperties:
        """Store ``value`` as a new version of ``name`` (creating the name if needed)."""
        ...

    async def get_secret(self, name: str, version: str | None = None) -> SecretVersion:
        """The latest version (``version=None``) or the exact one.

        Raises ``SecretNotFoundError`` if absent and ``SecretDisabledError`` if disabled.
        """
        ...

    async def disable_version(self, name: str, version: str) -> None:
        """Mark one version disabled; its value can no longer be read."""
        ...

    async def delete_secret(self, name: str) -> None:
        """Delete the name and all its versions."""
        ...

    async def list_versions(self, name: str) -> list[SecretProperties]:
        """Every version of ``name``, oldest first; empty if the name is unknown."""
        ...

    async def ping(self) -> None:
        """Raise ``KeyVaultError`` if the vault cannot be reached (for health checks).

        ``VaultMissingError`` when the store itself is not there or holds nothing (the local
        file): the key service decides whether that is an error (keys are recorded) or a new
        deployment.
        """
        ...

    async def initialize(self) -> None:
        """Create the store if absent and allow the first key into it (only after checking no key is recorded)."""
        ...

    async def check_writable(self) -> None:
        """Raise ``VaultUnwritableError`` if a new secret version could not be stored now (health; the local
        vault's disk full or read-only). A store that cannot be probed without writing a secret answers."""
        ...

    async def close(self) -> None: ...


async def set_in_new_vault(vault: KeyVault, name: str, value: bytes) -> SecretProperties:
    """Set ``name``, initializing a missing (local) vault first: only for a key nothing recorded depends on
    (the caller checked), such as a first KEK or signing key."""
    try:
        return await vault.set_secret(name, value)
    except VaultMissingError:
        await vault.initialize()
        return await vault.set_secret(name, value)


def check_secret_name(name: object, operation: str, version: object = None) -> None:
    """The one rule for names and versions (Key Vault's): refuse anything else, a trailing newline too."""
    if not _valid(name, version):
        raise KeyVaultError("invalid secret name or version", operation=operation,
                            details={"name_length": len(name) if isinstance(name, str) else None,
                                     "version_length": len(version) if isinstance(version, str) else None})


def _valid(name: object, version: object) -> bool:
    named = isinstance(name, str) and _NAME.fullmatch(name) is not None
    return named and (version is None or (isinstance(version, str) and _VERSION.fullmatch(version) is not None))


def secret_name(file_id: uuid.UUID) -> str:
    return f"file-{file_id}"


def format_key_reference(name: str, version: str) -> str:
    return f"{name}/{version}"


def parse_key_reference(reference: str) -> tuple[str, str]:
    """Split ``file-<id>/<version>`` into name and version, refusing anything else."""
    name, sep, version = reference.partition("/")
    if not sep or not _valid(name, version):
        raise KeyVaultError("malformed key reference", operation="parse_key_reference",
                            details={"reference_length": len(reference)})
    return name, version
