"""Round trips of the blobseal v1 format: fixed edge sizes, any chunking, property-based sizes."""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.crypto.format import DEFAULT_BLOCK_SIZE, Header, Layout
from shared.crypto.stream import Decryptor, Encryptor, decrypt, encrypt
from shared.errors import EncryptionError, FormatError

KEY = os.urandom(32)
FILE_ID = uuid.uuid4()


def feed(obj: Encryptor | Decryptor, data: bytes, chunk: int) -> bytes:
    out = bytearray()
    for start in range(0, len(data), chunk):
        out += obj.update(data[start : start + chunk])
    return bytes(out + obj.finalize())


@pytest.mark.parametrize("block", [64, 4096, DEFAULT_BLOCK_SIZE])
@pytest.mark.parametrize("delta", ["zero", "one", "block-1", "block", "block+1", "several"])
def test_round_trip_at_edges(block: int, delta: str) -> None:
    size = {"zero": 0, "one": 1, "block-1": block - 1, "block": block, "block+1": block + 1,
            "several": 5 * block + 17}[delta]
    plaintext = os.urandom(size)
    ciphertext = encrypt(KEY, plaintext, file_id=FILE_ID, block_size=block)
    assert decrypt(KEY, ciphertext) == plaintext
    header = Header.parse(ciphertext)
    assert Layout(header.size, block, len(ciphertext)).plaintext_size == size
    assert len(ciphertext) == Layout.for_plaintext(header.size, block, size).ciphertext_size


@pytest.mark.parametrize("chunk", [1, 7, 64, 80, 81, 1000])
def test_any_chunking_gives_the_same_bytes(chunk: int) -> None:
    plaintext = os.urandom(1000)
    salt = os.urandom(32)
    whole = encrypt(KEY, plaintext, file_id=FILE_ID, block_size=64, salt=salt)
    assert feed(Encryptor(KEY, file_id=FILE_ID, block_size=64, salt=salt), plaintext, chunk) == whole
    assert feed(Decryptor(KEY), whole, chunk) == plaintext


def test_update_into_reuses_one_buffer() -> None:
    plaintext = os.urandom(10_000)
    encryptor = Encryptor(KEY, file_id=FILE_ID, block_size=256)
    buffer = bytearray(encryptor.buffer_size(3000))
    sealed = bytearray()
    for start in range(0, len(plaintext), 3000):
        piece = plaintext[start : start + 3000]
        assert encryptor.update_size(len(piece)) <= len(buffer)
        sealed += buffer[: encryptor.update_into(piece, buffer)]
    sealed += encryptor.finalize()
    decryptor = Decryptor(KEY)
    out = bytearray(4000)
    recovered = bytearray()
    for start in range(0, len(sealed), 3000):
        recovered += out[: decryptor.update_into(sealed[start : start + 3000], out)]
    assert bytes(recovered + decryptor.finalize()) == plaintext


def test_each_encryption_is_fresh() -> None:
    first = encrypt(KEY, b"same", file_id=FILE_ID, block_size=64)
    second = encrypt(KEY, b"same", file_id=FILE_ID, block_size=64)
    assert first != second
    assert Header.parse(first).salt != Header.parse(second).salt


def test_header_records_what_the_reader_needs() -> None:
    ciphertext = encrypt(KEY, b"x" * 100, file_id=FILE_ID, key_reference="file-abc/123", block_size=128)
    header = Header.parse(ciphertext)
    recorded = (header.version, header.block_size, header.file_id, header.key_reference)
    assert recorded == (1, 128, FILE_ID, "file-abc/123")


def test_streams_refuse_use_after_finalize() -> None:
    encryptor = Encryptor(KEY, file_id=FILE_ID)
    encryptor.finalize()
    with pytest.raises(EncryptionError):
        encryptor.update(b"more")
    with pytest.raises(EncryptionError):
        encryptor.finalize()


def test_encryptor_stays_failed_after_a_failure() -> None:
    encryptor = Encryptor(KEY, file_id=FILE_ID, block_size=64)
    out = bytearray(10)  # too small for the header: the call fails part way
    with pytest.raises(ValueError):
        encryptor.update_into(os.urandom(200), out)
    assert out == bytes(10)  # what it wrote is zeroed
    for attempt in (lambda: encryptor.update(b"more"), encryptor.finalize):
        with pytest.raises(EncryptionError, match="failed earlier"):
            attempt()


@pytest.mark.parametrize("block", [0, 1, 63, 16 * 1024 * 1024 + 1, 2**32 - 1])
def test_encryptor_refuses_block_sizes_out_of_bounds(block: int) -> None:
    with pytest.raises(FormatError):
        Encryptor(KEY, file_id=FILE_ID, block_size=block)


def test_encryptor_refuses_a_wrong_size_key() -> None:
    with pytest.raises(EncryptionError):
        Encryptor(b"short", file_id=FILE_ID)


@settings(max_examples=150, deadline=None)
@given(
    plaintext=st.binary(max_size=3000),
    block=st.integers(min_value=64, max_value=700),
    chunk=st.integers(min_value=1, max_value=900),
)
def test_round_trip_property(plaintext: bytes, block: int, chunk: int) -> None:
    encryptor = Encryptor(KEY, file_id=FILE_ID, block_size=block)
    ciphertext = feed(encryptor, plaintext, chunk)
    header = Header.parse(ciphertext)
    assert Layout(header.size, block, len(ciphertext)).plaintext_size == len(plaintext)
    assert feed(Decryptor(KEY, expect_file_id=FILE_ID), ciphertext, chunk) == plaintext
