"""One form of every ETag: the same blob, listed, read and committed through every path of ``shared.blobs``,
has one ETag (quoted, as HTTP writes it), and that value works as a condition on every call that takes one.

Observed before (issue 19): listings returned ``0x8DC...`` and properties and downloads ``"0x8DC..."``, so the
reconciler's comparisons of listings with recorded failures never matched.
"""

from __future__ import annotations

import uuid

import pytest
from azure.storage.blob.aio import BlobServiceClient

from localinfra.azurite import Azurite
from shared.blobs import normal_etag
from shared.errors import BlobChangedError
from tests.integration.service_fixtures import upload
from tests.support.stack import StackFactory

pytestmark = [pytest.mark.azurite, pytest.mark.postgres]


def test_the_one_form_is_quoted() -> None:
    assert normal_etag("0x8DC1") == normal_etag('"0x8DC1"') == '"0x8DC1"'
    assert normal_etag(None) == "" and normal_etag('W/"x"') == 'W/"x"'


async def test_every_path_gives_the_same_etag_for_the_same_blob(make_stack: StackFactory, azurite: Azurite) -> None:
    stack = await make_stack()
    container = stack.protected
    writer = container.writer("e/one.bin", target=4096)
    await writer.stage(b"x" * 5000)  # staged blocks and a commit: Put Block List
    committed = await writer.commit()
    small = container.writer("e/two.bin", target=4096)
    await small.stage(b"y")  # one request: Put Blob
    committed_small = await small.commit()
    sdk = str(await _sdk_etag(azurite, container.name, "e/one.bin"))  # what the SDK's own properties say

    info = await container.info("e/one.bin")
    whole, chunks = await container.open_whole("e/one.bin")
    async for _ in chunks:
        pass
    listed = {b.name: b.etag for b in (await container.page(prefix="e/"))[0]}
    listed_all = {b.name: b.etag for b in (await container.page(prefix="e/", uncommitted=True))[0]}
    assert committed == info.etag == whole.etag == listed["e/one.bin"] == listed_all["e/one.bin"] == sdk
    assert committed_small == (await container.info("e/two.bin")).etag == listed["e/two.bin"]
    assert committed.startswith('"') and committed.endswith('"')

    # the listing's value is a working condition: a read pinned to it, a delete only if unchanged
    assert b"".join([c async for c in container.read("e/one.bin", etag=listed["e/one.bin"])]) == b"x" * 5000
    assert await container.read_exact("e/one.bin", 0, 10, etag=listed["e/one.bin"]) == b"x" * 10
    with pytest.raises(BlobChangedError):
        await container.read_exact("e/one.bin", 0, 10, etag=listed["e/two.bin"])
    assert await container.delete("e/one.bin", etag=listed["e/two.bin"]) is False
    assert await container.delete("e/one.bin", etag=listed["e/one.bin"]) is True


async def test_an_ingest_blobs_listing_matches_what_ingest_recorded(make_stack: StackFactory,
                                                                     azurite: Azurite) -> None:
    stack = await make_stack(KEEP_PLAINTEXT="true")
    name = f"{uuid.uuid4()}.txt"
    etag = await upload(azurite, stack.settings.ingest_container, name, b"kept")
    await stack.files.encrypt_ingest_blob(name)
    record = await stack.files.encrypted_file(name.removesuffix(".txt"))
    listed = {b.name: b.etag for b in (await stack.ingest.page())[0]}
    assert record.source_etag == listed[name] == normal_etag(etag)
    report = await stack.maintenance.reconcile()  # a kept, encrypted upload is not "stranded": never ingested again
    assert "stranded" not in report.repairs and report.oldest_plaintext_seconds is not None


async def _sdk_etag(azurite: Azurite, container: str, name: str) -> object:
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        return (await service.get_blob_client(container, name).get_blob_properties()).etag
