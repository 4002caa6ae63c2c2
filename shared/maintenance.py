"""What operators and timers do to the deployment: rotation, repairs, key custody, the access log's digests.

The timers call ``rotate_due`` and ``reconcile`` with no caller (the app's own work: counted and logged,
not access rows). Everything else takes the ``Caller`` (the CLI's operator) and runs through the
``Guard``: the ``operate`` role (``audit`` for the log's digests and verification), an ``intent`` row
before, an outcome row after.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shared.access import Guard
from shared.audit import Digests, VerifyReport, verify_log
from shared.audit.log import ChainKey
from shared.clock import Clock, utcnow
from shared.custody import IntermediateKeys
from shared.db.failures import FailureRecord, FailureRepository
from shared.db.file_keys import Custody
from shared.db.pool import Database
from shared.errors import InvalidRequestError
from shared.identity import Caller
from shared.ingest import Ingestor, IngestOutcome
from shared.keys import FileKeyService, MigrationReport
from shared.reconcile import Reconciler, ReconcileReport
from shared.rotation import RotationReport, Rotator
from shared.service import file_id_or_none, parse_file_id
from shared.vault.signer import Signer

__all__ = ["Maintenance"]


class Maintenance:
    def __init__(self, *, db: Database, keys: FileKeyService, intermediates: IntermediateKeys, rotator: Rotator,
                 reconciler: Reconciler, ingestor: Ingestor, digests: Digests, chain_key: ChainKey, signer: Signer,
                 guard: Guard, retention: timedelta = timedelta(days=365), clock: Clock = utcnow) -> None:
        self._retention, self._clock = retention, clock
        self._db, self._keys, self._intermediates = db, keys, intermediates
        self.rotator, self._reconciler, self._ingestor = rotator, reconciler, ingestor
        self._digests, self._chain_key, self._signer, self._guard = digests, chain_key, signer, guard

    # --- the timers' work ----------------------------------------------------------------------

    async def rotate_due(self, caller: Caller | None = None, *, limit: int | None = None) -> RotationReport:
        if caller is None:
            return await self.rotator.rotate_due(limit=limit)
        async with self._guard.change("rotate_due", caller, "operate"):
            return await self.rotator.rotate_due(limit=limit)

    async def reconcile(self, caller: Caller | None = None) -> ReconcileReport:
        if caller is None:
            return await self._reconciler.run()
        async with self._guard.change("reconcile", caller, "operate"):
            return await self._reconciler.run()

    # --- one file --------------------------------------------------------------------------------

    async def rotate_file(self, caller: Caller, file_id_text: str) -> str:
        async with self._guard.change("rotate", caller, "operate", file_id=file_id_or_none(file_id_text)):
            reference = await self.rotator.rotate_file(parse_file_id(file_id_text))
        assert reference is not None  # unconditional rotation always yields a new key
        return reference

    async def expire_key(self, caller: Caller, file_id_text: str) -> str:
        """Make the file's key due now (the next rotation run rotates it); returns the new expiry."""
        async with self._guard.change("expire", caller, "operate", file_id=file_id_or_none(file_id_text)):
            expires = (await self._keys.expire(parse_file_id(file_id_text))).expires_at
        assert expires is not None
        return expires.isoformat()

    async def release_rotation(self, caller: Caller, file_id_text: str) -> bool:
        """Give up a rotation claim whoever holds it (an operator's way out of a stuck one)."""
        async with self._guard.change("release", caller, "operate", file_id=file_id_or_none(file_id_text)):
            return await self._keys.force_release(parse_file_id(file_id_text))

    async def failed_uploads(self, caller: Caller, limit: int = 1000) -> list[FailureRecord]:
        """The uploads that failed and why (``operate``). Not an access to any file, so not a log row: an
        operator needs this list most while the vault (and so the access log's key) is down."""
        await self._guard.authorize("failed_uploads", caller, "operate")
        async with self._db.connection("failed_uploads") as conn:
            return await FailureRepository(conn).listed(limit)

    async def replay(self, caller: Caller, name: str) -> IngestOutcome:
        """Ingest an upload again now, whatever its recorded failure said (an operator fixed the cause)."""
        async with self._guard.change("replay", caller, "operate") as receipt:
            outcome = await self._ingestor.encrypt(name)
            receipt.file_id = outcome.file_id
        if outcome.status == "gone":  # nothing left to retry: `failed` stops listing it now, not at the next reconcile
            async with self._db.connection("replay") as conn:
                await FailureRepository(conn).clear(name)
        return outcome

    # --- key custody -----------------------------------------------------------------------------

    async def migrate_keys(self, caller: Caller, to: Custody, *, batch: int = 100) -> dict[str, Any]:
        """Move every readable key into custody ``to`` (no blob is touched); resumable, idempotent."""
        async with self._guard.change(f"migrate_keys_to_{to}", caller, "operate") as receipt:
            total, after = MigrationReport(), 0
            while True:
                report, last = await self._keys.migrate_keys(to, batch, after=after)
                total.moved, total.raced, total.refused = (total.moved + report.moved, total.raced + report.raced,
                                                           total.refused + report.refused)
                if last == after:
                    break
                after = last
            receipt.outcome = f"ok: {total.moved} moved" + (f", {total.refused} refused" if total.refused else "")
            return {"to": to, "moved": total.moved, "raced": total.raced, "refused": total.refused}

    async def rotate_kek(self, caller: Caller, *, rewrap_only: bool = False) -> dict[str, Any]:
        """A new KEK version and every intermediate key rewrapped with it (or only the rewrap, to resume)."""
        async with self._guard.change("rotate_kek", caller, "operate") as receipt:
            kek = None if rewrap_only else await self._intermediates.kek.create()
            rewrapped = 0
            while done := await self._intermediates.rewrap(500):
                rewrapped += done
            receipt.outcome = f"ok: {rewrapped} rewrapped"
            return {"kek_reference": kek, "rewrapped": rewrapped,
                    "kek_versions_in_use": await self._intermediates.kek_usage()}

    async def attest_intermediates(self, caller: Caller) -> dict[str, Any]:
        """Sign the intermediate key rows made before signatures existed (trust on first use: run once, right
        after upgrading, while the database is trusted; docs/THREATS.md)."""
        async with self._guard.change("attest_intermediates", caller, "operate") as receipt:
            attested = 0
            while done := await self._intermediates.attest(500):
                attested += done
            receipt.outcome = f"ok: {attested} signed"
            return {"attested": attested}

    # --- the access log --------------------------------------------------------------------------

    async def audit_digest(self, caller: Caller | None = None) -> str | None:
        """A signed digest of what the log gained since the last one (the reconciler writes one every run)."""
        if caller is None:
            return await self._digests.write()
        async with self._guard.change("audit_digest", caller, "audit"):
            return await self._digests.write()

    async def audit_purge(self, caller: Caller, before: datetime | None = None) -> dict[str, Any]:
        """Remove rows older than ``before`` (default: ``AUDIT_RETENTION_DAYS`` ago, never later), after a digest
        that says what goes. The database lets only its purge role do it, never for rows under 30 days."""
        oldest_kept = self._clock() - self._retention
        before = before or oldest_kept
        async with self._guard.change("audit_purge", caller, "operate") as receipt:
            if before > oldest_kept:
                raise InvalidRequestError(f"the access log keeps {self._retention.days} days (AUDIT_RETENTION_DAYS): "
                                          f"purge before {oldest_kept.isoformat()} at the latest",
                                          operation="audit_purge")
            digest, purged = await self._digests.purge(before)
            receipt.outcome = f"ok: {purged} purged"
            return {"purged": purged, "digest": digest, "before": before.isoformat()}

    async def audit_verify(self, caller: Caller) -> VerifyReport:
        async with self._guard.read("audit_verify", caller, "audit") as receipt:
            report = await verify_log(self._db, await self._chain_key.get(), self._signer, self._digests.store)
            receipt.outcome = "ok" if report.ok else f"problems: {len(report.problems)}"
            return report
