"""Secret custody: each file key a version of the vault secret ``file-<file_id>`` (the spec's model).

The database records the version's reference; the vault holds the key. A row is read only when
the secret it names is its own file's (``file-<file_id>``): a row pointed at another file's
secret, or at an envelope reference, is refused (``KeyIntegrityError``). Every placement is
announced in ``secret_intents`` before the vault call, and the announcement is removed in the
transaction that records the row; ``repair`` makes unusable what a killed worker placed and never
recorded (disabled, or the whole secret deleted when the file has no key left).

Fail closed: the first key goes into a missing or empty vault only while the database records no
key (a lost vault is restored, never replaced).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from datetime import datetime
from typing import Any

from shared.custody.base import integrity_refused
from shared.db.file_keys import Custody, FileKeyRepository, KeyRow, Placement
from shared.db.pool import Database
from shared.db.secret_intents import SecretIntentRepository
from shared.errors import BlobsealError, KeyMissingError, KeyVaultError, SecretNotFoundError, VaultMissingError
from shared.metrics import KEYS_MISSING
from shared.vault.base import KeyVault, SecretProperties, parse_key_reference, secret_name

__all__ = ["SecretCustody"]

log = logging.getLogger(__name__)


class SecretCustody:
    """File keys as vault secret versions."""

    name: Custody = "secret"

    def __init__(self, vault: KeyVault, db: Database) -> None:
        self._vault, self._db = vault, db

    async def place(self, file_id: uuid.UUID, key: bytes, expires_at: datetime, *, reference: str | None = None,
                    previous: Placement | None = None) -> tuple[str, Placement]:
        token = uuid.uuid4().hex
        async with self._db.connection("announce_secret") as conn:
            await SecretIntentRepository(conn).announce(file_id, token)
        props = await self._set(secret_name(file_id), key, expires_at)
        return reference or props.key_reference, Placement("secret", vault_reference=props.key_reference,
                                                           intent=token)

    async def recorded(self, conn: Any, placement: Placement) -> None:
        if placement.intent is not None and placement.vault_reference is not None:
            file_id = _file_of(placement.vault_reference)
            await SecretIntentRepository(conn).done(file_id, placement.intent)

    async def read(self, row: KeyRow) -> bytes:
        reference = row.placement.vault_reference or ""
        try:
            name, version = parse_key_reference(reference)
        except KeyVaultError:
            name = version = ""
        if name != secret_name(row.file_id) or version.startswith("env-"):
            raise integrity_refused(row, "secret_of_another_file", "the key row points at a vault secret that is "
                                    "not its file's")
        try:
            return (await self._vault.get_secret(name, version)).value
        except SecretNotFoundError as exc:
            KEYS_MISSING.inc()
            log.error("key %s is recorded but missing from the vault: restore it from the vault's backups",
                      row.key_reference)
            raise KeyMissingError("the file's key is missing from the vault", operation="get_key",
                                  details={"key_reference": row.key_reference}) from exc

    async def discard(self, placement: Placement) -> None:
        if placement.vault_reference is not None:
            with contextlib.suppress(SecretNotFoundError):  # a deleted secret needs no disabling
                await self._vault.disable_version(*parse_key_reference(placement.vault_reference))
        if placement.intent is not None and placement.vault_reference is not None:
            async with self._db.connection("discard_secret") as conn:
                await SecretIntentRepository(conn).done(_file_of(placement.vault_reference), placement.intent)

    async def erase(self, file_id: uuid.UUID, rows: list[KeyRow] | None) -> None:
        """Delete the file's secret (every version) if it ever had one, or if no row is left to tell."""
        if rows is None or any(row.placement.vault_reference for row in rows):
            with contextlib.suppress(SecretNotFoundError):
                await self._vault.delete_secret(secret_name(file_id))

    async def repair(self, cutoff: datetime, limit: int) -> int:
        async with self._db.connection("repair_secrets") as conn:
            settled = await SecretIntentRepository(conn).settled(cutoff, limit)
        repaired = 0
        for file_id, tokens in settled.items():  # each file on its own: one that fails is tried again next run
            try:
                repaired += await self._repair_file(file_id, cutoff)
                async with self._db.connection("repair_secrets") as conn:
                    await SecretIntentRepository(conn).forget(file_id, tokens)
            except BlobsealError as exc:
                log.warning("file %s: making unrecorded key versions unusable failed (the next run retries): %s",
                            file_id, exc)
        return repaired

    async def check(self, *, placing: bool) -> None:
        """The vault answers; a missing or empty one is an error only while the database records keys."""
        try:
            await self._vault.ping()
        except VaultMissingError:
            await self._refuse_if_recorded()

    async def check_writable(self) -> None:
        """The vault can take a new secret version now (``VaultUnwritableError`` otherwise: a full disk)."""
        await self._vault.check_writable()

    async def _repair_file(self, file_id: uuid.UUID, cutoff: datetime) -> int:
        """Disable the file's versions no row records; delete the whole secret when no row is left."""
        async with self._db.connection("repair_secrets") as conn:
            recorded = await FileKeyRepository(conn).references(file_id)
        if not recorded:
            return await self._delete_orphan(file_id)
        try:
            versions = await self._vault.list_versions(secret_name(file_id))
        except SecretNotFoundError:
            return 0
        unrecorded = [v for v in versions if _unrecorded(v, recorded, cutoff)]
        for version in unrecorded:
            await self._vault.disable_version(version.name, version.version)
        return len(unrecorded)

    async def _delete_orphan(self, file_id: uuid.UUID) -> int:
        try:
            await self._vault.delete_secret(secret_name(file_id))
        except SecretNotFoundError:
            return 0
        log.info("deleted the vault secret of file %s: no key row records it", file_id)
        return 1

    async def _set(self, name: str, key: bytes, expires_at: datetime) -> SecretProperties:
        try:
            return await self._vault.set_secret(name, key, expires_on=expires_at)
        except VaultMissingError:
            await self._refuse_if_recorded()  # fail closed: never start a new vault beside recorded keys
            await self._vault.initialize()
            return await self._vault.set_secret(name, key, expires_on=expires_at)

    async def _refuse_if_recorded(self) -> None:
        async with self._db.connection("check_vault") as conn:
            recorded = await FileKeyRepository(conn).any_recorded()
        if recorded:
            raise VaultMissingError("the vault is missing or empty while the database records keys; "
                                    "restore it (keys are never written into a new vault)", operation="check_vault")


def _unrecorded(version: SecretProperties, recorded: set[str], cutoff: datetime) -> bool:
    return version.enabled and version.created_on < cutoff and version.key_reference not in recorded


def _file_of(vault_reference: str) -> uuid.UUID:
    return uuid.UUID(parse_key_reference(vault_reference)[0].removeprefix("file-"))
