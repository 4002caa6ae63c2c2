"""The reconciler: finds what faults and races left behind, and repairs it, with no operator.

Run by a timer (``RECONCILE_SCHEDULE``, every 5 minutes) and by ``python -m shared.cli
reconcile``. One run at a time per database (a lease row in ``reconciler_state``, renewed while
the run lasts: other instances skip the run; a crashed holder's lease runs out), bounded per run
(``RECONCILE_BATCH_SIZE`` items of each kind; long listings go on from a saved cursor next run),
idempotent. The destructive repairs touch only what is older
than ``RECONCILE_AFTER_SECONDS``, so attempts still in flight are left alone. Each repair is counted in
``blobseal_repairs_total{kind}`` and logged once, with the file id:

- ``stranded``: an ingest blob a minute old whose content has no encrypted row (missed,
  poisoned after a transient fault, overwritten) is ingested again, unless its failure is
  permanent (``failed`` lists it) or less than a minute old (the host may be retrying it);
- ``stale_pending``: an attempt whose upload is gone, or whose name now holds content with
  another id, is dropped: a pending row is removed with its keys (vault versions deleted) and
  its blobs; an encrypted file keeps its content and forgets the attempt;
- ``orphan_blob``: a protected blob no row points at (an abandoned attempt, or blocks staged
  and never committed) is discarded;
- ``unrecorded_version``: a key placed (a vault version) and never recorded (a worker died in
  between; every placement is announced first) is disabled, or its whole secret deleted when the
  file has no key left (a deleted file);
- ``stalled_rotation``: a rotation claim whose lease ran out, or a pending key without a claim,
  is resumed (the pending key is reused if it is provably the service's; else it is replaced);
- ``unfinished_deletion``: a deleted file whose erasure did not complete is erased
  (``shared.erase``: the same call as ``DELETE``).

Every run also writes a signed digest of the access log's new rows (``access_log_digest``; the log
is no longer purged here: ``blobseal audit purge``, the purge role only). It also publishes the age
of the oldest upload still in plaintext (metric; health reports
``degraded`` past ``PLAINTEXT_ALERT_MINUTES``) and the counts of failed uploads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.audit.digests import Digests
from shared.blobs import BlobInfo, Container
from shared.clock import Clock, utcnow
from shared.db.failures import FailureRepository
from shared.db.files import FileRecord, FileRepository
from shared.db.pool import Database
from shared.erase import Eraser
from shared.errors import BlobNotFoundError, BlobsealError, DatabaseError
from shared.ingest import Ingestor, identify_upload
from shared.keys import FileKeyService
from shared.metrics import FAILED_UPLOADS, OLDEST_PLAINTEXT, REPAIRS
from shared.rotation import Rotator
from shared.upload import UPLOAD_ATTEMPT_PREFIX

__all__ = ["LEASE_STATE", "ReconcilePolicy", "ReconcileReport", "Reconciler", "RunLease"]

log = logging.getLogger(__name__)

LEASE_STATE = "run_lease"  # the reconciler_state row of the run in progress: holder and expiry
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
OLDEST_PLAINTEXT_STATE, LAST_RUN_STATE = "oldest_plaintext_at", "last_run_at"


@dataclass(frozen=True)
class ReconcilePolicy:
    batch_size: int = 200
    settle: timedelta = timedelta(minutes=5)  # destructive repairs leave alone what changed more recently
    stranded_after: timedelta = timedelta(minutes=1)  # an upload the host had this long to deliver
    ingest_patience_seconds: float = 10.0  # retries of one stranded upload within a run
    lease: timedelta = timedelta(seconds=30)  # a run's lease, renewed every quarter of it while it runs


@dataclass
class ReconcileReport:
    repairs: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    skipped: bool = False  # another instance held the run
    oldest_plaintext_seconds: float | None = None
    digest: str | None = None  # the access log digest this run wrote (routine, not a repair)

    def count(self, kind: str, file_id: uuid.UUID | None, what: str) -> None:
        self.repairs[kind] = self.repairs.get(kind, 0) + 1
        REPAIRS.labels(kind).inc()
        log.info("reconciler: %s (file %s): %s", kind, file_id, what)

    def as_dict(self) -> dict[str, object]:
        return {"repairs": self.repairs, "failed": self.failed, "skipped": self.skipped,
                "oldest_plaintext_seconds": self.oldest_plaintext_seconds, "digest": self.digest}


class Reconciler:
    def __init__(self, *, db: Database, keys: FileKeyService, eraser: Eraser, ingest: Container,
                 protected: Container, ingestor: Ingestor, rotator: Rotator, digests: Digests, policy: ReconcilePolicy,
                 keep_plaintext: bool = False, clock: Clock = utcnow) -> None:
        self._db, self._keys, self._eraser = db, keys, eraser
        self._ingest, self._protected = ingest, protected
        self._ingestor, self._rotator = ingestor, rotator
        self._policy, self._keep_plaintext, self._clock = policy, keep_plaintext, clock
        self._digests = digests

    async def run(self) -> ReconcileReport:
        """One bounded pass over every kind of repair (skipped while another instance runs one)."""
        report = ReconcileReport()
        lease = RunLease(self._db, duration=self._policy.lease)
        async with lease.held() as taken:
            if not taken:
                report.skipped = True
                return report
            for step in (self._stranded_uploads, self._stale_pending, self._orphan_blobs,
                         self._unrecorded_placements, self._stalled_rotations, self._unfinished_erasures,
                         self._access_log_digest):
                if lease.lost:  # another instance may hold the run now: leave the rest to it
                    report.failed += 1
                    log.warning("reconciler: the run's lease was lost; %s and later steps left to the next run",
                                step.__name__.strip("_"))
                    return report
                await self._guarded(step, report)
            await self._publish(report)
        return report

    async def _guarded(self, step: Callable[[ReconcileReport], Awaitable[None]], report: ReconcileReport) -> None:
        """A step that fails (a dependency down) ends; the others still run, and the next run retries it."""
        try:
            await step(report)
        except BlobsealError as exc:
            report.failed += 1
            log.warning("reconciler: %s stopped: %s", step.__name__.strip("_"), exc)

    # --- stranded uploads ---------------------------------------------------------------------

    async def _stranded_uploads(self, report: ReconcileReport) -> None:
        blobs, complete = await self._listing(self._ingest, "ingest_cursor")
        now = self._clock()
        cutoff = now - min(self._policy.stranded_after, self._policy.settle)
        unencrypted = await self._unencrypted(blobs)
        oldest = min((_when(b) for b in unencrypted), default=None)
        report.oldest_plaintext_seconds = (now - oldest).total_seconds() if oldest else 0.0
        async with self._db.transaction("reconcile_state") as conn:
            failures = FailureRepository(conn)
            held = await failures.held([b.name for b in unencrypted], now)
            listed = None if complete else [b.name for b in blobs]
            await failures.forget_absent({(b.name, b.etag) for b in blobs}, listed)
            await failures.set_state(OLDEST_PLAINTEXT_STATE, oldest.isoformat() if oldest else "")
        due = [b for b in unencrypted if _when(b) < cutoff and (b.name, b.etag) not in held]
        for blob in due[: self._policy.batch_size]:
            try:
                outcome = await self._ingestor.encrypt(blob.name, patience=self._policy.ingest_patience_seconds)
            except BlobsealError as exc:
                report.failed += 1  # recorded (with its reason) by the ingestor
                if exc.transient:
                    break  # a dependency is down: the next run tries again, not each upload now
                continue
            report.count("stranded", outcome.file_id, f"upload ingested again: {outcome.status}")

    async def _unencrypted(self, blobs: list[BlobInfo]) -> list[BlobInfo]:
        """The ingest blobs whose content is not encrypted (with KEEP_PLAINTEXT, encrypted ones stay)."""
        async with self._db.connection("reconcile_ingest") as conn:
            done = await FileRepository(conn).encrypted_versions([b.name for b in blobs])
        return [b for b in blobs if (b.name, b.etag) not in done or not self._keep_plaintext]

    # --- stale pending rows -----------------------------------------------------------------

    async def _stale_pending(self, report: ReconcileReport) -> None:
        async with self._db.connection("reconcile_pending") as conn:
            stalled = await FileRepository(conn).pending_before(self._cutoff(), self._policy.batch_size)
        for record in stalled:
            if await self._upload_still_there(record):
                continue  # the stranded-upload pass completes it
            await self._forget_attempt(record)
            report.count("stale_pending", record.file_id, "attempt of a vanished upload dropped")

    async def _upload_still_there(self, record: FileRecord) -> bool:
        """Whether the upload this row waits for can still arrive: its name holds content with this id
        (an upload over HTTP that stopped touching its row never comes back)."""
        if (record.pending_etag or "").startswith(UPLOAD_ATTEMPT_PREFIX):
            return False
        try:
            info = await self._ingest.info(record.source_name)
        except BlobNotFoundError:
            return False
        return identify_upload(record.source_name, info.etag)[0] == record.file_id

    async def _forget_attempt(self, record: FileRecord) -> None:
        assert record.pending_etag is not None
        blobs, _ = await self._protected.page(prefix=f"{record.file_id}/", size=100, uncommitted=True)
        async with self._db.connection("reconcile_pending") as conn:
            referenced = await FileRepository(conn).referenced_blobs([b.name for b in blobs])
        for blob in blobs:
            if blob.name not in referenced:
                await self._protected.discard(blob.name)
        async with self._db.transaction("reconcile_pending") as conn:
            outcome = await FileRepository(conn).forget_attempt(record.file_id, record.pending_etag)
        if outcome == "deleted":  # the file never got encrypted: its keys protect nothing
            await self._keys.delete_file_keys(record.file_id)

    # --- orphan blobs -----------------------------------------------------------------------

    async def _orphan_blobs(self, report: ReconcileReport) -> None:
        blobs, _ = await self._listing(self._protected, "protected_cursor", uncommitted=True)
        settled = [b for b in blobs if _when(b) < self._cutoff()]
        async with self._db.connection("reconcile_blobs") as conn:
            referenced = await FileRepository(conn).referenced_blobs([b.name for b in settled])
        for blob in [b for b in settled if b.name not in referenced][: self._policy.batch_size]:
            await self._protected.discard(blob.name)
            report.count("orphan_blob", _file_id_of(blob.name), "protected blob no row points at discarded")

    # --- keys placed and never recorded ---------------------------------------------------

    async def _unrecorded_placements(self, report: ReconcileReport) -> None:
        repaired = await self._keys.repair_placements(self._cutoff(), self._policy.batch_size)
        if repaired:
            report.repairs["unrecorded_version"] = report.repairs.get("unrecorded_version", 0) + repaired
            REPAIRS.labels("unrecorded_version").inc(repaired)
            log.info("reconciler: unrecorded_version: %d key(s) placed and never recorded made unusable", repaired)

    # --- stalled rotations ------------------------------------------------------------------

    async def _stalled_rotations(self, report: ReconcileReport) -> None:
        for key in await self._keys.stalled_rotations(self._policy.batch_size):
            try:
                await self._rotator.rotate_file(key.file_id)
            except BlobsealError as exc:
                report.failed += 1
                await self._keys.rotation_failed(key.file_id, key.key_reference, error=str(exc))
                continue
            report.count("stalled_rotation", key.file_id, "rotation left half way resumed and finished")

    # --- deletions, retention -----------------------------------------------------------------

    async def _unfinished_erasures(self, report: ReconcileReport) -> None:
        for record in await self._eraser.unfinished(self._policy.batch_size):
            await self._eraser.erase(record)
            report.count("unfinished_deletion", record.file_id, "deletion that stopped half way finished")

    async def _access_log_digest(self, report: ReconcileReport) -> None:
        """A signed digest of the access log's rows since the last one (``shared.audit.digests``)."""
        report.digest = await self._digests.write()

    # --- plumbing ---------------------------------------------------------------------------

    async def _listing(self, container: Container, cursor: str, **options: Any) -> tuple[list[BlobInfo], bool]:
        """One page of a container per run, going on from where the last run stopped; and whether
        that page was the whole container."""
        async with self._db.connection("reconcile_cursor") as conn:
            marker = await FailureRepository(conn).state(cursor) or None
        blobs, following = await container.page(marker=marker, size=5 * self._policy.batch_size, **options)
        async with self._db.connection("reconcile_cursor") as conn:
            await FailureRepository(conn).set_state(cursor, following or "")
        return blobs, marker is None and following is None

    async def _publish(self, report: ReconcileReport) -> None:
        async with self._db.transaction("reconcile_state") as conn:
            failures = FailureRepository(conn)
            for kind, number in (await failures.counts()).items():
                FAILED_UPLOADS.labels(kind).set(number)
            await failures.set_state(LAST_RUN_STATE, self._clock().isoformat())
        OLDEST_PLAINTEXT.set(report.oldest_plaintext_seconds or 0.0)

    def _cutoff(self) -> datetime:
        return self._clock() - self._policy.settle


def _when(blob: BlobInfo) -> datetime:
    """When the blob last changed (a listing without times counts as now: never touched early)."""
    return blob.modified_on or blob.created_on or datetime.now(UTC)


def _file_id_of(blob_name: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(blob_name.split("/", 1)[0])
    except ValueError:
        return None


class RunLease:
    """One reconciler run per database: the ``run_lease`` row of ``reconciler_state`` names the holder
    and until when it holds the run, in the database's time (instances' clocks do not matter).

    It is taken when absent, expired or already ours; renewed every quarter of its duration while
    the run lasts; deleted when the run ends. A holder that dies stops renewing it, so the first run
    after it expires takes over (at most ``duration`` later). Each statement stands alone
    (autocommit) and no connection is held in between, so it holds through PgBouncer's transaction
    pooling too, which a session advisory lock does not: that lock belongs to whichever server
    connection ran the statement, and the unlock may run on another one.
    """

    _TAKE = """
        INSERT INTO reconciler_state (name, value)
        VALUES ($1, json_build_object('holder', $2::text, 'until', now() + make_interval(secs => $3))::text)
        ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value
         WHERE (reconciler_state.value::json ->> 'until')::timestamptz <= now()
            OR reconciler_state.value::json ->> 'holder' = $2
        RETURNING 1"""
    _RENEW = """
        UPDATE reconciler_state
           SET value = json_build_object('holder', $2::text, 'until', now() + make_interval(secs => $3))::text
         WHERE name = $1 AND value::json ->> 'holder' = $2"""
    _RELEASE = "DELETE FROM reconciler_state WHERE name = $1 AND value::json ->> 'holder' = $2"

    def __init__(self, db: Database, *, duration: timedelta, holder: str | None = None,
                 name: str = LEASE_STATE) -> None:
        if duration <= timedelta(0):
            raise ValueError("a lease lasts a positive time")
        self._db, self._name, self._seconds = db, name, duration.total_seconds()
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.lost = False  # a renewal found the lease taken over (this holder's run should stop)

    async def take(self) -> bool:
        async with self._db.connection("reconcile_lease") as conn:
            return await conn.fetchval(self._TAKE, self._name, self.holder, self._seconds) is not None

    async def renew(self) -> bool:
        """Extend the lease; False (and ``lost``) when it is no longer ours."""
        async with self._db.connection("reconcile_lease") as conn:
            renewed = str(await conn.execute(self._RENEW, self._name, self.holder, self._seconds)) == "UPDATE 1"
        self.lost = self.lost or not renewed
        return renewed

    async def release(self) -> None:
        async with self._db.connection("reconcile_lease") as conn:
            await conn.execute(self._RELEASE, self._name, self.holder)

    @asynccontextmanager
    async def held(self) -> AsyncIterator[bool]:
        """Whether the lease was taken; while it is, renewed in the background; released at the end
        (a release that fails is logged: the lease then runs out by itself)."""
        if not await self.take():
            yield False
            return
        renewer = asyncio.create_task(self._keep())
        try:
            yield True
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            try:
                await self.release()
            except DatabaseError as exc:
                log.warning("reconciler: the run's lease could not be released (it expires by itself): %s", exc)

    async def _keep(self) -> None:
        while not self.lost:
            await asyncio.sleep(self._seconds / 4)
            try:
                await self.renew()
            except DatabaseError as exc:  # the next tick tries again; the lease lasts three more of them
                log.warning("reconciler: the run's lease could not be renewed: %s", exc)
