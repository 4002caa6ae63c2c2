"""The file service against real Azurite, real PostgreSQL and the JSON vault: ingest, download, rotation.

Crashes are injected by making one real adapter method fail once (after or before doing its
work); the next delivery or run must complete the job with nothing lost or duplicated.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi import Request

from localinfra.azurite import Azurite
from shared import http_api
from shared.blobs import BlockWriter, Container
from shared.bootstrap import Services, rotation_policy, transfer
from shared.crypto.format import Header, Layout
from shared.db.files import FileRepository
from shared.download import Reader, Span, Tails
from shared.errors import (
    BlobChangedError,
    FileNotReadyError,
    IntegrityError,
    InvalidRequestError,
    KeyRetiredError,
    RangeNotSatisfiableError,
    SecretDisabledError,
    UnknownFileError,
    UploadConflictError,
    VaultUnavailableError,
)
from shared.ingest import identify_upload
from shared.keys import FileKeyService
from shared.metrics import REGISTRY
from shared.rotation import Rotator
from shared.vault.local import LocalJsonVault
from tests.integration.service_fixtures import (
    TEST_FUNCTION_KEY,
    blob_names,
    collect,
    http_download,
    new_name,
    random_bytes,
    read_blob,
    upload,
)
from tests.support.stack import OPERATOR

pytestmark = [pytest.mark.postgres, pytest.mark.azurite]


class Crash(Exception):
    """An injected crash."""


StackFactory = Callable[..., Awaitable[Services]]


@pytest.fixture(params=["secret", "envelope"])
async def stack(make_stack: StackFactory, request: pytest.FixtureRequest) -> Services:
    """The stack in each key mode: every test here (tamper, ranges, rotation, crashes) runs in both."""
    return await make_stack(KEY_MODE=request.param)


async def ingest(stack: Services, azurite: Azurite, data: bytes, name: str | None = None) -> tuple[str, uuid.UUID]:
    name = name or new_name()
    await upload(azurite, stack.settings.ingest_container, name, data)
    outcome = await stack.files.encrypt_ingest_blob(name)
    assert outcome.status == "encrypted" and outcome.file_id is not None
    return name, outcome.file_id


async def open_file(stack: Services, file_id: uuid.UUID | str, span: Span | None = None) -> AsyncIterator[memoryview]:
    """The neutral read the HTTP face and the CLI both use."""
    return await stack.files.open(await stack.files.encrypted_file(str(file_id)), span)


async def download(stack: Services, file_id: uuid.UUID) -> bytes:
    return await collect(await open_file(stack, file_id))


async def key_rows(stack: Services, file_id: uuid.UUID) -> list[tuple[str, str]]:
    async with stack.db.connection() as conn:
        rows = await conn.fetch("SELECT key_reference, state FROM file_keys WHERE file_id = $1 ORDER BY id", file_id)
    return [(r["key_reference"], r["state"]) for r in rows]


async def assert_retired_key_unreadable(stack: Services, old_ref: str) -> None:
    """A rotated-out key is refused: its vault version disabled (secret custody), its row marked (both)."""
    with pytest.raises(KeyRetiredError):
        await stack.keys.get_key(old_ref)
    if stack.settings.key_mode == "secret":
        with pytest.raises(SecretDisabledError):
            await stack.vault.get_secret(*old_ref.split("/"))
    else:
        assert old_ref.split("/")[1].startswith("env-")  # never a vault secret


# --- ingest -----------------------------------------------------------------------------

async def test_upload_is_encrypted_and_downloads_back(stack: Services, azurite: Azurite) -> None:
    data = random_bytes(3 * 1024 * 1024 + 123)
    name, file_id = await ingest(stack, azurite, data, new_name(".pdf"))
    assert await download(stack, file_id) == data
    protected = await blob_names(azurite, stack.settings.protected_container)
    assert len(protected) == 1 and protected[0].startswith(f"{file_id}/")
    stored = await read_blob(azurite, stack.settings.protected_container, protected[0])
    assert data[:4096] not in stored and Header.parse(stored).file_id == file_id
    assert await blob_names(azurite, stack.settings.ingest_container) == []  # plaintext deleted
    info = await stack.files.describe(OPERATOR, str(file_id))
    assert info["name"] == name and info["size"] == len(data) and info["status"] == "encrypted"
    assert info["key_reference"].startswith(f"file-{file_id}/")


@pytest.mark.parametrize("name,expected_display", [
    ("{id}", "{id}"), ("{id}/report final.pdf", "report final.pdf"), ("{id}.csv", "{id}.csv")])
async def test_file_id_comes_from_a_leading_uuid(stack: Services, azurite: Azurite, name: str,
                                                 expected_display: str) -> None:
    file_id = uuid.uuid4()
    _, got = await ingest(stack, azurite, b"x", name.format(id=file_id))
    assert got == file_id
    assert (await stack.files.describe(OPERATOR, str(file_id)))["name"] == expected_display.format(id=file_id)


def test_other_names_get_a_stable_id() -> None:
    first, _ = identify_upload("inbox/report.pdf", '"0x1"')
    assert identify_upload("inbox/report.pdf", '"0x1"')[0] == first
    assert identify_upload("inbox/report.pdf", '"0x2"')[0] != first
    assert identify_upload("inbox/report.pdf", '"0x1"')[1] == "report.pdf"


async def test_duplicate_delivery_creates_nothing_new(make_stack: StackFactory, azurite: Azurite) -> None:
    stack = await make_stack(KEEP_PLAINTEXT="true")  # the plaintext stays, so it can be delivered again
    settings = stack.settings
    name, file_id = await ingest(stack, azurite, b"hello")
    again = await stack.files.encrypt_ingest_blob(name)
    assert again.status == "duplicate" and again.file_id == file_id
    assert len(await key_rows(stack, file_id)) == 1
    assert len(await blob_names(azurite, settings.protected_container)) == 1
    versions = await stack.vault.list_versions(f"file-{file_id}")
    assert len(versions) == 1


async def test_delivery_after_completion_is_a_no_op(stack: Services, azurite: Azurite) -> None:
    name, _ = await ingest(stack, azurite, b"hello")
    assert (await stack.files.encrypt_ingest_blob(name)).status == "gone"


async def test_concurrent_duplicate_deliveries(stack: Services, azurite: Azurite) -> None:
    data = random_bytes(2 * 1024 * 1024)
    name = new_name()
    await upload(azurite, stack.settings.ingest_container, name, data)
    outcomes = await asyncio.gather(*(stack.files.encrypt_ingest_blob(name) for _ in range(3)),
                                    return_exceptions=True)
    file_ids = {o.file_id for o in outcomes if not isinstance(o, BaseException)}
    assert len(file_ids) == 1, outcomes
    file_id = file_ids.pop()
    assert file_id is not None
    assert await download(stack, file_id) == data
    assert [state for _, state in await key_rows(stack, file_id)] == ["active"]
    assert len(await blob_names(azurite, stack.settings.protected_container)) == 1


async def test_a_new_version_under_the_same_name_replaces_the_content(stack: Services, azurite: Azurite) -> None:
    name = f"{uuid.uuid4()}.txt"
    first, second = random_bytes(200_000), random_bytes(90_000)
    _, file_id = await ingest(stack, azurite, first, name)
    old_etag = (await http_download(stack, str(file_id), method="HEAD"))[1]["etag"]
    in_flight = await open_file(stack, file_id)
    head = await anext(in_flight)

    _, again = await ingest(stack, azurite, second, name)  # the newest content wins, under the same file id
    assert again == file_id and await download(stack, file_id) == second
    assert bytes(head) + b"".join([bytes(p) async for p in in_flight]) == first  # a download in flight finishes
    _, headers, _ = await http_download(stack, str(file_id), method="HEAD")
    assert headers["content-length"] == str(len(second)) and headers["etag"] != old_etag
    assert [state for _, state in await key_rows(stack, file_id)] == ["active"]  # the same key
    async with stack.db.connection() as conn:
        retired = await conn.fetchval("SELECT count(*) FROM retired_blobs WHERE file_id = $1", file_id)
    assert retired == 1 and await blob_names(azurite, stack.settings.ingest_container) == []


async def test_a_second_name_with_a_taken_uuid_is_refused_kept_and_listed(stack: Services, azurite: Azurite) -> None:
    file_id = uuid.uuid4()
    await ingest(stack, azurite, b"first", f"{file_id}/a.txt")
    await upload(azurite, stack.settings.ingest_container, f"{file_id}/b.txt", b"second")
    with pytest.raises(UploadConflictError, match="already used by another upload"):
        await stack.files.encrypt_ingest_blob(f"{file_id}/b.txt")
    assert await blob_names(azurite, stack.settings.ingest_container) == [f"{file_id}/b.txt"]
    [failure] = [f for f in await stack.maintenance.failed_uploads(OPERATOR) if f.source_name == f"{file_id}/b.txt"]
    assert failure.permanent and failure.error == "UploadConflictError" and failure.next_attempt_at is None
    assert "already used by another upload" in failure.reason and failure.file_id == file_id
    assert await download(stack, file_id) == b"first"


def _fail_once(monkeypatch: pytest.MonkeyPatch, owner: Any, method: str, *, after: bool, on_call: int = 1) -> None:
    original = getattr(owner, method)
    calls = {"n": 0}

    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == on_call and not after:
            raise Crash(method)
        result = await original(self, *args, **kwargs)
        if calls["n"] == on_call and after:
            raise Crash(method)
        return result

    monkeypatch.setattr(owner, method, wrapper)


CRASH_POINTS = [
    ("after registering the file", FileRepository, "register", True, 1),
    ("after creating the key", FileKeyService, "create_key", True, 1),
    ("mid-upload, second block", BlockWriter, "stage", False, 2),
    ("after committing the blob", BlockWriter, "commit", True, 1),
    ("after marking it encrypted", FileRepository, "mark_encrypted", True, 1),
    ("before deleting the plaintext", Container, "delete", False, 1),
]


@pytest.mark.parametrize("label,owner,method,after,on_call", CRASH_POINTS, ids=[c[0] for c in CRASH_POINTS])
async def test_crash_at_any_step_is_completed_by_the_next_delivery(
        stack: Services, azurite: Azurite, monkeypatch: pytest.MonkeyPatch,
        label: str, owner: Any, method: str, after: bool, on_call: int) -> None:
    data = random_bytes(3 * 1024 * 1024)
    name = new_name()
    await upload(azurite, stack.settings.ingest_container, name, data)
    with monkeypatch.context() as patch:
        _fail_once(patch, owner, method, after=after, on_call=on_call)
        with pytest.raises(Crash):
            await stack.files.encrypt_ingest_blob(name)
    assert await blob_names(azurite, stack.settings.ingest_container) == [name]  # plaintext kept
    outcome = await stack.files.encrypt_ingest_blob(name)
    assert outcome.status in ("encrypted", "duplicate") and outcome.file_id is not None
    assert await download(stack, outcome.file_id) == data
    assert [state for _, state in await key_rows(stack, outcome.file_id)] == ["active"]
    await stack.maintenance.reconcile()  # what the crashed delivery left (its own blob, once committed) goes
    assert len(await blob_names(azurite, stack.settings.protected_container)) == 1
    assert await blob_names(azurite, stack.settings.ingest_container) == []


async def test_ingest_memory_is_bounded_by_chunks_not_file_size(stack: Services, azurite: Azurite) -> None:
    name = new_name()
    size = 48 * 1024 * 1024
    await upload(azurite, stack.settings.ingest_container, name, random_bytes(size))
    tracemalloc.start()
    try:
        outcome = await stack.files.encrypt_ingest_blob(name)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.status == "encrypted"
    assert peak < 8 * stack.settings.chunk_size, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB file"


# --- download ---------------------------------------------------------------------------

async def test_ranges_over_the_http_face(stack: Services, azurite: Azurite) -> None:
    data = random_bytes(300_000)
    _, file_id = await ingest(stack, azurite, data)
    for header, expected in [("bytes=0-0", data[:1]), ("bytes=65535-65537", data[65535:65538]),
                             ("bytes=299990-", data[299990:]), ("bytes=-70000", data[-70000:])]:
        status, headers, body = await http_download(stack, str(file_id), {"Range": header})
        assert status == 206 and body == expected
        assert headers["content-length"] == str(len(expected))
    status, headers, body = await http_download(stack, str(file_id))
    assert status == 200 and body == data and "content-range" not in headers


class StorageCalls:
    """Counts the protected container's reads by kind (the calls a download makes)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, container: Container,
                 methods: tuple[str, ...] = ("info", "read_exact", "read", "open_stream")) -> None:
        self.calls: list[str] = []
        for method in methods:
            monkeypatch.setattr(container, method, self._counted(method, getattr(container, method)))

    def _counted(self, method: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(method)
            return real(*args, **kwargs)
        return call

    def taken(self) -> list[str]:
        taken, self.calls = sorted(self.calls), []
        return taken


async def test_a_download_asks_storage_only_for_bytes(stack: Services, azurite: Azurite,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    small, large = random_bytes(200_000), random_bytes(3 * 1024 * 1024 + 5)
    _, small_id = await ingest(stack, azurite, small)
    _, large_id = await ingest(stack, azurite, large)
    storage = StorageCalls(monkeypatch, stack.files._reader._protected)
    assert await download(stack, small_id) == small
    assert storage.taken() == ["read_exact"]  # the row knows the layout: one request for a small file
    small_row = await stack.files.encrypted_file(str(small_id))
    assert small_row.protected_blob is not None and small_row.protected_etag is not None
    assert stack.files._reader._tails.get(small_row.protected_blob, small_row.protected_etag) is None  # not kept
    assert await collect(await open_file(stack, large_id, Span(1_000_000, 70_000))) == large[1_000_000:1_070_000]
    # header, final block and the body at once
    assert storage.taken() == ["open_stream", "read_exact", "read_exact"]
    assert await collect(await open_file(stack, large_id, Span(5, 300_000))) == large[5:300_005]
    assert storage.taken() == ["open_stream"]  # read before under this ETag: only the body (pinned to it)
    last = Span(len(large) - 3, 3)  # in the final block alone (5 bytes): no body request to pin, so asked again
    assert await collect(await open_file(stack, large_id, last)) == large[-3:]
    assert storage.taken() == ["read_exact", "read_exact"]  # an empty body: no request
    async with stack.db.connection() as conn:  # a row from before the layout was recorded asks storage first
        await conn.execute("UPDATE files SET protected_etag = NULL, block_size = NULL WHERE file_id = $1", large_id)
    assert await download(stack, large_id) == large
    assert storage.taken()[0] == "info"


async def test_a_remembered_final_block_is_verified_again_and_a_tampered_blob_is_refused(
        stack: Services, azurite: Azurite) -> None:
    data = random_bytes(2_500_000)
    _, file_id = await ingest(stack, azurite, data)
    record = await stack.files.encrypted_file(str(file_id))
    assert record.protected_blob is not None and record.protected_etag is not None
    key = await stack.keys.key_of(str(record.key_reference))
    stored = await read_blob(azurite, stack.settings.protected_container, record.protected_blob)
    layout = Layout.for_plaintext(Header.parse(stored).size, 65536, len(data))
    offset, length = layout.block_span(layout.block_count - 1)
    final = bytearray(stored[offset : offset + length])
    final[-1] ^= 1
    tails = Tails()
    tails.keep(record.protected_blob, record.protected_etag, stored[: layout.header_size], bytes(final))
    with pytest.raises(IntegrityError):  # the remembered final block is opened again for every request
        await Reader(stack.files._reader._protected, tails).open(record, key, Span(0, 1000))
    reader = Reader(stack.files._reader._protected)
    assert await collect(await reader.open(record, key, Span(0, 1000))) == data[:1000]  # remembered now
    tampered = bytearray(stored)
    tampered[layout.header_size + 10] ^= 1
    await upload(azurite, stack.settings.protected_container, record.protected_blob, bytes(tampered))
    with pytest.raises(IntegrityError):  # a new ETag: the pinned body request fails, storage is asked again
        await collect(await reader.open(record, key, Span(0, 1000)))


def test_tails_keep_within_their_budget() -> None:
    tails = Tails(budget=16 * 1000)
    for i in range(40):
        tails.keep(f"b{i}", "e", b"h" * 100, b"f" * 900)
    assert tails.get("b39", "e") == (b"h" * 100, b"f" * 900) and tails.get("b0", "e") is None
    assert sum(tails.get(f"b{i}", "e") is not None for i in range(40)) == 16
    tails.keep("big", "e", b"", b"x" * 1001)  # over a sixteenth of the budget: not kept
    assert tails.get("big", "e") is None and tails.get("b39", "e") is not None


async def test_an_upload_is_read_with_its_properties_in_one_request(stack: Services, azurite: Azurite,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    storage = StorageCalls(monkeypatch, stack.files._ingestor._ingest, ("info", "open_whole", "read", "delete"))
    data = random_bytes(70_000)
    _, file_id = await ingest(stack, azurite, data)
    assert storage.taken() == ["delete", "open_whole"]  # no separate properties request
    assert await download(stack, file_id) == data


async def test_a_download_streams_its_body_in_small_pieces_from_one_request(stack: Services, azurite: Azurite,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    data = random_bytes(12 * 1024 * 1024 + 17)
    _, file_id = await ingest(stack, azurite, data)
    storage = StorageCalls(monkeypatch, stack.files._reader._protected)
    pieces = [bytes(piece) async for piece in await open_file(stack, file_id)]
    assert b"".join(pieces) == data
    assert storage.taken() == ["open_stream", "read_exact", "read_exact"]  # one body request for 12 MiB
    assert max(map(len, pieces)) <= 512 * 1024 < stack.settings.chunk_size  # never a whole transfer chunk held


async def test_a_streamed_read_is_pinned_to_its_etag(stack: Services, azurite: Azurite) -> None:
    _, file_id = await ingest(stack, azurite, random_bytes(2_000_000))
    record = await stack.files.encrypted_file(str(file_id))
    assert record.protected_blob is not None
    with pytest.raises(BlobChangedError):
        await stack.files._reader._protected.open_stream(record.protected_blob, 0, 100, etag='"0x8DEADBEEF"')


async def test_a_blob_written_again_since_its_row_is_read_as_it_is_now(stack: Services, azurite: Azurite) -> None:
    data = random_bytes(1_500_000)
    _, file_id = await ingest(stack, azurite, data)
    blob = (await blob_names(azurite, stack.settings.protected_container))[0]
    stored = await read_blob(azurite, stack.settings.protected_container, blob)
    await upload(azurite, stack.settings.protected_container, blob, stored)  # same bytes, a new ETag
    assert await download(stack, file_id) == data


async def test_head_and_request_errors(stack: Services, azurite: Azurite) -> None:
    _, file_id = await ingest(stack, azurite, b"0123456789")
    status, headers, body = await http_download(stack, str(file_id), method="HEAD")
    assert (status, body, headers["content-length"]) == (200, b"", "10")
    assert (await http_download(stack, str(file_id).upper(), method="HEAD"))[0] == 200
    for text, error in [("nope", InvalidRequestError), (file_id.hex, InvalidRequestError),
                        (f"{{{file_id}}}", InvalidRequestError), (str(uuid.uuid4()), UnknownFileError)]:
        with pytest.raises(error):
            await stack.files.encrypted_file(text)
        status, _, body = await http_download(stack, text)
        assert json.loads(body)["error"] == error.__name__ and status in (400, 404)
    status, headers, body = await http_download(stack, str(file_id), {"Range": "bytes=10-"})
    assert (status, headers["content-range"], json.loads(body)["error"]) == (
        416, "bytes */10", RangeNotSatisfiableError.__name__)


async def test_pending_file_is_not_ready(stack: Services, azurite: Azurite) -> None:
    file_id = uuid.uuid4()
    async with stack.db.transaction() as conn:
        await FileRepository(conn).register(file_id, source_name="x", source_etag="e", name="x",
                                            content_type="text/plain")
    with pytest.raises(FileNotReadyError):
        await open_file(stack, file_id)
    assert (await http_download(stack, str(file_id)))[0] == 409


async def test_empty_file(stack: Services, azurite: Azurite) -> None:
    _, file_id = await ingest(stack, azurite, b"")
    status, headers, body = await http_download(stack, str(file_id))
    assert (status, headers["content-length"], body) == (200, "0", b"")
    assert await download(stack, file_id) == b""


@pytest.mark.parametrize("where", ["header", "middle", "final block"])
async def test_tampered_protected_blob_is_refused(stack: Services, azurite: Azurite, where: str) -> None:
    data = random_bytes(200_000)
    _, file_id = await ingest(stack, azurite, data)
    blob = (await blob_names(azurite, stack.settings.protected_container))[0]
    stored = bytearray(await read_blob(azurite, stack.settings.protected_container, blob))
    stored[{"header": 40, "middle": len(stored) // 2, "final block": len(stored) - 3}[where]] ^= 1
    await upload(azurite, stack.settings.protected_container, blob, bytes(stored))
    failures = REGISTRY.get_sample_value("blobseal_integrity_failures_total", {"operation": "download"}) or 0.0
    released = b""
    with pytest.raises(IntegrityError):
        async for piece in await open_file(stack, file_id):
            released += piece
    assert released == data[: len(released)] and len(released) < len(data)
    assert REGISTRY.get_sample_value("blobseal_integrity_failures_total", {"operation": "download"}) == failures + 1
    if where != "middle":
        assert released == b""  # the header and the final block are checked before the first byte
        status, _, body = await http_download(stack, str(file_id))  # so HTTP answers with a status, not a cut
        message = "the stored file failed its integrity check; nothing of it was served"
        assert status == 500 and json.loads(body) == {"error": "IntegrityError", "message": message}


async def test_a_key_missing_from_the_vault_answers_with_what_to_do(make_stack: StackFactory,
                                                                     azurite: Azurite) -> None:
    # a vault secret per key (envelope keys live in their rows); no key cache: the service would serve its copy of the
    # key for up to KEY_CACHE_SECONDS after the vault lost it (tests/faults/test_key_bound.py)
    stack = await make_stack(KEY_MODE="secret", KEY_VAULT_CACHE_ENABLED="false")
    _, file_id = await ingest(stack, azurite, b"data")
    record = await stack.files.encrypted_file(str(file_id))
    assert record.key_reference is not None
    await stack.vault.delete_secret(record.key_reference.split("/")[0])
    status, _, body = await http_download(stack, str(file_id))
    assert status == 500 and json.loads(body)["error"] == "KeyMissingError"
    assert "an operator must restore it" in json.loads(body)["message"]


@pytest.mark.parametrize("name", ["a\x00b", "x" * 1025])
async def test_names_that_cannot_be_blob_names_are_400(stack: Services, name: str) -> None:
    scope = {"type": "http", "method": "GET", "path": "/api/files", "path_params": {},
             "headers": [(b"x-functions-key", TEST_FUNCTION_KEY.encode())],
             "query_string": urlencode({"name": name}).encode()}
    response = await http_api.find_file(Request(scope), stack)
    assert response.status_code == 400 and json.loads(bytes(response.body))["error"] == "InvalidNameError"


# --- rotation ---------------------------------------------------------------------------

async def test_rotation_reencrypts_switches_and_retires(stack: Services, azurite: Azurite) -> None:
    data = random_bytes(2 * 1024 * 1024 + 5)
    _, file_id = await ingest(stack, azurite, data)
    old_ref = (await stack.files.describe(OPERATOR, str(file_id)))["key_reference"]
    old_blob = (await blob_names(azurite, stack.settings.protected_container))[0]
    new_ref = await stack.maintenance.rotate_file(OPERATOR, str(file_id))
    assert new_ref != old_ref and (await stack.files.describe(OPERATOR, str(file_id)))["key_reference"] == new_ref
    assert await download(stack, file_id) == data
    assert await key_rows(stack, file_id) == [(old_ref, "retired"), (new_ref, "active")]
    await assert_retired_key_unreadable(stack, old_ref)
    assert old_blob in await blob_names(azurite, stack.settings.protected_container)  # within its grace period


async def test_download_in_flight_survives_rotation(stack: Services, azurite: Azurite) -> None:
    data = random_bytes(4 * 1024 * 1024)
    _, file_id = await ingest(stack, azurite, data)
    body = await open_file(stack, file_id)
    first = await anext(body)
    await stack.maintenance.rotate_file(OPERATOR, str(file_id))
    rest = b"".join([piece async for piece in body])
    assert bytes(first) + rest == data


async def test_rotate_due_takes_expired_keys_and_sweeps_old_blobs(make_stack: StackFactory, azurite: Azurite) -> None:
    stack = await make_stack(ROTATION_GRACE_MINUTES="0")
    ids = [(await ingest(stack, azurite, random_bytes(1000)))[1] for _ in range(3)]
    await stack.keys.expire(ids[1])
    report = await stack.maintenance.rotate_due(limit=10)
    assert report.rotated == [str(ids[1])] and report.failed == [] and report.blobs_deleted == 1
    assert len(await blob_names(azurite, stack.settings.protected_container)) == 3
    again = await stack.maintenance.rotate_due(limit=10)
    assert again.rotated == [] and again.blobs_deleted == 0


ROTATION_CRASHES = [
    ("while re-encrypting", BlockWriter, "stage", False, 1),
    ("after the new blob is committed", BlockWriter, "commit", True, 1),
    ("after the switch, before disabling the old key", FileKeyService, "disable_old_key", False, 1),
]


@pytest.mark.parametrize("label,owner,method,after,on_call", ROTATION_CRASHES, ids=[c[0] for c in ROTATION_CRASHES])
async def test_rotation_crash_leaves_file_readable_and_a_rerun_finishes(
        stack: Services, azurite: Azurite, monkeypatch: pytest.MonkeyPatch,
        label: str, owner: Any, method: str, after: bool, on_call: int) -> None:
    data = random_bytes(1024 * 1024 + 1)
    _, file_id = await ingest(stack, azurite, data)
    with monkeypatch.context() as patch:
        _fail_once(patch, owner, method, after=after, on_call=on_call)
        with pytest.raises(Crash):
            await stack.maintenance.rotate_file(OPERATOR, str(file_id))
    assert await download(stack, file_id) == data
    if method == "disable_old_key":
        await stack.keys.retire_pending_disables()
    else:
        await stack.maintenance.rotate_file(OPERATOR, str(file_id))
    states = [state for _, state in await key_rows(stack, file_id)]
    assert states == ["retired", "active"]
    await assert_retired_key_unreadable(stack, (await key_rows(stack, file_id))[0][0])
    assert await download(stack, file_id) == data


async def test_a_vault_failure_after_the_switch_leaves_the_rotation_done_for_the_sweep(
        make_stack: StackFactory, azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = await make_stack(KEY_MODE="secret")  # envelope custody has no vault step after the switch
    data = random_bytes(70_000)
    _, file_id = await ingest(stack, azurite, data)
    old_ref = (await stack.files.describe(OPERATOR, str(file_id)))["key_reference"]

    async def vault_down(self: Any, name: str, version: str) -> None:
        raise VaultUnavailableError("vault down", operation="disable_version")

    with monkeypatch.context() as patch:
        patch.setattr(LocalJsonVault, "disable_version", vault_down)
        new_ref = await stack.maintenance.rotate_file(OPERATOR, str(file_id))  # the one rule: done, not failed
    assert await key_rows(stack, file_id) == [(old_ref, "retired"), (new_ref, "active")]
    assert (await stack.vault.get_secret(*old_ref.split("/"))).value  # still enabled: left for the sweep
    assert await download(stack, file_id) == data
    report = await stack.maintenance.rotate_due()
    assert report.failed == [] and report.rotated == []
    with pytest.raises(SecretDisabledError):
        await stack.vault.get_secret(*old_ref.split("/"))


async def test_health_reports_each_dependency(stack: Services) -> None:
    report = await stack.health.details(OPERATOR)
    assert report["dependencies"] == {"storage": "ok", "database": "ok", "vault": "ok"}
    assert report["degraded"] is False and report["oldest_plaintext_seconds"] == 0


async def test_two_rotation_runs_at_once_rotate_each_file_once(stack: Services, azurite: Azurite) -> None:
    ids = [(await ingest(stack, azurite, random_bytes(200_000)))[1] for _ in range(4)]
    for file_id in ids:
        await stack.keys.expire(file_id)
    second = Rotator(db=stack.db, keys=stack.keys, protected=stack.protected, transfer=transfer(stack.settings),
                     policy=rotation_policy(stack.settings), worker="second-timer")
    first_report, second_report = await asyncio.gather(stack.maintenance.rotate_due(limit=10),
                                                       second.rotate_due(limit=10))
    rotated = first_report.rotated + second_report.rotated
    assert sorted(rotated) == sorted(map(str, ids)) and not first_report.failed and not second_report.failed
    for file_id in ids:
        assert [state for _, state in await key_rows(stack, file_id)] == ["retired", "active"]
        assert len(await download(stack, file_id)) == 200_000
