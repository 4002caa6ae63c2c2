"""``Streamed``: a streamed response body picked up where it was cut, and closed when dropped."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shared.blobs import STREAM_RESUMES, Streamed
from shared.errors import StorageUnavailableError


class Response:
    closed = False

    def close(self) -> None:
        self.closed = True


class Body:
    """What the SDK's streamed download hands over: an async iterator holding its HTTP response."""

    def __init__(self, *pieces: bytes) -> None:
        self.response = type("Transport", (), {"internal_response": Response()})()
        self._pieces: AsyncIterator[bytes] = self._iterate(pieces)

    async def _iterate(self, pieces: tuple[bytes, ...]) -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    def __anext__(self) -> object:
        return self._pieces.__anext__()


class Storage:
    """Answers each (re)request for the rest of ``data`` with at most ``serve`` bytes of it."""

    def __init__(self, data: bytes, serve: int) -> None:
        self.data, self.serve, self.asked = data, serve, []

    async def request(self, start: int, size: int) -> Body:
        self.asked.append((start, size))
        return Body(self.data[start : start + min(size, self.serve)])


async def test_a_whole_body_is_handed_on_as_it_comes() -> None:
    storage = Storage(b"", 0)
    got = [p async for p in Streamed(storage.request, Body(b"ab", b"cde"), ("protected", "blob"), 0, 5)]
    assert got == [b"ab", b"cde"] and storage.asked == []


async def test_a_body_cut_short_is_picked_up_where_it_stopped() -> None:
    storage = Storage(b"0123456789", serve=4)
    first = await storage.request(0, 10)
    got = b"".join([p async for p in Streamed(storage.request, first, ("protected", "blob"), 0, 10)])
    assert got == b"0123456789" and storage.asked == [(0, 10), (4, 6), (8, 2)]


async def test_a_body_that_keeps_being_cut_fails_as_storage_unavailable() -> None:
    storage = Storage(b"0123456789", serve=1)
    first = await storage.request(0, 10)
    with pytest.raises(StorageUnavailableError, match="ended a read early"):
        _ = [p async for p in Streamed(storage.request, first, ("protected", "blob"), 0, 10)]
    assert len(storage.asked) == 1 + STREAM_RESUMES


async def test_closing_a_body_never_read_gives_its_connection_back() -> None:
    body = Body(b"ab")
    await Streamed(Storage(b"", 0).request, body, ("protected", "blob"), 0, 2).aclose()
    assert body.response.internal_response.closed
