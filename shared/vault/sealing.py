"""The local vault's values sealed at rest under a master key kept apart from the vault file.

Each secret's ``value`` in ``secrets.json`` (and its backups) is::

    sealed:v1:<master key id, 16 hex>:<base64 of nonce (12) || AES-256-GCM ciphertext and tag>

with the associated data ``b"blobseal/local-vault/v1\\n" || name || "\\n" || version``: a sealed value
opens only under its master key, for the very name and version it was stored as (copied to another
entry, it is refused). The vault file alone, or a copy of the ``secrets/`` folder, reveals no key.

The master key (32 random bytes) comes from ``KEY_VAULT_LOCAL_MASTER_KEY`` (base64) if set, else from
an owner-only file beside the vault folder, ``<KEY_VAULT_LOCAL_PATH>.master-key`` unless
``KEY_VAULT_LOCAL_MASTER_KEY_FILE`` names another (``docs/VAULT_LOCAL.md``). The file is made on
first run, only while no sealed value exists: a vault whose master key is gone is restored, never
re-keyed by accident (fail closed). Its id (the first 8 bytes of a SHA-256 over it) is written
into every sealed value, so the wrong key is named as such, not as corruption.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.errors import KeyVaultError, VaultMissingError

__all__ = ["MasterKey", "MasterKeySource", "is_sealed"]

PREFIX = "sealed:v1:"
_KEY_BYTES, _NONCE_BYTES = 32, 12
_LABEL = b"blobseal/local-vault/v1\n"


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


@dataclass(frozen=True)
class MasterKey:
    """The key that seals the local vault's values (never logged, never in a repr)."""

    key: bytes = field(repr=False)

    @property
    def id(self) -> str:
        return hashlib.sha256(b"blobseal/master-key-id\n" + self.key).hexdigest()[:16]

    def seal(self, value: bytes, name: str, version: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = AESGCM(self.key).encrypt(nonce, value, _aad(name, version))
        return f"{PREFIX}{self.id}:{base64.b64encode(nonce + sealed).decode('ascii')}"

    def open(self, text: str, name: str, version: str) -> bytes:
        """The value sealed in ``text`` for ``name``/``version``; ``KeyVaultError`` if it is not."""
        key_id, _, body = text.removeprefix(PREFIX).partition(":")
        if key_id != self.id:
            raise KeyVaultError("the local vault's value is sealed under another master key (restore the master key "
                                "that sealed it)", operation="get_secret",
                                details={"name": name, "sealed_by": key_id[:16], "master_key": self.id})
        try:
            raw = base64.b64decode(body, validate=True)
            return AESGCM(self.key).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _aad(name, version))
        except (binascii.Error, ValueError, InvalidTag):
            raise KeyVaultError("a sealed value of the local vault does not open for its entry (altered, or moved "
                                "from another entry)", operation="get_secret",
                                details={"name": name, "version": version}) from None


def _aad(name: str, version: str) -> bytes:
    return _LABEL + name.encode() + b"\n" + version.encode()


@dataclass(frozen=True)
class MasterKeySource:
    """Where the master key comes from: ``text`` (base64, from the environment) if given, else ``path``."""

    path: Path
    text: str = field(default="", repr=False)

    def load(self) -> MasterKey | None:
        """The master key, or None when there is none yet (no text, no file)."""
        if self.text:
            return MasterKey(_decoded(self.text, "KEY_VAULT_LOCAL_MASTER_KEY"))
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyVaultError(f"cannot read the local vault's master key {self.path}: {exc.strerror}",
                                operation="master_key", details={"path": str(self.path)}) from exc
        return MasterKey(_decoded(data.decode("ascii", "replace").strip(), str(self.path)))

    def create(self) -> MasterKey:
        """A new master key in a new owner-only file (never over an existing one).

        The file appears whole or not at all: the key is written and synced in a temporary file beside it,
        which is then hard-linked under the key's name (``link`` fails if the name exists: another writer
        made it first, and its key is used). A reader never sees a half-written key (concurrent first
        writers of a new vault did: "not 32 bytes in base64")."""
        if self.text:
            raise KeyVaultError("KEY_VAULT_LOCAL_MASTER_KEY is set: it is the master key", operation="master_key")
        key = os.urandom(_KEY_BYTES)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.write(fd, base64.b64encode(key) + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(temp, self.path)
        except FileExistsError:
            loaded = self.load()
            assert loaded is not None
            return loaded  # another writer made it first
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o600)
        return MasterKey(key)

    def missing(self, operation: str) -> VaultMissingError:
        return VaultMissingError(
            f"the local vault's master key {self.path} is missing while the vault holds sealed keys: restore it "
            "(or set KEY_VAULT_LOCAL_MASTER_KEY); a new one would open nothing", operation=operation,
            details={"path": str(self.path)})


def _decoded(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != _KEY_BYTES:
        raise KeyVaultError(f"the local vault's master key ({where}) is not 32 bytes in base64", operation="master_key",
                            details={"where": where if where.startswith("/") else "environment"})
    return key
