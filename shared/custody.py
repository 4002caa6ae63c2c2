"""Where file keys live: a vault secret per key (``secret``), or wrapped in the database (``envelope``).

``KEY_MODE`` picks the custody of *new* keys; a key row records its own custody, so every
recorded key stays readable whatever the mode is now, and ``FileKeyService.migrate_keys``
moves keys between custodies without touching a blob (the blob's header names the key by its
``key_reference``, which never changes).

Envelope custody (docs/SCALE.md): the file key (random, 256-bit, one per file and version as
in secret custody) is wrapped locally by an *intermediate key* with the row bound in
(``shared.crypto.keywrap``). An instance makes an intermediate key when it first needs one and
uses it for at most ``period`` and ``max_files`` keys; the KEK (a Key Vault key, or the local
vault's secret) wraps it once, and the wrapped form is stored in ``intermediate_keys``. Reading a
key unwraps its intermediate key once per process and TTL (one vault call), then only local
AES. So vault calls grow with instances x periods, not with files.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.clock import Clock, utcnow
from shared.crypto.format import KEY_SIZE
from shared.crypto.keywrap import unwrap_file_key, wrap_file_key
from shared.db.file_keys import FileKeyRepository, KeyRow, Placement
from shared.db.intermediate_keys import IntermediateKeyRepository, IntermediateRow
from shared.db.pool import Database
from shared.errors import KeyManagementError, VaultMissingError
from shared.metrics import KEY_CACHE
from shared.vault.base import KeyVault, parse_key_reference, secret_name
from shared.vault.cache import TtlCache
from shared.vault.kek import KekMissingError, KeyWrapper, Wrapped

__all__ = ["EnvelopeCustody", "IntermediateKeys", "IntermediatePolicy", "SecretCustody"]

class SecretCustody:
    """Each key a version of the vault secret ``file-<file_id>`` (the spec's model)."""

    def __init__(self, vault: KeyVault) -> None:
        self.vault = vault

    async def place(self, file_id: uuid.UUID, key: bytes, expires_at: datetime) -> tuple[str, Placement]:
        """Store a new key; its reference is the vault version's."""
        props = await self.vault.set_secret(secret_name(file_id), key, expires_on=expires_at)
        return props.key_reference, Placement("secret", vault_reference=props.key_reference)

    async def read(self, row: KeyRow) -> bytes:
        reference = row.placement.vault_reference
        assert reference is not None
        return (await self.vault.get_secret(*parse_key_reference(reference))).value

    async def discard(self, placement: Placement) -> None:
        """Disable a version no row refers to (or no longer needs)."""
        if placement.vault_reference is not None:
            await self.vault.disable_version(*parse_key_reference(placement.vault_reference))


@dataclass(frozen=True)
class IntermediatePolicy:
    period: timedelta
    max_files: int
    cache_seconds: float
    cache_entries: int
    may_create_kek: bool  # local mode: a first KEK is made when nothing is recorded yet; never in Azure


@dataclass
class _Current:
    id: uuid.UUID
    key: bytes = field(repr=False)
    use_until: datetime
    left: int


class IntermediateKeys:
    """This instance's current intermediate key, and the unwrapped ones it has read (TTL cache)."""

    def __init__(self, db: Database, kek: KeyWrapper, policy: IntermediatePolicy, *, instance: str,
                 clock: Clock = utcnow) -> None:
        self.kek = kek
        self._db, self._policy, self._instance, self._clock = db, policy, instance, clock
        self._current: _Current | None = None
        self._minting = asyncio.Lock()
        self._cache: TtlCache[uuid.UUID, bytes] = TtlCache(ttl_seconds=policy.cache_seconds,
                                                            max_entries=policy.cache_entries)
        self._unwrapping: dict[uuid.UUID, asyncio.Future[bytes]] = {}

    async def for_new_key(self) -> tuple[uuid.UUID, bytes]:
        """The intermediate key to wrap one more file key with (a new one when the current is used up)."""
        async with self._minting:
            current = self._current
            if current is None or current.left <= 0 or self._clock() >= current.use_until:
                current = self._current = await self._mint()
            current.left -= 1
            return current.id, current.key

    async def key(self, intermediate_id: uuid.UUID, wrapped: Wrapped) -> bytes:
        """The unwrapped intermediate key: from memory, else one KEK unwrap shared by concurrent callers."""
        cached = self._cache.get(intermediate_id)
        if cached is not None:
            KEY_CACHE.labels("hit").inc()
            return cached
        KEY_CACHE.labels("miss").inc()
        pending = self._unwrapping.get(intermediate_id)
        if pending is None:
            pending = self._unwrapping[intermediate_id] = asyncio.ensure_future(self._unwrap(intermediate_id, wrapped))
            pending.add_done_callback(lambda _: self._unwrapping.pop(intermediate_id, None))
        return await asyncio.shield(pending)

    async def rewrap(self, limit: int) -> int:
        """Rewrap up to ``limit`` intermediate keys that an older KEK version wraps; return how many."""
        target = await self.kek.current()
        async with self._db.connection("rewrap_intermediates") as conn:
            rows = await IntermediateKeyRepository(conn).not_wrapped_by(target, limit)
        done = 0
        for row in rows:
            key = await self.kek.unwrap(Wrapped(row.kek_reference, row.wrapped_key))
            again = await self.kek.wrap(key)
            async with self._db.transaction("rewrap_intermediates") as conn:
                done += await IntermediateKeyRepository(conn).rewrap(row, again.kek_reference, again.wrapped)
        return done

    async def check(self) -> None:
        """The KEK answers (health); a missing one is an error unless a first one may still be made."""
        try:
            await self.kek.current()
        except KekMissingError:
            await self._refuse_if_recorded(file_keys_too=False)
        except VaultMissingError:
            await self._refuse_if_recorded(file_keys_too=True)

    async def kek_usage(self) -> dict[str, int]:
        async with self._db.connection("kek_usage") as conn:
            return await IntermediateKeyRepository(conn).kek_references()

    async def _unwrap(self, intermediate_id: uuid.UUID, wrapped: Wrapped) -> bytes:
        key = await self.kek.unwrap(wrapped)
        if len(key) != KEY_SIZE:
            raise KeyManagementError("an intermediate key unwrapped to the wrong size", operation="unwrap_key",
                                     details={"intermediate_id": str(intermediate_id)})
        self._cache.put(intermediate_id, key)
        return key

    async def _mint(self) -> _Current:
        key = secrets.token_bytes(KEY_SIZE)
        wrapped = await self._wrap(key)
        now = self._clock()
        row = IntermediateRow(uuid.uuid4(), wrapped.kek_reference, wrapped.wrapped, self._instance, now,
                              now + self._policy.period, self._policy.max_files)
        async with self._db.transaction("mint_intermediate") as conn:
            await IntermediateKeyRepository(conn).insert(row)
        self._cache.put(row.id, key)
        return _Current(row.id, key, row.use_until, row.max_files)

    async def _wrap(self, key: bytes) -> Wrapped:
        try:
            return await self.kek.wrap(key)
        except KekMissingError:
            await self._refuse_if_recorded(file_keys_too=False)
        except VaultMissingError:  # the local vault itself is missing or empty: its secrets too
            await self._refuse_if_recorded(file_keys_too=True)
        await self.kek.create()
        return await self.kek.wrap(key)

    async def _refuse_if_recorded(self, *, file_keys_too: bool) -> None:
        """Fail closed: a missing KEK (or vault) while keys are recorded is restored, never replaced."""
        async with self._db.connection("check_kek") as conn:
            recorded = await IntermediateKeyRepository(conn).any_recorded() or (
                file_keys_too and await FileKeyRepository(conn).any_recorded())
        if recorded:
            raise KekMissingError("the key-encryption key or its vault is missing while keys are recorded: "
                                  "restore it (a new one is never made beside them)", operation="wrap_key")
        if not self._policy.may_create_kek:
            raise KekMissingError("the key-encryption key is missing: create it in Key Vault (infra/ deploys it)",
                                  operation="wrap_key")


class EnvelopeCustody:
    """Each key wrapped by an intermediate key, bound to its row, stored in ``file_keys``."""

    def __init__(self, intermediates: IntermediateKeys) -> None:
        self.intermediates = intermediates

    async def place(self, file_id: uuid.UUID, key: bytes, expires_at: datetime) -> tuple[str, Placement]:
        reference = f"{secret_name(file_id)}/env-{secrets.token_hex(12)}"
        return reference, await self._wrapped(file_id, reference, key)

    async def wrap_existing(self, row: KeyRow, key: bytes) -> Placement:
        """The placement of an existing key (moved from secret custody), bound to its own row; it keeps
        naming the secret it came from, which deleting the file deletes."""
        return await self._wrapped(row.file_id, row.key_reference, key, row.placement.vault_reference)

    async def _wrapped(self, file_id: uuid.UUID, reference: str, key: bytes,
                       vault_reference: str | None = None) -> Placement:
        intermediate_id, intermediate = await self.intermediates.for_new_key()
        wrapped = wrap_file_key(intermediate, key, file_id=file_id, intermediate_id=intermediate_id,
                                key_reference=reference)
        return Placement("envelope", vault_reference=vault_reference, wrapped_key=wrapped,
                         intermediate_id=intermediate_id)

    async def read(self, row: KeyRow, intermediate: Wrapped) -> bytes:
        assert row.wrapped_key is not None and row.intermediate_id is not None
        key = await self.intermediates.key(row.intermediate_id, intermediate)
        return unwrap_file_key(key, row.wrapped_key, file_id=row.file_id, intermediate_id=row.intermediate_id,
                               key_reference=row.key_reference)

