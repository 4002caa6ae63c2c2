"""Every negative case of ../DESIGN.md "Negative cases": refused, and no unverified plaintext released.

Each case feeds the altered file through the streaming ``Decryptor`` in small chunks and
checks (1) an error is raised and (2) whatever came out before the error is an exact prefix
of the original plaintext made of whole blocks that precede the first altered byte.
"""

from __future__ import annotations

import os
import struct
import uuid

import pytest

from shared.crypto.format import FIXED_HEADER_SIZE, Header
from shared.crypto.stream import Decryptor, encrypt
from shared.errors import EncryptionError, FormatError, IntegrityError
from tests.unit.crypto_helpers import BLOCK, Sample, released_until_failure, sample

SEALED = BLOCK + 16
SIZE = 5 * BLOCK + 20  # five full blocks and a partial final one


@pytest.fixture(scope="module")
def good() -> Sample:
    return sample(SIZE)


def assert_refused(s: Sample, altered: bytes, *, first_bad_offset: int, **kwargs: object) -> EncryptionError:
    released, error = released_until_failure(s.key, altered, **kwargs)  # type: ignore[arg-type]
    assert isinstance(error, EncryptionError), "altered file was accepted"
    assert released == s.plaintext[: len(released)], "released bytes that are not the original plaintext"
    assert len(released) % BLOCK == 0, "released part of a block"
    covered_blocks = max(0, first_bad_offset - s.header_size) // SEALED
    assert len(released) <= covered_blocks * BLOCK, "released a block at or after the altered bytes"
    return error


def blocks(s: Sample) -> list[bytes]:
    body = s.ciphertext[s.header_size :]
    return [body[i : i + SEALED] for i in range(0, len(body), SEALED)]


def join(s: Sample, parts: list[bytes]) -> bytes:
    return s.ciphertext[: s.header_size] + b"".join(parts)


# --- truncation -------------------------------------------------------------------------

@pytest.mark.parametrize("index", range(1, 7))
def test_truncated_at_every_block_boundary(good: Sample, index: int) -> None:
    cut = good.block_offset(index)
    if cut >= len(good.ciphertext):
        cut = len(good.ciphertext) - 1
    assert_refused(good, good.ciphertext[:cut], first_bad_offset=cut)


@pytest.mark.parametrize("index", range(6))
def test_truncated_mid_block(good: Sample, index: int) -> None:
    cut = good.block_offset(index) + 10
    assert_refused(good, good.ciphertext[:cut], first_bad_offset=good.block_offset(index))


@pytest.mark.parametrize("cut", [0, 1, 8, FIXED_HEADER_SIZE - 1, FIXED_HEADER_SIZE, "header"])
def test_truncated_to_nothing_or_header(good: Sample, cut: int | str) -> None:
    length = good.header_size if cut == "header" else int(cut)
    assert_refused(good, good.ciphertext[:length], first_bad_offset=0)


def test_every_cut_is_refused(good: Sample) -> None:
    for cut in range(len(good.ciphertext)):
        released, error = released_until_failure(good.key, good.ciphertext[:cut], chunk=SEALED)
        assert error is not None, f"cut at {cut} accepted"
        assert released == good.plaintext[: len(released)]


# --- bit flips --------------------------------------------------------------------------

def flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    altered = bytearray(data)
    altered[offset] ^= 1 << bit
    return bytes(altered)


def test_flip_every_header_bit(good: Sample) -> None:
    for offset in range(good.header_size):
        for bit in (0, 7):
            released, error = released_until_failure(good.key, flip(good.ciphertext, offset, bit))
            assert isinstance(error, EncryptionError), f"header byte {offset} bit {bit} accepted"
            assert released == b""


@pytest.mark.parametrize("field,offset", [("salt (nonce source)", 32), ("commitment", -1), ("file id", 16),
                                          ("block size", 14), ("key reference", FIXED_HEADER_SIZE)])
def test_flip_named_header_field(good: Sample, field: str, offset: int) -> None:
    position = good.header_size - 1 if offset == -1 else offset
    assert_refused(good, flip(good.ciphertext, position), first_bad_offset=0)


@pytest.mark.parametrize("index", range(6))
@pytest.mark.parametrize("where", ["body", "tag"])
def test_flip_each_block_body_and_tag(good: Sample, index: int, where: str) -> None:
    start, end = good.block_offset(index), min(good.block_offset(index + 1), len(good.ciphertext))
    position = start + 3 if where == "body" else end - 2
    error = assert_refused(good, flip(good.ciphertext, position), first_bad_offset=start)
    assert isinstance(error, IntegrityError)


# --- block moves ------------------------------------------------------------------------

def test_swap_two_blocks(good: Sample) -> None:
    parts = blocks(good)
    parts[1], parts[2] = parts[2], parts[1]
    assert_refused(good, join(good, parts), first_bad_offset=good.block_offset(1))


@pytest.mark.parametrize("index", range(5))
def test_delete_a_block(good: Sample, index: int) -> None:
    parts = blocks(good)
    del parts[index]
    assert_refused(good, join(good, parts), first_bad_offset=good.block_offset(index))


def test_duplicate_a_block(good: Sample) -> None:
    parts = blocks(good)
    parts.insert(2, parts[2])
    assert_refused(good, join(good, parts), first_bad_offset=good.block_offset(3))


def test_move_final_block_earlier(good: Sample) -> None:
    parts = blocks(good)
    final = parts.pop()
    parts.insert(2, final)
    assert_refused(good, join(good, parts), first_bad_offset=good.block_offset(2))


def test_final_block_alone_after_header(good: Sample) -> None:
    assert_refused(good, join(good, [blocks(good)[-1]]), first_bad_offset=good.header_size)


# --- appended data ----------------------------------------------------------------------

@pytest.mark.parametrize("extra", ["byte", "partial block", "tag-sized", "valid block", "second file"])
def test_appended_data(good: Sample, extra: str) -> None:
    parts = blocks(good)
    tail = {"byte": b"\x00", "partial block": os.urandom(30), "tag-sized": os.urandom(16),
            "valid block": parts[1], "second file": good.ciphertext}[extra]
    final_start = good.block_offset(len(parts) - 1)
    assert_refused(good, good.ciphertext + tail, first_bad_offset=final_start)


def test_full_block_file_with_extra_empty_tag(good: Sample) -> None:
    exact = sample(2 * BLOCK, key=good.key, file_id=good.file_id)
    assert_refused(exact, exact.ciphertext + os.urandom(16), first_bad_offset=exact.block_offset(1))


# --- splicing ---------------------------------------------------------------------------

def test_block_from_another_file_same_key(good: Sample) -> None:
    other = sample(SIZE, key=good.key, file_id=uuid.uuid4())
    parts = blocks(good)
    parts[2] = blocks(other)[2]
    assert_refused(good, join(good, parts), first_bad_offset=good.block_offset(2))


def test_block_from_a_reencryption_of_the_same_file(good: Sample) -> None:
    again = encrypt(good.key, good.plaintext, file_id=good.file_id,
                    key_reference=f"file-{good.file_id}/v1", block_size=BLOCK)
    parts = blocks(good)
    parts[3] = again[good.header_size :][3 * SEALED : 4 * SEALED]
    assert_refused(good, join(good, parts), first_bad_offset=good.block_offset(3))


def test_header_swapped_from_a_reencryption(good: Sample) -> None:
    again = encrypt(good.key, good.plaintext, file_id=good.file_id,
                    key_reference=f"file-{good.file_id}/v1", block_size=BLOCK)
    altered = again[: good.header_size] + good.ciphertext[good.header_size :]
    assert_refused(good, altered, first_bad_offset=good.header_size)


def test_swap_two_protected_blobs(good: Sample) -> None:
    other = sample(SIZE)
    released, error = released_until_failure(good.key, other.ciphertext, expect_file_id=good.file_id)
    assert isinstance(error, IntegrityError) and released == b""


def test_same_key_other_file_refused_by_file_id(good: Sample) -> None:
    other = sample(SIZE, key=good.key)
    released, error = released_until_failure(good.key, other.ciphertext, expect_file_id=good.file_id)
    assert isinstance(error, IntegrityError) and released == b""


def test_wrong_key(good: Sample) -> None:
    released, error = released_until_failure(os.urandom(32), good.ciphertext)
    assert isinstance(error, IntegrityError) and released == b""


# --- header values we refuse --------------------------------------------------------------

def with_field(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    altered = bytearray(data)
    struct.pack_into(fmt, altered, offset, value)
    return bytes(altered)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_downgraded_or_unknown_version(good: Sample, version: int) -> None:
    error = assert_refused(good, with_field(good.ciphertext, 8, ">B", version), first_bad_offset=0)
    assert isinstance(error, FormatError) and "version" in error.message


@pytest.mark.parametrize("algorithm", [0, 2])
def test_unknown_algorithm(good: Sample, algorithm: int) -> None:
    assert isinstance(assert_refused(good, with_field(good.ciphertext, 9, ">B", algorithm), first_bad_offset=0),
                      FormatError)


@pytest.mark.parametrize("block_size", [0, 1, 63, 16 * 1024 * 1024 + 1, 2**32 - 1])
def test_block_size_zero_or_huge(good: Sample, block_size: int) -> None:
    error = assert_refused(good, with_field(good.ciphertext, 12, ">I", block_size), first_bad_offset=0)
    assert isinstance(error, FormatError) and "block size" in error.message


def test_reserved_bits(good: Sample) -> None:
    assert isinstance(assert_refused(good, with_field(good.ciphertext, 10, ">H", 1), first_bad_offset=0), FormatError)


@pytest.mark.parametrize("prefix", [b"PK\x03\x04", b"plain text file", b"\x89BSEAL\n\r"])
def test_not_a_blobseal_file(prefix: bytes) -> None:
    error = released_until_failure(os.urandom(32), prefix + os.urandom(200))[1]
    assert isinstance(error, FormatError) and error.message == "not a blobseal file"


# --- the stream stays failed ------------------------------------------------------------

def test_stream_stays_failed(good: Sample) -> None:
    decryptor = Decryptor(good.key)
    altered = flip(good.ciphertext, good.block_offset(1) + 1)
    decryptor.update(altered[: good.block_offset(1) + 5])
    with pytest.raises(IntegrityError):
        decryptor.update(altered[good.block_offset(1) + 5 :])
    for attempt in (lambda: decryptor.update(good.ciphertext[good.block_offset(2) :]), decryptor.finalize):
        with pytest.raises(IntegrityError, match="failed earlier"):
            attempt()


def test_update_into_zeroes_output_on_failure(good: Sample) -> None:
    decryptor = Decryptor(good.key)
    out = bytearray(len(good.ciphertext))
    with pytest.raises(IntegrityError):
        decryptor.update_into(flip(good.ciphertext, good.block_offset(2) + 1), out)
    assert out == bytes(len(out))


def test_errors_say_nothing_secret(good: Sample) -> None:
    _, error = released_until_failure(good.key, flip(good.ciphertext, good.block_offset(1)))
    assert error is not None
    text = str(error) + repr(error)
    for secret in (good.key.hex(), good.plaintext[:8].hex()):
        assert secret not in text
    assert Header.parse(good.ciphertext).key_reference  # the header names the key, never holds it
