"""HTTP ``Range`` headers (RFC 9110 section 14), one byte range: ``bytes=a-b``, ``a-``, ``-n``.

Malformed headers, other units and multiple ranges are refused (400); a well-formed range
outside the file is unsatisfiable (416). Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.errors import InvalidRequestError, RangeNotSatisfiableError

__all__ = ["ByteRange", "parse_range"]

_SPEC = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


@dataclass(frozen=True)
class ByteRange:
    start: int
    length: int

    @property
    def end(self) -> int:
        """The last byte (inclusive), as ``Content-Range`` writes it."""
        return self.start + self.length - 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The requested range within a ``size``-byte file, or None for the whole file."""
    if header is None:
        return None
    match = _SPEC.fullmatch(header.strip().replace(" ", ""))
    if match is None or match.group(1) == match.group(2) == "":
        raise InvalidRequestError("malformed Range header (one range: bytes=a-b, a- or -n)",
                                  operation="parse_range")
    first, last = match.group(1), match.group(2)
    if first == "":
        return _suffix(int(last), size)
    start = int(first)
    end = size - 1 if last == "" else int(last)
    if last != "" and end < start:
        raise InvalidRequestError("malformed Range header (last byte before first)", operation="parse_range")
    if start >= size:
        raise _unsatisfiable(size)
    return ByteRange(start, min(end, size - 1) - start + 1)


def _suffix(count: int, size: int) -> ByteRange:
    if count == 0 or size == 0:
        raise _unsatisfiable(size)
    count = min(count, size)
    return ByteRange(size - count, count)


def _unsatisfiable(size: int) -> RangeNotSatisfiableError:
    return RangeNotSatisfiableError("range not satisfiable", operation="parse_range", details={"size": size})
