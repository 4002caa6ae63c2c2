"""``Pieces``: a window of piece requests in flight, pieces out in order, nothing left running."""

from __future__ import annotations

import asyncio
import random
from typing import Any, cast

import pytest

from shared.blobs import Container, Pieces


class Reads:
    """Piece reads that finish in random order and record how many ran at once."""

    def __init__(self) -> None:
        self.running, self.most, self.cancelled, self.fail_at = 0, 0, 0, -1

    async def read(self, start: int, size: int) -> bytes:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(random.uniform(0, 0.01))
            if start == self.fail_at:
                raise OSError("storage went away")
            return bytes([start % 251]) * size
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1


def spans(count: int, piece: int = 10) -> list[tuple[int, int]]:
    return [(i * piece, piece) for i in range(count)]


async def test_pieces_come_out_in_order_with_at_most_the_window_in_flight() -> None:
    reads = Reads()
    out = [piece async for piece in Pieces(reads.read, spans(20), window=3)]
    assert out == [bytes([(i * 10) % 251]) * 10 for i in range(20)]
    assert reads.most == 3 and reads.running == 0


async def test_requests_start_before_iteration_and_close_cancels_them() -> None:
    reads = Reads()
    pieces = Pieces(reads.read, spans(10), window=3)
    await asyncio.sleep(0)
    assert reads.running == 3  # started at once, beside whatever else the caller awaits
    await pieces.aclose()
    assert reads.running == 0 and reads.cancelled == 3
    assert [piece async for piece in pieces] == []


async def test_a_failed_piece_is_raised_in_order_and_the_rest_cancelled() -> None:
    reads = Reads()
    reads.fail_at = 30
    pieces = Pieces(reads.read, spans(10), window=4)
    got = []
    with pytest.raises(OSError):
        async for piece in pieces:
            got.append(piece)
    assert len(got) == 3 and reads.running == 0


async def test_started_raises_the_first_pieces_failure() -> None:
    reads = Reads()
    reads.fail_at = 0
    pieces = Pieces(reads.read, spans(5), window=2)
    with pytest.raises(OSError):
        await pieces.started()
    assert reads.running == 0


@pytest.mark.parametrize(("offset", "length", "expected"), [
    (0, 1100, [(0, 1100)]),  # a short tail joins the piece before it: one request for a range of about a piece
    (0, 2000, [(0, 1024), (1024, 976)]),
    (0, 2600, [(0, 1024), (1024, 1024), (2048, 552)]),
    (7, 400, [(7, 400)]),
    (0, 0, []),
])
async def test_a_containers_pieces_cover_the_span_exactly(offset: int, length: int,
                                                          expected: list[tuple[int, int]]) -> None:
    asked: list[tuple[int, int]] = []

    async def read_exact(name: str, start: int, size: int, *, etag: str | None = None) -> bytes:
        asked.append((start, size))
        return b"x" * size

    container = Container(cast(Any, None), "protected", piece=1024)
    container.read_exact = read_exact  # type: ignore[method-assign,assignment]
    got = b"".join([piece async for piece in container.pieces("blob", offset, length, etag='"e"')])
    assert sorted(asked) == expected and len(got) == length
