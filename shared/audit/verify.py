"""``blobseal audit verify``: the access log checked against its chains and its signed digests.

In order, and the first problem found is named (the report counts the rest):

1. the digests, in name order: each one's signature by the signing key (a version of the configured
   key, its public half from the vault), and its link to the one before (name and SHA-256);
2. the rows, chain by chain in number order: each row's MAC recomputed with the chain key; a row
   changed, inserted, moved to another place or chain breaks its MAC; a number missing means rows
   were removed (unless a signed purge note says up to where the chain was purged);
3. each row a digest pins must still be there with the MAC the digest recorded (so a chain cannot be
   rewritten or cut back behind a digest even by whoever holds the chain key).

Rows newer than the last digest that pins their chain are counted as ``undigested`` (verified by
their MACs only), and rows written before chains existed (migration 9) as ``unchained``.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass, field
from typing import Any

from shared.audit.digests import DigestStore, StoredDigest
from shared.crypto.chain import GENESIS, digest_statement, link
from shared.db.access_log import AccessLogRepository, LoggedRow
from shared.db.pool import Database
from shared.errors import KeyVaultError, SignatureError
from shared.vault.signer import Signature, Signer, verify

__all__ = ["Problem", "VerifyReport", "verify_log"]

PAGE = 5000


@dataclass(frozen=True)
class Problem:
    where: str
    what: str


@dataclass
class VerifyReport:
    digests: int = 0
    rows: int = 0
    chains: int = 0
    undigested: int = 0
    unchained: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, where: str, what: str) -> None:
        self.problems.append(Problem(where, what))

    def as_dict(self) -> dict[str, Any]:
        first = self.problems[0] if self.problems else None
        return {"ok": self.ok, "digests": self.digests, "rows": self.rows, "chains": self.chains,
                "undigested": self.undigested, "unchained": self.unchained, "problems": len(self.problems),
                "first_problem": {"where": first.where, "what": first.what} if first else None}


@dataclass
class _Pins:
    """What the digests say: rows they pin (chain, number) -> (MAC, digest), and purge notes per chain."""

    rows: dict[tuple[uuid.UUID, int], tuple[bytes, str]] = field(default_factory=dict)
    purged: dict[uuid.UUID, dict[int, bytes]] = field(default_factory=dict)
    seen: set[tuple[uuid.UUID, int]] = field(default_factory=set)
    last: dict[uuid.UUID, int] = field(default_factory=dict)  # per chain, the highest number a digest pins

    def pin(self, chain: uuid.UUID, seq: int, mac: bytes, digest: str) -> None:
        self.rows[(chain, seq)] = (mac, digest)
        self.last[chain] = max(self.last.get(chain, 0), seq)


async def verify_log(db: Database, key: bytes, signer: Signer, store: DigestStore) -> VerifyReport:
    report = VerifyReport()
    pins = await _check_digests(store, signer, report)
    await _check_rows(db, key, pins, report)
    for (chain, seq), (_, digest) in sorted(pins.rows.items(), key=lambda item: item[1][1]):
        if (chain, seq) not in pins.seen:
            report.add(f"digest {digest}", f"pins row #{seq} of chain {chain}, which is gone")
    return report


async def _check_digests(store: DigestStore, signer: Signer, report: VerifyReport) -> _Pins:
    pins, previous = _Pins(), None
    for name in await store.names():
        digest = await store.get(name)
        report.digests += 1
        problem = await _digest_problem(digest, previous, signer)
        if problem:
            report.add(f"digest {name}", problem)
        else:
            _collect(digest, pins)
        previous = digest
    return pins


async def _digest_problem(digest: StoredDigest, previous: StoredDigest | None, signer: Signer) -> str | None:
    try:
        document = digest.document
        signed = document.pop("signature")
        signature = Signature(str(signed["key"]), base64.b64decode(signed["value"], validate=True))
    except (ValueError, KeyError, TypeError, binascii.Error):
        return "not a digest (unreadable, or without its signature)"
    try:
        await verify(signer, digest_statement(document), signature)
    except (SignatureError, KeyVaultError):
        return "its signature does not verify with the signing key: changed, or not the service's"
    expected = {"name": previous.name, "sha256": previous.sha256} if previous else None
    if document.get("previous") != expected:
        return "it does not link to the digest before it (one was removed, replaced or put in between)"
    return None


def _collect(digest: StoredDigest, pins: _Pins) -> None:
    document = digest.document
    for chain, entry in (document.get("chains") or {}).items():
        pins.pin(uuid.UUID(chain), int(entry["through_seq"]), bytes.fromhex(entry["mac"]), digest.name)
    for chain, entry in ((document.get("purge") or {}).get("chains") or {}).items():
        pins.purged.setdefault(uuid.UUID(chain), {})[int(entry["through_seq"])] = bytes.fromhex(entry["mac"])


async def _check_rows(db: Database, key: bytes, pins: _Pins, report: VerifyReport) -> None:
    after: tuple[uuid.UUID, int] | None = None
    chain: uuid.UUID | None = None
    expected, previous = 1, GENESIS
    while True:
        async with db.connection("audit_verify") as conn:
            rows = await AccessLogRepository(conn).chained(after, PAGE)
        for row in rows:
            if row.chain is None or row.seq is None or row.mac is None:
                report.unchained += 1
                continue
            if row.chain != chain:
                chain, report.chains = row.chain, report.chains + 1
                expected, previous = _start(pins, row)
            _check_row(key, row, expected, previous, pins, report)
            expected, previous = row.seq + 1, row.mac
            after = (row.chain, row.seq)
        if len(rows) < PAGE:
            return


def _start(pins: _Pins, first: LoggedRow) -> tuple[int, bytes]:
    """Where a chain's verification starts: its first number, or just past a signed purge note."""
    assert first.chain is not None and first.seq is not None
    purged = pins.purged.get(first.chain, {})
    if first.seq - 1 in purged:
        return first.seq, purged[first.seq - 1]
    return 1, GENESIS


def _check_row(key: bytes, row: LoggedRow, expected: int, previous: bytes, pins: _Pins, report: VerifyReport) -> None:
    assert row.chain is not None and row.seq is not None and row.mac is not None
    report.rows += 1
    where = f"row id {row.id} (chain {row.chain}, #{row.seq}, {row.at.isoformat()})"
    if row.seq != expected:
        report.add(where, f"rows #{expected} to #{row.seq - 1} of its chain are missing (removed)")
    elif link(key, row.chain, row.seq, previous, row.fields()) != bytes(row.mac):
        report.add(where, "its MAC does not match: changed, inserted or moved (or the chain key is not the one "
                   "that wrote it)")
    pinned = pins.rows.get((row.chain, row.seq))
    if pinned is not None:
        pins.seen.add((row.chain, row.seq))
        if pinned[0] != bytes(row.mac):
            report.add(where, f"digest {pinned[1]} pinned it with another MAC: the chain was rewritten")
    if row.seq > pins.last.get(row.chain, 0):
        report.undigested += 1
