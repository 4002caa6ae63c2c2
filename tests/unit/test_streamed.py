"""``Streamed``: a streamed response body that ends short is a storage failure, and closes when dropped."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shared.blobs import Streamed
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


async def test_a_whole_body_is_handed_on_as_it_comes() -> None:
    assert [p async for p in Streamed(Body(b"ab", b"cde"), "protected", "blob", 5)] == [b"ab", b"cde"]


async def test_a_body_that_ends_short_is_a_storage_failure_not_an_integrity_one() -> None:
    with pytest.raises(StorageUnavailableError, match="ended a read early"):
        _ = [p async for p in Streamed(Body(b"ab"), "protected", "blob", 5)]


async def test_closing_a_body_never_read_gives_its_connection_back() -> None:
    body = Body(b"ab")
    await Streamed(body, "protected", "blob", 2).aclose()
    assert body.response.internal_response.closed
