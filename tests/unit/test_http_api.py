"""The HTTP face without a server: Range parsing (three forms, clamping, 400, 416), headers, errors."""

from __future__ import annotations

import pytest

from shared.download import Span
from shared.errors import InvalidRequestError, RangeNotSatisfiableError
from shared.http_api import content_disposition, parse_range
from shared.ingest import guess_type


@pytest.mark.parametrize("header,size,expected", [
    (None, 10, None),
    ("bytes=0-0", 10, Span(0, 1)),
    ("bytes=2-5", 10, Span(2, 4)),
    ("bytes=2-", 10, Span(2, 8)),
    ("bytes=2-999", 10, Span(2, 8)),
    ("bytes=-3", 10, Span(7, 3)),
    ("bytes=-30", 10, Span(0, 10)),
    (" bytes=9-9 ", 10, Span(9, 1)),
])
def test_valid_ranges(header: str | None, size: int, expected: Span | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=", "bytes=-", "bytes=a-b", "bytes=0-1,3-4", "bytes=5-2",
                                   "bytes=1-2-3", "bytes=" + "9" * 20 + "-", "BYTES=x-"])
def test_malformed_ranges(header: str) -> None:
    with pytest.raises(InvalidRequestError):
        parse_range(header, 10)


@pytest.mark.parametrize("header", ["items=0-5", "0-1", "pages=1-2", "", "none"])
def test_a_range_unit_other_than_bytes_is_ignored(header: str) -> None:
    """RFC 9110 14.2: "An origin server MUST ignore a Range header field that contains a range unit it does not
    understand": the whole file."""
    assert parse_range(header, 10) is None


@pytest.mark.parametrize("header,size", [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10), ("bytes=0-", 0),
                                         ("bytes=-5", 0)])
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiableError) as caught:
        parse_range(header, size)
    assert caught.value.details == {"size": size}


def test_span_end_is_inclusive() -> None:
    assert Span(2, 4).end == 5


@pytest.mark.parametrize("name,expected", [
    ("report.pdf", "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"),
    ('a "quoted" \\ name',
     "attachment; filename=\"a _quoted_ _ name\"; filename*=UTF-8''a%20%22quoted%22%20%5C%20name"),
    ("übersicht.txt", "attachment; filename=\"_bersicht.txt\"; filename*=UTF-8''%C3%BCbersicht.txt"),
    ("", "attachment; filename=\"download\"; filename*=UTF-8''"),
])
def test_content_disposition_has_an_ascii_fallback_and_the_exact_name(name: str, expected: str) -> None:
    assert content_disposition(name) == expected


@pytest.mark.parametrize("given,name,expected", [
    ("text/csv; charset=utf-8", "a.bin", "text/csv; charset=utf-8"),  # what the uploader chose wins
    (None, "report.pdf", "application/pdf"),
    ("application/octet-stream", "photo.png", "image/png"),  # the SDK default: nobody chose it
    ("application/x-www-form-urlencoded", "notes.txt", "text/plain"),  # curl --data-binary's default
    ("", "no-extension", "application/octet-stream"),
])
def test_content_type_is_guessed_from_the_name_when_nobody_chose_one(given: str | None, name: str,
                                                                      expected: str) -> None:
    assert guess_type(given, name) == expected
