"""Writes blobseal_v1_kat.json: the frozen known-answer vectors of format v1.

Run once when a format version is created; never to "fix" a failing test: a change that
alters these bytes is a new format version. ``python tests/vectors/make_blobseal_vectors.py``
"""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from shared.crypto.format import Header
from shared.crypto.stream import encrypt

KEY = bytes(range(32))
FILE_ID = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
KEY_REFERENCE = f"file-{FILE_ID}/0123456789abcdef0123456789abcdef"
SALT = bytes(range(0x40, 0x60))
CASES = [("empty", 64, 0), ("three bytes", 64, 3), ("two full blocks", 64, 128), ("partial last block", 64, 200),
         ("one byte, default block", 65536, 1), ("block plus one, default block", 65536, 65537)]


def pattern(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


def vector(name: str, block_size: int, size: int) -> dict[str, object]:
    ciphertext = encrypt(KEY, pattern(size), file_id=FILE_ID, key_reference=KEY_REFERENCE,
                         block_size=block_size, salt=SALT)
    header = Header.parse(ciphertext)
    entry: dict[str, object] = {"name": name, "block_size": block_size, "plaintext_size": size,
                                "header": ciphertext[: header.size].hex(), "commitment": header.commitment.hex(),
                                "ciphertext_size": len(ciphertext),
                                "ciphertext_sha256": hashlib.sha256(ciphertext).hexdigest()}
    if len(ciphertext) <= 1024:
        entry["ciphertext"] = ciphertext.hex()
    return entry


def main() -> None:
    document = {
        "format": "blobseal v1",
        "plaintext": "byte i of the plaintext is i % 251",
        "key": KEY.hex(),
        "file_id": str(FILE_ID),
        "key_reference": KEY_REFERENCE,
        "salt": SALT.hex(),
        "vectors": [vector(*case) for case in CASES],
    }
    target = Path(__file__).with_name("blobseal_v1_kat.json")
    target.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
