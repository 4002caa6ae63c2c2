"""Frozen known-answer vectors, an independent decoder written from docs/FORMAT.md, and Wycheproof."""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.crypto.cipher import aead_open_into, aead_seal_into
from shared.crypto.stream import decrypt, encrypt
from shared.errors import IntegrityError

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
KAT = json.loads((VECTORS / "blobseal_v1_kat.json").read_text())
WYCHEPROOF = json.loads((VECTORS / "wycheproof_aes_gcm_test.json").read_text())


def pattern(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


def frozen_ciphertext(vector: dict[str, Any]) -> bytes:
    if "ciphertext" in vector:
        return bytes.fromhex(vector["ciphertext"])
    ciphertext = encrypt(bytes.fromhex(KAT["key"]), pattern(vector["plaintext_size"]),
                         file_id=uuid.UUID(KAT["file_id"]), key_reference=KAT["key_reference"],
                         block_size=vector["block_size"], salt=bytes.fromhex(KAT["salt"]))
    assert hashlib.sha256(ciphertext).hexdigest() == vector["ciphertext_sha256"]
    return ciphertext


@pytest.mark.parametrize("vector", KAT["vectors"], ids=lambda v: v["name"])
def test_encryption_matches_frozen_vector(vector: dict[str, Any]) -> None:
    ciphertext = encrypt(bytes.fromhex(KAT["key"]), pattern(vector["plaintext_size"]),
                         file_id=uuid.UUID(KAT["file_id"]), key_reference=KAT["key_reference"],
                         block_size=vector["block_size"], salt=bytes.fromhex(KAT["salt"]))
    assert len(ciphertext) == vector["ciphertext_size"]
    assert ciphertext[: len(vector["header"]) // 2].hex() == vector["header"]
    assert hashlib.sha256(ciphertext).hexdigest() == vector["ciphertext_sha256"]


@pytest.mark.parametrize("vector", KAT["vectors"], ids=lambda v: v["name"])
def test_frozen_vector_decrypts(vector: dict[str, Any]) -> None:
    ciphertext = frozen_ciphertext(vector)
    assert decrypt(bytes.fromhex(KAT["key"]), ciphertext) == pattern(vector["plaintext_size"])


def reference_decrypt(key: bytes, data: bytes) -> bytes:
    """A decoder written only from docs/FORMAT.md, sharing no code with shared.crypto."""
    assert data[:8] == b"\x89BSEAL\r\n" and data[8] == 1 and data[9] == 1 and data[10:12] == b"\0\0"
    (block_size,) = struct.unpack(">I", data[12:16])
    salt, ref_len = data[32:64], data[64]
    prefix = data[: 65 + ref_len]
    header = data[: 65 + ref_len + 32]
    okm = HKDF(hashes.SHA256(), 71, salt, b"blobseal v1" + prefix).derive(key)
    assert okm[39:71] == header[-32:], "commitment"
    aead, nonce_prefix = AESGCM(okm[:32]), okm[32:39]
    body = data[len(header) :]
    sealed = block_size + 16
    count = max(1, -(-len(body) // sealed))
    out = b""
    for i in range(count):
        nonce = nonce_prefix + i.to_bytes(4, "big") + bytes([i == count - 1])
        out += aead.decrypt(nonce, body[i * sealed : (i + 1) * sealed], header)
    return out


@pytest.mark.parametrize("vector", KAT["vectors"], ids=lambda v: v["name"])
def test_independent_decoder_reads_frozen_vector(vector: dict[str, Any]) -> None:
    assert reference_decrypt(bytes.fromhex(KAT["key"]), frozen_ciphertext(vector)) == pattern(vector["plaintext_size"])


def wycheproof_cases() -> list[tuple[int, dict[str, Any]]]:
    return [(group["keySize"], test) for group in WYCHEPROOF["testGroups"] if group["ivSize"] == 96
            for test in group["tests"]]


def case_id(value: object) -> str:
    return str(value["tcId"]) if isinstance(value, dict) else str(value)


@pytest.mark.parametrize("key_size,case", wycheproof_cases(), ids=case_id)
def test_aead_wrapper_against_wycheproof(key_size: int, case: dict[str, Any]) -> None:
    key, nonce, aad = (bytes.fromhex(case[name]) for name in ("key", "iv", "aad"))
    msg, ct, tag = (bytes.fromhex(case[name]) for name in ("msg", "ct", "tag"))
    aead = AESGCM(key)
    opened = bytearray(len(ct))
    if case["result"] == "invalid":
        with pytest.raises(IntegrityError):
            aead_open_into(aead, nonce, ct + tag, aad, opened)
        return
    sealed = bytearray(len(msg) + 16)
    aead_seal_into(aead, nonce, msg, aad, sealed)
    assert bytes(sealed) == ct + tag
    aead_open_into(aead, nonce, ct + tag, aad, opened)
    assert bytes(opened) == msg


def test_wycheproof_coverage() -> None:
    cases = wycheproof_cases()
    assert len(cases) > 100
    assert {size for size, _ in cases} == {128, 192, 256}
    assert any(case["result"] == "invalid" for _, case in cases)
    with pytest.raises(InvalidTag):  # the raw primitive, to show the wrapper translates it
        AESGCM(bytes(32)).decrypt(bytes(12), bytes(16), b"")
