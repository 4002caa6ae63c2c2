"""Commits whose answer is lost: at every commit point of upload, ingest, rotation and delete.

The suite's PostgreSQL proxy (``tests/support/pg_proxy.py``, ``drop_ack``) forwards the COMMIT of the
transaction that ran the step's statement, lets the server commit, and cuts the connection before the
client reads the answer (``then_cut``: the whole proxy too, so that nothing can be asked until it is
restored; ``forward=False``: the COMMIT never reaches the server, which rolls back).

Observed before (issue 19): a POST whose mark-encrypted commit succeeded but whose answer was lost ran
its clean-up: the protected blob and the keys were deleted while the row stayed ``encrypted`` and listed
(GET answered 500 "no key is recorded for this reference"); a client retrying the 503 got a second file.
Here: every listed file downloads byte-identical or is not listed, and no retry with the same
``Idempotency-Key`` makes a second file.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from localinfra.azurite import Azurite
from shared.bootstrap import Services
from shared.errors import CommitUnknownError, DatabaseUnavailableError, SecretDisabledError
from shared.metrics import REGISTRY
from shared.reconcile import LEASE_STATE
from shared.vault.base import parse_key_reference
from tests.integration.service_fixtures import http_delete, http_download, http_upload, upload
from tests.support.pg_proxy import AckDrop, PgProxy
from tests.support.stack import OPERATOR, StackFactory, all_blobs, assert_clean, pending_rows

pytestmark = [pytest.mark.postgres, pytest.mark.azurite]

TRIALS = int(os.environ.get("BLOBSEAL_FAULT_TRIALS", "100"))  # the long case; make faults: 100

REGISTER = "INSERT INTO files"  # the pending row of an upload (with its Idempotency-Key's row, in one commit)
KEY = "INSERT INTO file_keys"  # the file's key recorded
MARK = "SET status = 'encrypted'"  # the row marked encrypted (upload and ingest)
SWITCH = "UPDATE files SET key_reference"  # a rotation's switch
DELETE = "SET status = 'deleted'"  # a deletion's tombstone


def uncertain(outcome: str) -> float:
    return sum(REGISTRY.get_sample_value("blobseal_commits_uncertain_total", {"operation": op, "outcome": outcome})
               or 0.0 for op in ("register_upload", "create_key", "mark_encrypted", "switch_rotation", "delete_file"))


async def proxied(make_stack: StackFactory, proxy: PgProxy, database_url: str, **settings: str) -> Services:
    return await make_stack(database_url_override=proxy.url(database_url), **settings)


async def listed(stack: Services, prefix: str) -> list[dict[str, Any]]:
    """Every file the service lists as encrypted under names starting with ``prefix`` (all pages; the module's
    database holds other tests' files too)."""
    views, cursor = [], None
    while True:
        page, cursor = await stack.files.list_files(OPERATOR, prefix=prefix, status="encrypted", cursor=cursor)
        views += page
        if cursor is None:
            return views


async def every_listed_file_reads(stack: Services, prefix: str, contents: dict[str, bytes]) -> None:
    """The must-show: each file listed (upload names ``prefix``...) downloads byte-identical over HTTP, and no
    other file is listed (``contents``: upload name -> bytes)."""
    views = await listed(stack, prefix)
    for view in views:
        status, _, body = await http_download(stack, view["file_id"])
        assert status == 200, (view, body[:200])
        assert body == contents[view["source_name"]]
    assert sorted(v["source_name"] for v in views) == sorted(contents)


def names() -> str:
    """A prefix of upload names of this test's own."""
    return f"t-{uuid.uuid4().hex[:12]}/"


async def post(stack: Services, name: str, data: bytes, key: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    return await http_upload(stack, name, data, {"Idempotency-Key": f'"{key}"'})


# --- upload -------------------------------------------------------------------------------------


async def test_a_lost_acknowledgement_of_an_uploads_mark_keeps_the_file_and_its_retry_gets_the_same(
        make_stack: StackFactory, proxy: PgProxy, database_url: str) -> None:
    stack, prefix = await proxied(make_stack, proxy, database_url), names()
    contents: dict[str, bytes] = {}
    before = uncertain("committed")
    for trial in range(3):
        name, data, key = f"{prefix}report-{trial}.bin", os.urandom(300_000 + trial), str(uuid.uuid4())
        rule = proxy.drop_ack(MARK)
        status, _, first = await post(stack, name, data, key)
        assert rule.dropped == 1 and status == 201, first  # the commit's outcome was asked, not guessed
        status, headers, again = await post(stack, name, data, key)  # the client retries anyway
        assert status == 201 and headers.get("idempotency-replayed") == "true" and again == first
        contents[name] = data
    assert uncertain("committed") == before + 3
    await every_listed_file_reads(stack, prefix, contents)
    assert await pending_rows(stack) == []


async def test_an_uploads_mark_whose_outcome_stays_unknown_is_kept_and_the_retry_gets_the_first_answer(
        make_stack: StackFactory, proxy: PgProxy, database_url: str) -> None:
    stack, prefix = await proxied(make_stack, proxy, database_url), names()
    name, data, key = f"{prefix}ledger.csv", os.urandom(700_000), str(uuid.uuid4())
    rule = proxy.drop_ack(MARK, then_cut=True)  # the answer lost, and the database out of reach after it
    status, _, answer = await post(stack, name, data, key)
    assert rule.dropped == 1 and status == 503 and answer["error"] == CommitUnknownError.__name__
    await proxy.restore()
    await stack.files.settled()  # the upload asked again in the background: the file was made, nothing removed
    status, _, refused = await post(stack, name, os.urandom(700_000), key)  # the same key, another body
    assert status == 422, refused
    status, headers, again = await post(stack, name, data, key)
    assert status == 201 and headers.get("idempotency-replayed") == "true"
    await every_listed_file_reads(stack, prefix, {name: data})
    assert (await listed(stack, prefix))[0]["file_id"] == again["file_id"]


async def test_an_uploads_commit_that_never_reached_the_server_leaves_nothing_and_the_retry_makes_the_file(
        make_stack: StackFactory, proxy: PgProxy, database_url: str, azurite: Azurite) -> None:
    stack, prefix = await proxied(make_stack, proxy, database_url), names()
    name, data, key = f"{prefix}scan.pdf", os.urandom(200_000), str(uuid.uuid4())
    rule = proxy.drop_ack(MARK, forward=False)
    status, _, answer = await post(stack, name, data, key)
    assert rule.dropped == 1 and status == 503, answer
    async with stack.db.connection() as conn:  # nothing of it is left: no row, no key, no blob
        assert await conn.fetchval("SELECT count(*) FROM files WHERE source_name = $1", name) == 0
        assert await conn.fetchval("SELECT count(*) FROM file_keys k WHERE NOT EXISTS "
                                   "(SELECT 1 FROM files f WHERE f.file_id = k.file_id)") == 0
    assert await all_blobs(azurite, stack.settings.protected_container) == []
    status, headers, _ = await post(stack, name, data, key)  # the retry makes the file (the first did not)
    assert status == 201 and "idempotency-replayed" not in headers
    await every_listed_file_reads(stack, prefix, {name: data})


async def test_lost_acknowledgements_at_an_uploads_register_and_key_are_settled(
        make_stack: StackFactory, proxy: PgProxy, database_url: str) -> None:
    stack, prefix = await proxied(make_stack, proxy, database_url), names()
    contents = {}
    for point, with_key in ((REGISTER, True), (REGISTER, False), (KEY, True)):
        name, data = f"{prefix}{point.split()[-1]}-{with_key}.bin", os.urandom(150_000)
        rule = proxy.drop_ack(point)
        headers = {"Idempotency-Key": str(uuid.uuid4())} if with_key else {}
        status, _, answer = await http_upload(stack, name, data, headers)
        assert rule.dropped == 1 and status == 201, (point, answer)
        contents[name] = data
    await every_listed_file_reads(stack, prefix, contents)
    assert await pending_rows(stack) == []


# --- ingest, rotation, delete ------------------------------------------------------------------


async def test_lost_acknowledgements_of_an_ingest_are_settled(
        make_stack: StackFactory, proxy: PgProxy, database_url: str, azurite: Azurite) -> None:
    stack = await proxied(make_stack, proxy, database_url)
    expected = {}
    for point in (MARK, "INSERT INTO files", KEY):  # ingest's register is one autocommit statement
        file_id, data = uuid.uuid4(), os.urandom(250_000)
        await upload(azurite, stack.settings.ingest_container, f"{file_id}.bin", data)
        rule = proxy.drop_ack(point)
        outcome = await stack.files.encrypt_ingest_blob(f"{file_id}.bin")
        assert rule.dropped == 1 and outcome.status in ("encrypted", "duplicate"), (point, outcome)
        expected[file_id] = data
    await stack.maintenance.reconcile()
    await assert_clean(stack, azurite, expected)


async def test_a_lost_acknowledgement_of_a_rotations_switch_is_settled(
        make_stack: StackFactory, proxy: PgProxy, database_url: str, azurite: Azurite) -> None:
    stack = await proxied(make_stack, proxy, database_url)
    file_id, data = uuid.uuid4(), os.urandom(400_000)
    await upload(azurite, stack.settings.ingest_container, f"{file_id}.bin", data)
    await stack.files.encrypt_ingest_blob(f"{file_id}.bin")
    old = (await stack.files.describe(OPERATOR, str(file_id)))["key_reference"]

    rule = proxy.drop_ack(SWITCH)
    new = await stack.maintenance.rotate_file(OPERATOR, str(file_id))
    assert rule.dropped == 1 and new != old  # done: the switch committed, the old key disabled at once
    assert (await stack.files.describe(OPERATOR, str(file_id)))["key_reference"] == new
    with pytest.raises(SecretDisabledError):
        await stack.vault.get_secret(*parse_key_reference(old))

    rule = proxy.drop_ack(SWITCH, then_cut=True)  # and once more with the database out of reach after it
    with pytest.raises(CommitUnknownError):
        await stack.maintenance.rotate_file(OPERATOR, str(file_id))
    await proxy.restore()
    newest = (await stack.files.describe(OPERATOR, str(file_id)))["key_reference"]
    assert newest != new  # it did switch; the old key is disabled by the next run's sweep
    await stack.maintenance.rotate_due()
    with pytest.raises(SecretDisabledError):
        await stack.vault.get_secret(*parse_key_reference(new))
    async with stack.db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM file_keys WHERE file_id = $1 AND rotation_claimed_by "
                                   "IS NOT NULL", file_id) == 0
    await stack.maintenance.reconcile()
    await assert_clean(stack, azurite, {file_id: data})


async def test_a_lost_acknowledgement_of_a_delete_is_settled_and_delete_is_idempotent(
        make_stack: StackFactory, proxy: PgProxy, database_url: str, azurite: Azurite) -> None:
    stack, prefix = await proxied(make_stack, proxy, database_url), names()
    ids = []
    for data in (os.urandom(120_000), os.urandom(130_000)):
        status, _, view = await http_upload(stack, f"{prefix}{uuid.uuid4()}.bin", data)
        ids.append(view["file_id"])
    rule = proxy.drop_ack(DELETE)
    status, gone = await http_delete(stack, ids[0])
    assert rule.dropped == 1 and status == 200 and gone["status"] == "deleted"  # settled: deleted, and erased

    rule = proxy.drop_ack(DELETE, then_cut=True)
    status, unknown = await http_delete(stack, ids[1])
    assert rule.dropped == 1 and status == 503, unknown
    await proxy.restore()
    status, again = await http_delete(stack, ids[1])  # DELETE is idempotent: the retry finishes it
    assert status == 200 and again["status"] == "deleted"
    status, twice = await http_delete(stack, ids[1])
    assert status == 200 and twice["deleted_at"] == again["deleted_at"]  # the same tombstone

    assert await listed(stack, prefix) == []  # not listed; nothing of either is left
    assert await all_blobs(azurite, stack.settings.protected_container) == []
    async with stack.db.connection() as conn:
        left = await conn.fetch("SELECT erased_at FROM files WHERE file_id = ANY($1::uuid[])", ids)
        keys = await conn.fetchval("SELECT count(*) FROM file_keys WHERE file_id = ANY($1::uuid[])", ids)
    assert all(r["erased_at"] is not None for r in left) and keys == 0
    for file_id in ids:
        assert await stack.vault.list_versions(f"file-{file_id}") == []


# --- many trials: every commit point, every way its answer is lost --------------------------------


@dataclass
class Client:
    """A client with the README's retry loop: the same Idempotency-Key until an answer that is not 503/409."""

    stack: Services
    proxy: PgProxy
    retries: int = 0

    async def post(self, name: str, data: bytes) -> dict[str, Any]:
        key = str(uuid.uuid4())
        for _ in range(120):
            status, _, answer = await post(self.stack, name, data, key)
            if status == 201:
                return answer
            assert status in (503, 409), answer
            self.retries += 1
            await asyncio.sleep(0.5)
        raise AssertionError("no answer after 120 tries")


async def outage_after(rule: AckDrop, proxy: PgProxy, seconds: float) -> None:
    """The database back ``seconds`` after the answer was lost (with ``then_cut``: a short outage)."""
    await rule.fired.wait()
    await asyncio.sleep(seconds)
    await proxy.restore()


def lose(proxy: PgProxy, point: str, way: str) -> tuple[AckDrop, asyncio.Task[None] | None]:
    """The next commit at ``point`` loses its answer: ``lost`` (the server committed), ``outage`` (and the database
    is out of reach for 0.3 s), ``unsent`` (the COMMIT never reached the server)."""
    rule = proxy.drop_ack(point, then_cut=way == "outage", forward=way != "unsent")
    return rule, asyncio.create_task(outage_after(rule, proxy, 0.3)) if way == "outage" else None


async def test_a_retry_after_an_unknown_outcome_waits_for_it_and_then_makes_the_one_file(
        make_stack: StackFactory, proxy: PgProxy, database_url: str) -> None:
    stack, prefix = await proxied(make_stack, proxy, database_url), names()
    name, data, key = f"{prefix}late.bin", os.urandom(90_000), str(uuid.uuid4())
    rule = proxy.drop_ack(MARK, forward=False, then_cut=True)  # not committed, and nobody can ask for a while
    status, _, answer = await post(stack, name, data, key)
    assert rule.dropped == 1 and status == 503 and answer["error"] == CommitUnknownError.__name__
    await proxy.restore()
    status, headers, answer = await post(stack, name, data, key)  # at once: the first may still be running
    if status == 409:
        assert headers["retry-after"] and answer["error"] == "RequestInProgressError"
        await stack.files.settled()  # the first upload asked again: not made; its row, key and blob removed
        status, headers, answer = await post(stack, name, data, key)
    assert status == 201 and "idempotency-replayed" not in headers, answer  # the retry makes it, once
    await every_listed_file_reads(stack, prefix, {name: data})
    async with stack.db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM files WHERE source_name = $1", name) == 1


@pytest.mark.long
async def test_lost_acknowledgements_at_every_commit_point_many_trials(
        make_stack: StackFactory, proxy: PgProxy, database_url: str, azurite: Azurite) -> None:
    stack, prefix = await proxied(make_stack, proxy, database_url), names()
    client = Client(stack, proxy)
    ways = ("lost", "outage", "unsent")
    uploads: dict[str, bytes] = {}
    outcomes = ("committed", "rolled_back", "unknown")
    dropped, started = 0, {o: uncertain(o) for o in outcomes}
    for trial, (point, way) in zip(range(TRIALS), itertools.cycle(itertools.product((REGISTER, KEY, MARK), ways))):
        name, data = f"{prefix}trial-{trial}.bin", os.urandom(64_000 + trial)
        rule, outage = lose(proxy, point, way)
        await client.post(name, data)
        if outage is not None:
            await outage
        dropped += rule.dropped
        rule.times = 0
        uploads[name] = data
    await stack.files.settled()
    asked = {o: int(uncertain(o) - started[o]) for o in outcomes}
    print(f"\n{TRIALS} uploads (register, key, mark x lost, outage, unsent): {dropped} acknowledgements lost, "
          f"re-reads found {asked}, {client.retries} client retries (503/409), "
          f"{len(await listed(stack, prefix))} files listed")
    assert dropped == TRIALS
    await every_listed_file_reads(stack, prefix, uploads)  # one file per request, each byte-identical

    other: dict[uuid.UUID, bytes] = {}  # ingest, rotation and delete, each way
    for trial, (point, way) in zip(range(TRIALS // 2), itertools.cycle(itertools.product((MARK, SWITCH, DELETE),
                                                                                          ways))):
        file_id, data = uuid.uuid4(), os.urandom(80_000)
        await upload(azurite, stack.settings.ingest_container, f"{file_id}.bin", data)
        if point != MARK:
            await stack.files.encrypt_ingest_blob(f"{file_id}.bin")
        rule, outage = lose(proxy, point, way)
        for _ in range(20):
            try:
                if point == MARK:
                    await stack.files.encrypt_ingest_blob(f"{file_id}.bin")
                elif point == SWITCH:
                    await stack.maintenance.rotate_file(OPERATOR, str(file_id))
                else:
                    await stack.files.delete(OPERATOR, str(file_id))
                break
            except Exception:  # 503 to a caller: it retries once the database answers again
                await asyncio.sleep(0.5)
        if outage is not None:
            await outage
        assert rule.dropped == 1, (trial, point, way)
        rule.times = 0
        if point != DELETE:
            other[file_id] = data
    await stack.maintenance.rotate_due()  # the sweep disables what a switch left enabled
    await stack.maintenance.reconcile()
    await assert_clean(stack, azurite, other)  # every ingested (and rotated) file byte-identical, nothing left
    print(f"{TRIALS // 2} ingest marks, rotation switches and deletes (x lost, outage, unsent): all settled, "
          f"{len(other)} files byte-identical, the deleted ones gone; re-reads since the uploads: "
          f"{ {o: int(uncertain(o) - started[o]) - asked[o] for o in outcomes} }")
    await every_listed_file_reads(stack, prefix, uploads)


async def test_a_reconciler_lease_whose_taking_lost_its_answer_is_given_back_at_once(
        make_stack: StackFactory, proxy: PgProxy, database_url: str) -> None:
    """The run lease is taken in one autocommit statement: its answer lost, the run does not go ahead, and the lease
    it may hold is deleted at once, so the next run (any instance's) need not wait the 30 s out."""
    stack = await proxied(make_stack, proxy, database_url)
    rule = proxy.drop_ack("INSERT INTO reconciler_state (name, value)")
    with pytest.raises(DatabaseUnavailableError):
        await stack.maintenance.reconcile()
    assert rule.dropped == 1
    async with stack.db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM reconciler_state WHERE name = $1", LEASE_STATE) == 0
    assert not (await stack.maintenance.reconcile()).skipped
