"""Random access: ranges at every block edge, suffix ranges, fetched bytes, and refusals."""

from __future__ import annotations

import os
import uuid

import pytest

from shared.crypto.cipher import open_header
from shared.crypto.format import Header, Layout
from shared.crypto.ranges import RangeOpener, RangePlan, plan_range
from shared.crypto.stream import encrypt
from shared.errors import EncryptionError, FormatError, IntegrityError

KEY = os.urandom(32)
BLOCK = 64
PLAINTEXT = os.urandom(4 * BLOCK + 10)
CIPHERTEXT = encrypt(KEY, PLAINTEXT, file_id=uuid.uuid4(), block_size=BLOCK)
HEADER = Header.parse(CIPHERTEXT)
LAYOUT = Layout(HEADER.size, BLOCK, len(CIPHERTEXT))


def read_range(data: bytes, offset: int, length: int, *, chunk: int = 29) -> tuple[bytes, RangePlan]:
    layout = Layout(HEADER.size, BLOCK, len(data))
    plan = plan_range(layout, offset, length)
    start, size = plan.final_span
    opener = RangeOpener(open_header(KEY, HEADER), layout, plan, data[start : start + size])
    span = data[plan.cipher_offset : plan.cipher_offset + plan.cipher_length]
    out = bytearray()
    for start in range(0, len(span), chunk):
        out += opener.update(span[start : start + chunk])
    out += opener.finalize()
    return bytes(out), plan


EDGES = sorted({e + d for e in range(0, len(PLAINTEXT) + 1, BLOCK) for d in (-1, 0, 1)} | {len(PLAINTEXT)})
POINTS = [p for p in EDGES if 0 <= p <= len(PLAINTEXT)]


@pytest.mark.parametrize("start", [p for p in POINTS if p < len(PLAINTEXT)])
@pytest.mark.parametrize("end", POINTS)
def test_range_at_every_block_edge(start: int, end: int) -> None:
    if end <= start:
        return
    out, plan = read_range(CIPHERTEXT, start, end - start)
    assert out == PLAINTEXT[start:end]
    streamed = range(plan.first_block, min(plan.last_block, plan.final_block - 1) + 1)
    assert plan.cipher_length == sum(LAYOUT.block_span(i)[1] for i in streamed)  # the final block: never twice
    assert plan.final_span == LAYOUT.block_span(4)


@pytest.mark.parametrize("suffix", [1, 9, 10, 11, BLOCK, BLOCK + 10, len(PLAINTEXT)])
def test_suffix_ranges(suffix: int) -> None:
    out, plan = read_range(CIPHERTEXT, len(PLAINTEXT) - suffix, suffix)
    assert out == PLAINTEXT[-suffix:]
    assert plan.covers_final  # a suffix covers the final block, which is fetched once and verified first
    assert plan.cipher_offset + plan.cipher_length == plan.final_span[0] or plan.cipher_length == 0


def test_small_range_fetches_only_its_block_and_the_final_one() -> None:
    _, plan = read_range(CIPHERTEXT, BLOCK + 3, 5)
    assert (plan.first_block, plan.last_block, plan.cipher_length) == (1, 1, BLOCK + 16)
    assert plan.final_span == LAYOUT.block_span(4)


def test_range_verifies_final_block_of_a_truncated_file() -> None:
    truncated = CIPHERTEXT[: LAYOUT.block_span(4)[0]]  # final block removed: looks like a 4-block file
    with pytest.raises(IntegrityError):
        read_range(truncated, 0, 10)


def test_range_refuses_a_tampered_block_and_stays_failed() -> None:
    altered = bytearray(CIPHERTEXT)
    altered[LAYOUT.block_span(1)[0] + 2] ^= 1
    plan = plan_range(LAYOUT, 0, 3 * BLOCK)
    opener = RangeOpener(open_header(KEY, HEADER), LAYOUT, plan, bytes(altered[plan.final_span[0] :]))
    released = opener.update(bytes(altered[plan.cipher_offset : plan.cipher_offset + BLOCK + 16]))
    assert released == PLAINTEXT[:BLOCK]
    with pytest.raises(IntegrityError):
        opener.update(bytes(altered[LAYOUT.block_span(1)[0] : LAYOUT.block_span(2)[0]]))
    with pytest.raises(IntegrityError, match="failed earlier"):
        opener.update(CIPHERTEXT[LAYOUT.block_span(2)[0] : LAYOUT.block_span(3)[0]])


@pytest.mark.parametrize("offset,length", [(0, 5), (len(PLAINTEXT) - 5, 5), (0, len(PLAINTEXT))])
def test_range_opener_verifies_the_final_block_before_anything(offset: int, length: int) -> None:
    plan = plan_range(LAYOUT, offset, length)
    start, size = plan.final_span
    tampered = bytearray(CIPHERTEXT[start : start + size])
    tampered[-1] ^= 1
    with pytest.raises(IntegrityError):  # refused at construction: no update can run before
        RangeOpener(open_header(KEY, HEADER), LAYOUT, plan, bytes(tampered))
    with pytest.raises(IntegrityError):  # a non-final block passed as the final one
        first, first_size = LAYOUT.block_span(0)
        RangeOpener(open_header(KEY, HEADER), LAYOUT, plan, CIPHERTEXT[first : first + first_size])


def _opener(plan: RangePlan) -> RangeOpener:
    start, size = plan.final_span
    return RangeOpener(open_header(KEY, HEADER), LAYOUT, plan, CIPHERTEXT[start : start + size])


def test_short_or_long_feed_refused() -> None:
    plan = plan_range(LAYOUT, 0, len(PLAINTEXT))
    opener = _opener(plan)
    opener.update(CIPHERTEXT[plan.cipher_offset : plan.cipher_offset + plan.cipher_length - 1])
    with pytest.raises(IntegrityError):
        opener.finalize()
    oversized = _opener(plan)
    assert oversized.update(CIPHERTEXT[plan.cipher_offset :]) == PLAINTEXT[: 4 * BLOCK]  # the final block fed again
    with pytest.raises(IntegrityError, match="oversized"):
        oversized.finalize()
    with pytest.raises(IntegrityError, match="failed earlier"):
        oversized.update(b"")
    two_blocks = _opener(plan_range(LAYOUT, 0, BLOCK))
    with pytest.raises(IntegrityError, match="oversized"):  # more whole blocks than the range covers
        two_blocks.update(CIPHERTEXT[plan.cipher_offset : plan.cipher_offset + 2 * (BLOCK + 16)])


def test_empty_file_reads_as_empty() -> None:
    data = encrypt(KEY, b"", file_id=uuid.uuid4(), block_size=BLOCK)
    layout = Layout(Header.parse(data).size, BLOCK, len(data))
    plan = plan_range(layout, 0, 0)
    assert plan.cipher_length == 0 and plan.covers_final
    opener = RangeOpener(open_header(KEY, Header.parse(data)), layout, plan, data[plan.final_span[0] :])
    assert opener.finalize() == b""


@pytest.mark.parametrize("offset,length", [(-1, 5), (0, 0), (0, len(PLAINTEXT) + 1), (len(PLAINTEXT), 1)])
def test_out_of_bounds_ranges(offset: int, length: int) -> None:
    with pytest.raises(EncryptionError, match="outside"):
        plan_range(LAYOUT, offset, length)


@pytest.mark.parametrize("body", [0, 15, 80 + 1, 80 + 15, 80 + 16, 3 * 80 + 16])
def test_impossible_ciphertext_sizes(body: int) -> None:
    with pytest.raises(FormatError):
        _ = Layout(HEADER.size, BLOCK, HEADER.size + body).plaintext_size


def test_sizes_computed_from_ciphertext_size() -> None:
    for size in (0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK):
        data = encrypt(KEY, os.urandom(size), file_id=uuid.uuid4(), block_size=BLOCK)
        assert Layout(Header.parse(data).size, BLOCK, len(data)).plaintext_size == size
