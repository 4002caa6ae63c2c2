"""Intermediate keys of the envelope custody: made, signed, verified, cached.

An instance makes an intermediate key when it first needs one and wraps new file keys with it for
at most ``period`` and ``max_files``. The KEK (a Key Vault RSA key, or the local vault's secret)
wraps it once, the *signing key* signs the row (``shared.crypto.attest.intermediate_statement``:
id, KEK version, wrapped bytes), and the row goes into ``intermediate_keys``.

Reading one verifies the signature *before* any unwrap: with RSA, anyone holding the KEK's public
key can wrap a key of their own, and the vault would unwrap it for us; only the service can sign.
An unsigned row (from before migration 8, until ``attest`` signs it), a bad signature, or a
signature by another key is ``KeyIntegrityError``. A verified, unwrapped key is kept in memory
for ``cache_seconds`` (one KEK unwrap per process and TTL; concurrent readers share it).

Fail closed in time: ``cache_seconds`` is ``KEY_CACHE_SECONDS`` (60 s). An intermediate key read from
memory is at most that old, and the one new file keys are wrapped with is used only while the KEK was
seen within that time (its current version asked again when older): a KEK removed or disabled stops
new uploads, and reads of files whose intermediate key was not read in that time, within it.

Fail closed: a missing KEK or signing key is made only where nothing depends on it yet (nothing
recorded) and only where the app may make it (local mode); otherwise it is restored, never
replaced.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from shared.clock import Clock, utcnow
from shared.crypto.attest import intermediate_statement
from shared.crypto.format import KEY_SIZE
from shared.db.file_keys import FileKeyRepository
from shared.db.intermediate_keys import IntermediateKeyRepository, IntermediateRow
from shared.db.pool import Database
from shared.errors import KeyIntegrityError, KeyManagementError, KeyVaultError, SignatureError, VaultMissingError
from shared.metrics import KEY_CACHE, KEY_INTEGRITY_FAILURES
from shared.vault.cache import TtlCache
from shared.vault.kek import KekMissingError, KeyWrapper, Wrapped
from shared.vault.signer import Signature, Signer, SigningKeyMissingError, verify

__all__ = ["IntermediateKeys", "IntermediatePolicy"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class IntermediatePolicy:
    period: timedelta
    max_files: int
    cache_seconds: float
    cache_entries: int
    may_create_keys: bool  # local mode: a first KEK and signing key are made when nothing is recorded; never in Azure


@dataclass
class _Current:
    id: uuid.UUID
    key: bytes = field(repr=False)
    use_until: datetime
    left: int
    confirmed: float = 0.0  # when the KEK was last seen (monotonic): the key is used only that long after


class IntermediateKeys:
    """This instance's current intermediate key, and the verified, unwrapped ones it has read."""

    def __init__(self, db: Database, kek: KeyWrapper, signer: Signer, policy: IntermediatePolicy, *, instance: str,
                 clock: Clock = utcnow, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.kek, self.signer = kek, signer
        self._db, self._policy, self._instance, self._clock = db, policy, instance, clock
        self._monotonic = monotonic
        self._current: _Current | None = None
        self._minting = asyncio.Lock()
        self._cache: TtlCache[uuid.UUID, bytes] = TtlCache(ttl_seconds=policy.cache_seconds,
                                                            max_entries=policy.cache_entries)
        self._loading: dict[uuid.UUID, asyncio.Future[bytes]] = {}

    async def for_new_key(self) -> tuple[uuid.UUID, bytes]:
        """The intermediate key to wrap one more file key with (a new one when the current is used up)."""
        async with self._minting:
            current = self._current
            if current is None or current.left <= 0 or self._clock() >= current.use_until:
                current = self._current = await self._mint()
            elif self._monotonic() - current.confirmed >= self._policy.cache_seconds:
                try:  # the KEK must still be there: a removed or disabled one stops new keys within the bound
                    await self.kek.current()
                except BaseException:
                    self._current = None
                    raise
                current.confirmed = self._monotonic()
            current.left -= 1
            return current.id, current.key

    async def key(self, intermediate_id: uuid.UUID) -> bytes:
        """The verified, unwrapped intermediate key: from memory, else one load shared by concurrent callers."""
        cached = self._cache.get(intermediate_id)
        if cached is not None:
            KEY_CACHE.labels("hit").inc()
            return cached
        KEY_CACHE.labels("miss").inc()
        pending = self._loading.get(intermediate_id)
        if pending is None:
            pending = self._loading[intermediate_id] = asyncio.ensure_future(self._load(intermediate_id))
            pending.add_done_callback(lambda _: self._loading.pop(intermediate_id, None))
        return await asyncio.shield(pending)

    async def rewrap(self, limit: int) -> int:
        """Rewrap (and sign again) up to ``limit`` intermediate keys an older KEK version wraps; return how many."""
        target = await self.kek.current()
        async with self._db.connection("rewrap_intermediates") as conn:
            rows = await IntermediateKeyRepository(conn).not_wrapped_by(target, limit)
        done = 0
        for row in rows:
            key = await self._unwrap_verified(row)
            again = await self._signed(IntermediateRow(row.id, *_fields(await self.kek.wrap(key)), row.created_by,
                                                       row.created_at, row.use_until, row.max_files))
            async with self._db.transaction("rewrap_intermediates") as conn:
                done += await IntermediateKeyRepository(conn).rewrap(row, again)
        return done

    async def attest(self, limit: int) -> int:
        """Sign up to ``limit`` unsigned rows (made before migration 8). Trust on first use: run it once, right
        after upgrading, while the database is known not to be tampered with (docs/THREATS.md)."""
        async with self._db.connection("attest_intermediates") as conn:
            rows = await IntermediateKeyRepository(conn).unsigned(limit)
        done = 0
        for row in rows:
            signed = await self._signed(row)
            async with self._db.transaction("attest_intermediates") as conn:
                done += await IntermediateKeyRepository(conn).attest(signed)
        return done

    async def check(self, *, placing: bool) -> None:
        """The KEK and the signing key answer (health); a missing one is an error once keys depend on it, or
        when new keys are placed here and the app may not make it."""
        await self._ensure("KEK", self.kek.current, KekMissingError, placing=placing)
        await self._ensure("signing key", self.signer.current, SigningKeyMissingError, placing=placing)

    async def kek_usage(self) -> dict[str, int]:
        async with self._db.connection("kek_usage") as conn:
            return await IntermediateKeyRepository(conn).kek_references()

    async def close(self) -> None:
        self._cache.clear()
        await self.kek.close()
        await self.signer.close()

    # --- steps ---

    async def _load(self, intermediate_id: uuid.UUID) -> bytes:
        async with self._db.connection("get_intermediate") as conn:
            row = await IntermediateKeyRepository(conn).get(intermediate_id)
        if row is None:
            raise _refused(intermediate_id, "intermediate_missing", "the key names an intermediate key that no row "
                           "records")
        key = await self._unwrap_verified(row)
        self._cache.put(intermediate_id, key)
        return key

    async def _unwrap_verified(self, row: IntermediateRow) -> bytes:
        """Verify the row's signature, then (only then) unwrap it."""
        if row.signature is None or row.signing_key is None:
            raise _refused(row.id, "intermediate_unsigned", "the intermediate key row is not signed (rows from "
                           "before the upgrade: `blobseal attest-intermediates`)")
        try:
            await verify(self.signer, intermediate_statement(row.id, row.kek_reference, row.wrapped_key),
                         Signature(row.signing_key, row.signature))
        except SignatureError:
            raise _refused(row.id, "intermediate_forged", "the intermediate key row's signature does not verify: "
                           "the service did not make it") from None
        key = await self.kek.unwrap(Wrapped(row.kek_reference, row.wrapped_key))
        if len(key) != KEY_SIZE:
            raise KeyManagementError("an intermediate key unwrapped to the wrong size", operation="unwrap_key",
                                     details={"intermediate_id": str(row.id)})
        return key

    async def _mint(self) -> _Current:
        key, now = secrets.token_bytes(KEY_SIZE), self._clock()
        wrapped = await self._ensured(lambda: self.kek.wrap(key), "KEK", KekMissingError, self.kek.create)
        row = await self._signed(IntermediateRow(uuid.uuid4(), *_fields(wrapped), self._instance, now,
                                                 now + self._policy.period, self._policy.max_files))
        async with self._db.transaction("mint_intermediate") as conn:
            await IntermediateKeyRepository(conn).insert(row)
        self._cache.put(row.id, key)
        return _Current(row.id, key, row.use_until, row.max_files, confirmed=self._monotonic())

    async def _signed(self, row: IntermediateRow) -> IntermediateRow:
        signature = await self.sign(intermediate_statement(row.id, row.kek_reference, row.wrapped_key))
        return row.signed(signature.key_reference, signature.value)

    async def sign(self, message: bytes, *, dependents: Callable[[], Awaitable[bool]] | None = None) -> Signature:
        """A signature by the signing key, which is made first where that is allowed: locally, and while nothing
        depends on it (no signed row, and nothing ``dependents`` knows of, such as the access log's digests)."""
        return await self._ensured(lambda: self.signer.sign(message), "signing key", SigningKeyMissingError,
                                   self.signer.create, dependents)

    async def _ensured(self, call: Callable[[], Awaitable[T]], what: str, missing: type[KeyVaultError],
                       create: Callable[[], Awaitable[str]],
                       dependents: Callable[[], Awaitable[bool]] | None = None) -> T:
        """``call``; if the key it needs is missing, make it where that is allowed (fail closed) and call again."""
        try:
            return await call()
        except (missing, VaultMissingError) as exc:
            if dependents is not None and await dependents():
                raise missing(f"the {what} is missing while what it signed is kept: restore it (a new one is never "
                              "made)", operation="check_keys", details={"key": what}) from exc
            await self._refuse_if_depended_on(what, missing, vault_missing=isinstance(exc, VaultMissingError),
                                              placing=True)
        await create()
        return await call()

    async def _ensure(self, what: str, probe: Callable[[], Awaitable[str]], missing: type[KeyVaultError], *,
                      placing: bool) -> None:
        try:
            await probe()
        except (missing, VaultMissingError) as exc:
            await self._refuse_if_depended_on(what, missing, vault_missing=isinstance(exc, VaultMissingError),
                                              placing=placing)

    async def _refuse_if_depended_on(self, what: str, missing: type[KeyVaultError], *, vault_missing: bool,
                                     placing: bool) -> None:
        """Fail closed: a missing key (or vault) that recorded keys depend on is restored, never replaced."""
        async with self._db.connection("check_kek") as conn:
            repo = IntermediateKeyRepository(conn)  # rows need the KEK; only signed rows need the signing key
            depends = repo.any_signed if missing is SigningKeyMissingError else repo.any_recorded
            recorded = await depends() or (vault_missing and await FileKeyRepository(conn).any_recorded())
        if recorded:
            raise missing(f"the {what} or its vault is missing while keys are recorded: restore it (a new one is "
                          "never made beside them)", operation="check_keys", details={"key": what})
        if placing and not self._policy.may_create_keys:
            raise missing(f"the {what} is missing: create it in Key Vault (infra/ deploys it)",
                          operation="check_keys", details={"key": what})


def _fields(wrapped: Wrapped) -> tuple[str, bytes]:
    return wrapped.kek_reference, wrapped.wrapped


def _refused(intermediate_id: uuid.UUID, reason: str, message: str) -> KeyIntegrityError:
    KEY_INTEGRITY_FAILURES.labels(reason).inc()
    log.error("key integrity: refused intermediate key %s (%s): %s; someone wrote the database (docs/THREATS.md)",
              intermediate_id, reason, message)
    return KeyIntegrityError(message, operation="get_key", details={"intermediate_id": str(intermediate_id),
                                                                   "reason": reason})
