"""The access log's chain and digests (pure): how each row is linked to the one before, how a digest is signed.

Each writer appends its rows to a *chain* of its own (a random id per writer and run, so concurrent
instances never wait on each other), numbered 1, 2, 3 ... Row ``n`` carries

    mac_n = HMAC-SHA256(chain key, statement("blobseal/access-log/v1", chain, n, mac_(n-1), row fields))

with ``mac_0`` thirty-two zero bytes. The chain key is a vault secret: whoever writes the database
without it cannot make a row that fits, so a row changed, inserted, moved (its number or chain is in
its MAC) or removed from the middle (the next row names the one before) breaks the chain at that row.

A *digest* (``digest_statement``) lists, for the rows added since the previous digest, each chain's
last number and MAC; it names the previous digest's SHA-256 (digests form a chain of their own) and
is signed with the signing key (ES256, ``attest``), which the writer may use to sign only. Digests
are stored where the database's writers cannot change them (a WORM container), so they pin what the
log held, against whoever holds the chain key too. ``docs/THREATS.md`` says what is and is not caught.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from shared.crypto.attest import statement

__all__ = ["DIGEST_LABEL", "GENESIS", "ROW_LABEL", "canonical_json", "digest_statement", "link", "row_fields"]

ROW_LABEL = b"blobseal/access-log/v1"
DIGEST_LABEL = b"blobseal/access-log-digest/v1"
GENESIS = bytes(32)  # the "previous MAC" of a chain's first row


def row_fields(at: datetime, operation: str, file_id: uuid.UUID | None, caller: str, client_address: str | None,
               range_start: int | None, range_end: int | None, bytes_sent: int | None, outcome: str) -> list[bytes]:
    """A row's fields as bytes, each one unambiguous (an absent value is not the empty string)."""
    def text(value: object) -> bytes:
        return b"-" if value is None else b"=" + str(value).encode()

    moment = at.astimezone(UTC).isoformat(timespec="microseconds")
    return [moment.encode(), text(operation), text(file_id), text(caller), text(client_address), text(range_start),
            text(range_end), text(bytes_sent), text(outcome)]


def link(key: bytes, chain: uuid.UUID, seq: int, previous: bytes, fields: list[bytes]) -> bytes:
    """The MAC of row ``seq`` of ``chain`` after the row whose MAC is ``previous``."""
    message = statement(ROW_LABEL, chain.bytes, seq.to_bytes(8, "big"), previous, *fields)
    return hmac.new(key, message, hashlib.sha256).digest()


def canonical_json(document: dict[str, Any]) -> bytes:
    """The one byte form of a JSON document that is signed and hashed (sorted keys, no spaces, UTF-8)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest_statement(body: dict[str, Any]) -> bytes:
    """What a digest's signature covers: its whole body (everything but the signature itself)."""
    return statement(DIGEST_LABEL, canonical_json(body))
