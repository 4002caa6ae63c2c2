"""Range header parsing: the three forms, clamping, 400 and 416 cases."""

from __future__ import annotations

import pytest

from shared.errors import InvalidRequestError, RangeNotSatisfiableError
from shared.http_range import ByteRange, parse_range


@pytest.mark.parametrize("header,size,expected", [
    (None, 10, None),
    ("bytes=0-0", 10, ByteRange(0, 1)),
    ("bytes=2-5", 10, ByteRange(2, 4)),
    ("bytes=2-", 10, ByteRange(2, 8)),
    ("bytes=2-999", 10, ByteRange(2, 8)),
    ("bytes=-3", 10, ByteRange(7, 3)),
    ("bytes=-30", 10, ByteRange(0, 10)),
    (" bytes=9-9 ", 10, ByteRange(9, 1)),
])
def test_valid_ranges(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=", "bytes=-", "bytes=a-b", "items=0-1", "bytes=0-1,3-4", "bytes=5-2",
                                   "0-1", "bytes=1-2-3", "bytes=" + "9" * 20 + "-"])
def test_malformed_ranges(header: str) -> None:
    with pytest.raises(InvalidRequestError):
        parse_range(header, 10)


@pytest.mark.parametrize("header,size", [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10), ("bytes=0-", 0),
                                         ("bytes=-5", 0)])
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiableError) as caught:
        parse_range(header, size)
    assert caught.value.details == {"size": size}


def test_content_range() -> None:
    assert ByteRange(2, 4).content_range(10) == "bytes 2-5/10"
