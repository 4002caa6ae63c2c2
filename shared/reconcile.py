"""The reconciler: a controller that finds what faults and races left behind and repairs it, with no operator.

Run by a timer (``RECONCILE_SCHEDULE``, every 5 minutes) and by ``python -m shared.cli
reconcile``. One run at a time per database (a lease row in ``reconciler_state``, renewed while
the run lasts: other instances skip the run; a crashed holder's lease runs out), bounded per run
(``RECONCILE_BATCH_SIZE`` items of each kind; long listings go on from a saved cursor next run),
idempotent. A run is a list of small repairs (``Repair``): each looks for what needs it, then fixes
one item at a time with **the same operation the API or the timer uses** (no copy of it here), and one
item that fails is counted, logged and left for the next run while the next item is fixed (only a
dependency that is down, seen by a stranded upload, ends that repair's run early). The destructive
repairs touch only what is older than ``RECONCILE_AFTER_SECONDS``, so attempts still in flight are
left alone. Each repair is counted in ``blobseal_repairs_total{kind}`` and logged once, with the
file id. All SQL is in ``shared/db/``:

- ``stranded``: an ingest blob a minute old whose content has no encrypted row (missed,
  poisoned after a transient fault, overwritten) is ingested again (``Ingestor.encrypt``, as the
  trigger and ``replay``), unless its failure is permanent (``failed`` lists it: ``replay`` decides)
  or its hold has not passed (a minute after each failure: the host may be retrying it); attempts
  only grow (failure records are kept while their upload is there);
- ``stale_pending``: an attempt whose upload is gone, or whose name now holds content with
  another id, is dropped (``Attempts.abandon``, the uploader's own clean-up): a pending row is
  removed with its keys and blobs; an encrypted file keeps its content and forgets the attempt;
  nothing a committed row refers to is touched;
- ``orphan_blob``: a protected blob no row points at (an abandoned attempt, or blocks staged
  and never committed) is discarded;
- ``unrecorded_version``: a key placed (a vault version) and never recorded (a worker died in
  between; every placement is announced first) is disabled, or its whole secret deleted when the
  file has no key left (a deleted file);
- ``stalled_rotation``: a rotation claim whose lease ran out, or a pending key without a claim,
  is resumed (``Rotator.rotate_one``, as the timer: a failure backs the file off);
- ``unfinished_deletion``: a deleted file whose erasure did not complete is erased
  (``Eraser.erase``: the same call as ``DELETE``, ``retired_blobs`` rows included);
- ``expired_idempotency_key``: an ``Idempotency-Key`` past its 24 hours is forgotten.

Every run also writes a signed digest of the access log's new rows (``access_log_digest``, reported
as ``digest``, not as a repair; the log is no longer purged here: ``blobseal audit purge``, the purge
role only). It also publishes the age of the oldest upload still in plaintext (metric; health reports
``degraded`` past ``PLAINTEXT_ALERT_MINUTES``) and the counts of failed uploads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from shared.attempts import Attempts
from shared.audit.digests import Digests
from shared.blobs import BlobInfo, Container
from shared.clock import Clock, utcnow
from shared.db.failures import FailureRepository
from shared.db.files import FileRecord, FileRepository
from shared.db.leases import LeaseRepository
from shared.db.pool import Database
from shared.db.upload_requests import UploadRequestRepository
from shared.erase import Eraser
from shared.errors import BlobNotFoundError, BlobsealError, DatabaseError
from shared.ingest import Ingestor, identify_upload
from shared.keys import FileKey, FileKeyService
from shared.metrics import FAILED_UPLOADS, OLDEST_PLAINTEXT, REPAIRS
from shared.rotation import Rotator
from shared.upload import UPLOAD_ATTEMPT_PREFIX

__all__ = ["LEASE_STATE", "Fixed", "ReconcilePolicy", "ReconcileReport", "Reconciler", "Repair", "RunLease"]

log = logging.getLogger(__name__)

LEASE_STATE = "run_lease"  # the reconciler_state row of the run in progress: holder and expiry
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
OLDEST_PLAINTEXT_STATE, LAST_RUN_STATE = "oldest_plaintext_at", "last_run_at"

T = TypeVar("T")


@dataclass(frozen=True)
class ReconcilePolicy:
    batch_size: int = 200
    settle: timedelta = timedelta(minutes=5)  # destructive repairs leave alone what changed more recently
    stranded_after: timedelta = timedelta(minutes=1)  # an upload the host had this long to deliver
    ingest_patience_seconds: float = 10.0  # retries of one stranded upload within a run
    lease: timedelta = timedelta(seconds=30)  # a run's lease, renewed every quarter of it while it runs


@dataclass(frozen=True)
class Fixed:
    """What one fix did: the file it concerns, in a few words; ``count`` repairs of its kind."""

    file_id: uuid.UUID | None
    what: str
    count: int = 1


@dataclass(frozen=True)
class Repair(Generic[T]):
    """One kind of repair: ``find`` what needs it (at most a batch), ``fix`` one item (None: nothing was needed)."""

    kind: str
    find: Callable[[ReconcileReport], Awaitable[Sequence[T]]]
    fix: Callable[[T], Awaitable[Fixed | None]]
    stop_when_down: bool = False  # a transient failure (a dependency down) ends this repair's run


@dataclass
class ReconcileReport:
    repairs: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    skipped: bool = False  # another instance held the run
    oldest_plaintext_seconds: float | None = None
    digest: str | None = None  # the access log digest this run wrote

    def count(self, kind: str, fixed: Fixed) -> None:
        self.repairs[kind] = self.repairs.get(kind, 0) + fixed.count
        REPAIRS.labels(kind).inc(fixed.count)
        log.info("reconciler: %s (file %s): %s", kind, fixed.file_id, fixed.what)

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
        self._attempts = Attempts(db=db, keys=keys, protected=protected)
        self.repairs: tuple[Repair[Any], ...] = (
            Repair("stranded", self._stranded, self._ingest_again, stop_when_down=True),
            Repair("stale_pending", self._stale_attempts, self._drop_attempt),
            Repair("orphan_blob", self._orphan_blobs, self._discard_blob),
            Repair("unrecorded_version", self._placements, self._unusable_placements),
            Repair("stalled_rotation", self._stalled_rotations, self._resume_rotation),
            Repair("unfinished_deletion", self._unfinished_deletions, self._finish_deletion),
            Repair("expired_idempotency_key", self._expired_keys, self._forget_key),
        )

    async def run(self) -> ReconcileReport:
        """One bounded pass over every kind of repair (skipped while another instance runs one)."""
        report = ReconcileReport()
        lease = RunLease(self._db, duration=self._policy.lease)
        async with lease.held() as taken:
            if not taken:
                report.skipped = True
                return report
            for repair in self.repairs:
                if lease.lost:  # another instance may hold the run now: leave the rest to it
                    report.failed += 1
                    log.warning("reconciler: the run's lease was lost; %s and later repairs left to the next run",
                                repair.kind)
                    return report
                await self._repair(repair, report)
            await self._digest(report)
            await self._publish(report)
        return report

    async def _repair(self, repair: Repair[Any], report: ReconcileReport) -> None:
        """Find, then fix each item on its own: a failing item is counted and logged, the next one is fixed."""
        try:
            items = await repair.find(report)
        except BlobsealError as exc:
            report.failed += 1
            log.warning("reconciler: %s: looking for what needs it failed (the next run looks again): %s",
                        repair.kind, exc)
            return
        for item in items[: self._policy.batch_size]:
            try:
                fixed = await repair.fix(item)
            except Exception as exc:  # one bad item: counted and logged; the next one is fixed
                report.failed += 1
                unexpected = not isinstance(exc, BlobsealError)
                log.log(logging.ERROR if unexpected else logging.WARNING, "reconciler: %s (file %s) failed: %s",
                        repair.kind, _file_of(item), exc if not unexpected else type(exc).__name__,
                        exc_info=unexpected)
                if repair.stop_when_down and isinstance(exc, BlobsealError) and exc.transient:
                    return  # a dependency is down: the next run tries again, not every item now
                continue
            if fixed is not None:
                report.count(repair.kind, fixed)

    # --- stranded uploads ---------------------------------------------------------------------

    async def _stranded(self, report: ReconcileReport) -> list[BlobInfo]:
        """Uploads whose content has no encrypted row, a minute old, not held by a failure record."""
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
        return [b for b in unencrypted if _when(b) < cutoff and (b.name, b.etag) not in held]

    async def _ingest_again(self, blob: BlobInfo) -> Fixed:
        outcome = await self._ingestor.encrypt(blob.name, patience=self._policy.ingest_patience_seconds)
        return Fixed(outcome.file_id, f"upload ingested again: {outcome.status}")

    async def _unencrypted(self, blobs: list[BlobInfo]) -> list[BlobInfo]:
        """The ingest blobs whose content is not encrypted (with KEEP_PLAINTEXT, encrypted ones stay)."""
        async with self._db.connection("reconcile_ingest") as conn:
            done = await FileRepository(conn).encrypted_versions([b.name for b in blobs])
        return [b for b in blobs if (b.name, b.etag) not in done or not self._keep_plaintext]

    # --- stale attempts -----------------------------------------------------------------------

    async def _stale_attempts(self, report: ReconcileReport) -> list[FileRecord]:
        async with self._db.connection("reconcile_pending") as conn:
            return await FileRepository(conn).pending_before(self._cutoff(), self._policy.batch_size)

    async def _drop_attempt(self, record: FileRecord) -> Fixed | None:
        assert record.pending_etag is not None
        if await self._upload_still_there(record):
            return None  # the stranded-upload repair completes it
        outcome = await self._attempts.abandon(record.file_id, record.pending_etag, settled_before=self._cutoff())
        return Fixed(record.file_id, f"attempt of a vanished upload dropped ({outcome})")

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

    # --- orphan blobs -----------------------------------------------------------------------

    async def _orphan_blobs(self, report: ReconcileReport) -> list[str]:
        blobs, _ = await self._listing(self._protected, "protected_cursor", uncommitted=True)
        settled = [b.name for b in blobs if _when(b) < self._cutoff()]
        async with self._db.connection("reconcile_blobs") as conn:
            referenced = await FileRepository(conn).referenced_blobs(settled)
        return [name for name in settled if name not in referenced]

    async def _discard_blob(self, name: str) -> Fixed:
        await self._protected.discard(name)
        return Fixed(_file_id_of(name), "protected blob no row points at discarded")

    # --- keys placed and never recorded ---------------------------------------------------

    async def _placements(self, report: ReconcileReport) -> list[datetime]:
        return [self._cutoff()]  # the custodies walk their own announcements (one call, each item on its own)

    async def _unusable_placements(self, cutoff: datetime) -> Fixed | None:
        repaired = await self._keys.repair_placements(cutoff, self._policy.batch_size)
        return Fixed(None, f"{repaired} key(s) placed and never recorded made unusable", repaired) if repaired \
            else None

    # --- stalled rotations ------------------------------------------------------------------

    async def _stalled_rotations(self, report: ReconcileReport) -> list[FileKey]:
        return await self._keys.stalled_rotations(self._policy.batch_size)

    async def _resume_rotation(self, key: FileKey) -> Fixed | None:
        if not await self._rotator.rotate_one(key.file_id, key.key_reference, only_if_current=False):
            return None  # another worker holds it now
        return Fixed(key.file_id, "rotation left half way resumed and finished")

    # --- deletions, retention -----------------------------------------------------------------

    async def _unfinished_deletions(self, report: ReconcileReport) -> list[FileRecord]:
        return await self._eraser.unfinished(self._policy.batch_size)

    async def _finish_deletion(self, record: FileRecord) -> Fixed:
        await self._eraser.erase(record)
        return Fixed(record.file_id, "deletion that stopped half way finished")

    async def _expired_keys(self, report: ReconcileReport) -> list[tuple[str, str]]:
        async with self._db.connection("reconcile_idempotency") as conn:
            return await UploadRequestRepository(conn).expired(self._policy.batch_size)

    async def _forget_key(self, key: tuple[str, str]) -> Fixed | None:
        async with self._db.connection("reconcile_idempotency") as conn:
            forgotten = await UploadRequestRepository(conn).forget_expired(*key)
        return Fixed(None, "an Idempotency-Key past its time forgotten") if forgotten else None

    async def _digest(self, report: ReconcileReport) -> None:
        """A signed digest of the access log's rows since the last one (``shared.audit.digests``)."""
        try:
            report.digest = await self._digests.write()
        except BlobsealError as exc:
            report.failed += 1
            log.warning("reconciler: the access log digest failed (the next run writes it): %s", exc)

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
        try:
            async with self._db.transaction("reconcile_state") as conn:
                failures = FailureRepository(conn)
                for kind, number in (await failures.counts()).items():
                    FAILED_UPLOADS.labels(kind).set(number)
                await failures.set_state(LAST_RUN_STATE, self._clock().isoformat())
        except BlobsealError as exc:
            report.failed += 1
            log.warning("reconciler: publishing the run's state failed: %s", exc)
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


def _file_of(item: object) -> object:
    """The file an item of a repair concerns, for the log."""
    if isinstance(item, BlobInfo):
        return identify_upload(item.name, item.etag)[0]
    if isinstance(item, str):
        return _file_id_of(item)
    return getattr(item, "file_id", None)


class RunLease:
    """One reconciler run per database: the ``run_lease`` row of ``reconciler_state`` names the holder
    and until when it holds the run, in the database's time (instances' clocks do not matter).

    It is taken when absent, expired or already ours; renewed every quarter of its duration while
    the run lasts; deleted when the run ends, whatever ended it. A holder that dies stops renewing it,
    so the first run after it expires takes over (at most ``duration`` later); a take whose answer was
    lost is given back at once (it may have been taken). Each statement stands alone (autocommit) and
    no connection is held in between (``shared.db.leases``), so it holds through PgBouncer's
    transaction pooling too.
    """

    def __init__(self, db: Database, *, duration: timedelta, holder: str | None = None,
                 name: str = LEASE_STATE) -> None:
        if duration <= timedelta(0):
            raise ValueError("a lease lasts a positive time")
        self._db, self._name, self._seconds = db, name, duration.total_seconds()
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.lost = False  # a renewal found the lease taken over (this holder's run should stop)

    async def take(self) -> bool:
        async with self._db.connection("reconcile_lease") as conn:
            return await LeaseRepository(conn).take(self._name, self.holder, self._seconds)

    async def renew(self) -> bool:
        """Extend the lease; False (and ``lost``) when it is no longer ours."""
        async with self._db.connection("reconcile_lease") as conn:
            renewed = await LeaseRepository(conn).renew(self._name, self.holder, self._seconds)
        self.lost = self.lost or not renewed
        return renewed

    async def release(self) -> None:
        async with self._db.connection("reconcile_lease") as conn:
            await LeaseRepository(conn).release(self._name, self.holder)

    @asynccontextmanager
    async def held(self) -> AsyncIterator[bool]:
        """Whether the lease was taken; while it is, renewed in the background; released at the end
        (a release that fails is logged: the lease then runs out by itself)."""
        try:
            taken = await self.take()
        except DatabaseError:
            await self._release_quietly()  # the take may have committed with its answer lost
            raise
        if not taken:
            yield False
            return
        renewer = asyncio.create_task(self._keep())
        try:
            yield True
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await self._release_quietly()

    async def _release_quietly(self) -> None:
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
