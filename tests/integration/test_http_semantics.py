"""HTTP that clients can trust, on the real stack: conditional requests across a new version of a file, and the
one name rule at every way a name enters (POST header, ingest blob name, lookup, listing prefix)."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest

from localinfra.azurite import Azurite
from shared import http_api
from shared.bootstrap import Services
from shared.errors import InvalidNameError
from tests.integration.service_fixtures import TEST_FUNCTION_KEY, upload
from tests.support.http import call
from tests.support.stack import OPERATOR, StackFactory

pytestmark = [pytest.mark.postgres, pytest.mark.azurite]

KEY = {"x-functions-key": TEST_FUNCTION_KEY}


@pytest.fixture
async def stack(make_stack: StackFactory) -> Services:
    return await make_stack()


async def new_version(stack: Services, azurite: Azurite, name: str, data: bytes) -> str:
    """A file dropped under a UUID name: the same name again is a new version of the same file."""
    await upload(azurite, stack.settings.ingest_container, name, data)
    outcome = await stack.files.encrypt_ingest_blob(name)
    return str(outcome.file_id)


async def get(stack: Services, file_id: str, method: str = "GET", **headers: str) -> tuple[int, bytes, dict[str, str]]:
    answer = await call(stack, http_api.download, method, f"/api/files/{file_id}", path_params={"file_id": file_id},
                        headers={**KEY, **{k.replace("_", "-"): v for k, v in headers.items()}})
    return answer.status, answer.body, answer.headers


async def test_a_resume_across_a_new_version_never_splices(stack: Services, azurite: Azurite) -> None:
    name = f"{uuid.uuid4()}.bin"
    first, second = b"A" * 200_000, b"B" * 150_000 + b"C" * 100_000
    file_id = await new_version(stack, azurite, name, first)
    status, part, headers = await get(stack, file_id, range="bytes=0-99999")
    assert status == 206 and part == first[:100_000]
    old_etag = headers["etag"]
    await new_version(stack, azurite, name, second)
    status, rest, headers = await get(stack, file_id, range="bytes=100000-", if_range=old_etag)
    assert status == 200 and rest == second and headers["etag"] != old_etag  # the whole new version
    status, rest, _ = await get(stack, file_id, range="bytes=100000-", if_range=headers["etag"])
    assert status == 206 and rest == second[100_000:]  # the current version resumes


async def test_if_none_match_gets_304_and_is_logged(stack: Services, azurite: Azurite) -> None:
    file_id = await new_version(stack, azurite, f"{uuid.uuid4()}.txt", b"current")
    _, _, headers = await get(stack, file_id)
    for method in ("GET", "HEAD"):
        status, body, answered = await get(stack, file_id, method, if_none_match=headers["etag"])
        assert status == 304 and body == b"" and answered["etag"] == headers["etag"]
        assert "content-length" not in answered or answered["content-length"] == "0"
    status, body, _ = await get(stack, file_id, if_none_match='"some-other-version"')
    assert status == 200 and body == b"current"
    rows = await stack.files.access_log(OPERATOR, file_id=file_id)
    assert [r.outcome for r in rows if r.operation in ("download", "head")] == ["ok", "NotModified", "NotModified",
                                                                                 "ok"]


async def test_a_delete_with_a_stale_if_match_is_412_and_the_file_stays(stack: Services, azurite: Azurite) -> None:
    name = f"{uuid.uuid4()}.txt"
    file_id = await new_version(stack, azurite, name, b"v1")
    _, _, headers = await get(stack, file_id)
    await new_version(stack, azurite, name, b"v2")
    refused = await call(stack, http_api.delete, "DELETE", "/", headers={**KEY, "if-match": headers["etag"]},
                         path_params={"file_id": file_id})
    assert refused.status == 412 and refused.json()["error"] == "PreconditionFailedError"
    assert (await get(stack, file_id))[1] == b"v2"
    _, _, current = await get(stack, file_id)
    deleted = await call(stack, http_api.delete, "DELETE", "/", headers={**KEY, "if-match": current["etag"]},
                         path_params={"file_id": file_id})
    assert deleted.status == 200 and deleted.json()["status"] == "deleted"
    again = await call(stack, http_api.delete, "DELETE", "/", headers=KEY, path_params={"file_id": file_id})
    assert again.status == 200 and again.json()["status"] == "deleted"  # DELETE is idempotent


async def test_an_unknown_range_unit_gets_the_whole_file(stack: Services, azurite: Azurite) -> None:
    file_id = await new_version(stack, azurite, f"{uuid.uuid4()}.txt", b"0123456789")
    status, body, headers = await get(stack, file_id, range="items=0-5")
    assert status == 200 and body == b"0123456789" and headers["accept-ranges"] == "bytes"


BAD_NAMES = ["a\x00b", "esc\x1b[2J.pdf", "evil\u202etxt.exe", "x" * 1025, "line\nbreak.txt", "ends-with-dot."]


@pytest.mark.parametrize("name", BAD_NAMES, ids=["nul", "escape", "bidi", "too-long", "newline", "dot"])
async def test_a_name_outside_the_rule_is_refused_at_every_entry(stack: Services, azurite: Azurite,
                                                                 name: str) -> None:
    posted = await call(stack, http_api.upload, "POST", "/api/files",
                        headers={**KEY, "x-file-name": quote(name, safe="")}, body=[b"data"])
    assert posted.status == 400 and posted.json()["error"] == "InvalidNameError", posted.body
    lookup = await call(stack, http_api.find_file, "GET", "/api/files", headers=KEY, query={"name": name})
    assert lookup.status == 400 and lookup.json()["error"] == "InvalidNameError"
    if not name.endswith("."):  # a prefix may end with '.'
        listing = await call(stack, http_api.find_file, "GET", "/api/files", headers=KEY, query={"prefix": name})
        assert listing.status == 400 and listing.json()["error"] == "InvalidNameError"
    if "\x00" in name or len(name) > 1024:
        return  # no blob store takes these names: nothing can arrive in ingest with one
    await upload(azurite, stack.settings.ingest_container, name, b"dropped")
    with pytest.raises(InvalidNameError):
        await stack.files.encrypt_ingest_blob(name)
    [failure] = [f for f in await stack.maintenance.failed_uploads(OPERATOR) if f.source_name == name]
    assert failure.permanent and failure.error == "InvalidNameError"  # kept in ingest, listed, never retried
