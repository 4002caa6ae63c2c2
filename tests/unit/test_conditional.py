"""RFC 9110 preconditions and ranges of a download (``shared.http_api.plan``, ``if_match``): which version a
client gets, and when it gets 304 or 412 instead."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from starlette.datastructures import Headers

from shared.db.files import FileRecord
from shared.download import Span
from shared.errors import NotModified, PreconditionFailedError
from shared.http_api import etag, if_match, plan

NOW = datetime(2026, 12, 6, tzinfo=UTC)


def record(source_etag: str = '"0x1"') -> FileRecord:
    return FileRecord(file_id=uuid.UUID(int=7), source_name="a.txt", source_etag=source_etag, name="a.txt",
                      content_type="text/plain", status="encrypted", size=100, key_reference="file-x/1",
                      created_at=NOW, encrypted_at=NOW, protected_blob="x/1.bseal", updated_at=NOW)


V1, V2 = record('"0x1"'), record('"0x2"')  # two versions of one file (a re-upload under its UUID name)


def headers(**fields: str) -> Headers:
    return Headers({k.replace("_", "-"): v for k, v in fields.items()})


def test_each_version_has_its_own_strong_etag_and_rotation_keeps_it() -> None:
    rotated = record('"0x1"')
    rotated = FileRecord(**{**rotated.__dict__, "key_reference": "file-x/2"})
    assert etag(V1) != etag(V2) and etag(rotated) == etag(V1)
    assert etag(V1).startswith('"') and not etag(V1).startswith('W/')


def test_a_stale_if_range_gets_the_whole_new_version() -> None:
    assert plan(headers(range="bytes=50-", if_range=etag(V1)), V1) == Span(50, 50)  # same version: resume
    assert plan(headers(range="bytes=50-", if_range=etag(V1)), V2) is None  # changed: 200, all of it
    assert plan(headers(range="bytes=50-", if_range=f"W/{etag(V2)}"), V2) is None  # weak: never for If-Range
    assert plan(headers(range="bytes=50-", if_range="Sun, 06 Dec 2026 10:00:00 GMT"), V2) is None  # a date


def test_if_none_match_is_304_for_the_current_version_only() -> None:
    for value in (etag(V2), f'"other", {etag(V2)}', f"W/{etag(V2)}", "*"):
        with pytest.raises(NotModified) as caught:
            plan(headers(if_none_match=value), V2)
        assert caught.value.details["etag"] == etag(V2)
    assert plan(headers(if_none_match=etag(V1)), V2) is None
    assert plan(headers(if_none_match=etag(V1), range="bytes=0-9"), V2) == Span(0, 10)


def test_if_match_refuses_any_other_version() -> None:
    for value in (etag(V1), f"W/{etag(V2)}", '"nonsense"'):
        with pytest.raises(PreconditionFailedError):
            if_match(value, V2)
        with pytest.raises(PreconditionFailedError):
            plan(headers(if_match=value), V2)
    for value in (etag(V2), f'"x", {etag(V2)}', "*"):
        if_match(value, V2)
    if_match(None, V2)


def test_if_match_is_checked_before_if_none_match() -> None:
    with pytest.raises(PreconditionFailedError):
        plan(headers(if_match=etag(V1), if_none_match=etag(V2)), V2)


def test_modification_dates_are_ignored_without_last_modified() -> None:
    """No Last-Modified is served (the ETag is the validator), so If-Modified-Since and If-Unmodified-Since are
    ignored, as RFC 9110 13.1.3 and 13.1.4 say for a resource without a modification date."""
    assert plan(headers(if_modified_since="Sun, 06 Dec 2099 10:00:00 GMT"), V2) is None
    assert plan(headers(if_unmodified_since="Sun, 06 Dec 1999 10:00:00 GMT"), V2) is None
