"""Signed digests of the access log, written where the database's writers cannot change them.

Every reconciler run (and every purge) writes a digest if the log grew: for each chain with rows
since the last digest, its newest row's number and MAC; the previous digest's name and SHA-256; on a
purge, what it removes. The body is signed with the signing key (``shared.crypto.chain``), and the
document goes into the digest container (``AUDIT_DIGEST_CONTAINER``), under an immutability (WORM)
policy in Azure: nobody, the account owner included, can change or delete a digest while it holds.
Names sort by time (``digests/YYYY/MM/DD/HHMMSSffffffZ-<random>.json``), so the verifier reads them
in order and checks each link.

What the last digest pinned, and its name, are also kept in ``reconciler_state`` as a hint (the
writer need not list every digest each run). The hint is the database's, so it is never trusted:
a wrong one makes a digest that does not link to its predecessor, which the verifier reports.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.blobs import Container
from shared.clock import Clock, utcnow
from shared.crypto.chain import canonical_json, digest_statement
from shared.db.access_log import AccessLogRepository, ChainHead
from shared.db.failures import FailureRepository
from shared.db.pool import Database
from shared.errors import BlobNotFoundError, DatabaseError
from shared.vault.signer import Signer

__all__ = ["DIGEST_PREFIX", "DigestStore", "Digests", "StoredDigest"]

log = logging.getLogger(__name__)

DIGEST_PREFIX = "digests/"
_HEADS_STATE, _LATEST_STATE = "audit_digest_heads", "audit_digest_latest"
# A digest looks at rows written since the previous digest, less this margin (instances' clocks differ,
# and a batch's time is taken before its commit); a chain's newest row pins every row before it.
WINDOW_MARGIN = timedelta(hours=1)


@dataclass(frozen=True)
class StoredDigest:
    name: str
    raw: bytes = field(repr=False)

    @property
    def document(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.raw)
        return loaded

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


class DigestStore:
    """The digest container: write once, list in order, read."""

    def __init__(self, container: Container) -> None:
        self.container = container

    async def put(self, name: str, raw: bytes) -> None:
        try:
            await self.container.create(name, raw, content_type="application/json")
        except BlobNotFoundError:  # the container is not there yet (locally; infra/ makes it, with its WORM policy)
            await self.container.ensure()
            await self.container.create(name, raw, content_type="application/json")

    async def get(self, name: str) -> StoredDigest:
        info = await self.container.info(name)
        return StoredDigest(name, await self.container.read_exact(name, 0, info.size))

    async def names(self) -> list[str]:
        names: list[str] = []
        marker: str | None = None
        while True:
            try:
                page, marker = await self.container.page(prefix=DIGEST_PREFIX, marker=marker, size=5000)
            except BlobNotFoundError:  # no container yet: no digest yet
                return []
            names += [blob.name for blob in page]
            if marker is None:
                return sorted(names)


def _window_start(previous: StoredDigest | None) -> datetime | None:
    if previous is None:
        return None
    try:
        return datetime.fromisoformat(str(previous.document["created_at"])) - WINDOW_MARGIN
    except (KeyError, ValueError, TypeError):
        return None


def _recent(covered: dict[uuid.UUID, int]) -> dict[uuid.UUID, int]:
    """The hint kept: at most the chains of this digest and the last thousand others (ended chains drop out)."""
    return dict(list(covered.items())[-1000:])


class Digests:
    def __init__(self, db: Database, signer: Signer, store: DigestStore, *, writer: str, clock: Clock = utcnow) -> None:
        self._db, self._signer, self.store, self._writer, self._clock = db, signer, store, writer, clock

    async def write(self, purge: dict[str, Any] | None = None) -> str | None:
        """A digest of what the log gained since the last one (None when it gained nothing and nothing is purged)."""
        covered, latest = await self._hints()
        previous = await self._previous(latest)
        since = _window_start(previous)
        async with self._db.connection("audit_digest") as conn:
            heads = await AccessLogRepository(conn).heads(covered, since)
        if not heads and purge is None:
            return None
        name = await self._put(self._body(heads, previous, purge))
        await self._remember({**_recent(covered), **{h.chain: h.last_seq for h in heads}}, name)
        log.info("access log digest %s: %d chain(s), %d row(s)%s", name, len(heads), sum(h.rows for h in heads),
                 ", with a purge" if purge else "")
        return name

    async def purge(self, before: datetime) -> tuple[str | None, int]:
        """Write a digest that says what a purge to ``before`` removes, then purge (the purge role only)."""
        async with self._db.connection("audit_purge") as conn:
            plan = await AccessLogRepository(conn).purge_plan(before)
        note = {"before": before.isoformat(), "chains": {str(c): {"through_seq": s, "mac": m.hex()}
                                                         for c, (s, m) in plan.items()}}
        name = await self.write(purge=note)
        async with self._db.connection("audit_purge") as conn:
            return name, await AccessLogRepository(conn).purge(before)

    def _body(self, heads: list[ChainHead], previous: StoredDigest | None, purge: dict[str, Any] | None) \
            -> dict[str, Any]:
        return {"version": 1, "created_at": self._clock().isoformat(), "created_by": self._writer,
                "previous": {"name": previous.name, "sha256": previous.sha256} if previous else None,
                "chains": {str(h.chain): {"through_seq": h.last_seq, "mac": h.last_mac.hex(), "rows": h.rows,
                                          "from": h.first_at.isoformat(), "to": h.last_at.isoformat()}
                           for h in heads},
                "purge": purge}

    async def _put(self, body: dict[str, Any]) -> str:
        signature = await self._signer.sign(digest_statement(body))
        document = {**body, "signature": {"key": signature.key_reference,
                                          "value": base64.b64encode(signature.value).decode("ascii")}}
        now = self._clock()
        name = f"{DIGEST_PREFIX}{now:%Y/%m/%d/%H%M%S%f}Z-{secrets.token_hex(4)}.json"
        await self.store.put(name, canonical_json(document))
        return name

    async def _previous(self, hint: str | None) -> StoredDigest | None:
        if hint:
            try:
                return await self.store.get(hint)
            except BlobNotFoundError:
                log.warning("the last digest the database names (%s) is not in the digest container", hint)
        names = await self.store.names()
        return await self.store.get(names[-1]) if names else None

    async def _hints(self) -> tuple[dict[uuid.UUID, int], str | None]:
        async with self._db.connection("audit_digest") as conn:
            state = FailureRepository(conn)
            heads, latest = await state.state(_HEADS_STATE), await state.state(_LATEST_STATE)
        try:
            covered = {uuid.UUID(chain): int(seq) for chain, seq in json.loads(heads or "{}").items()}
        except (ValueError, TypeError, AttributeError):
            covered = {}
        return covered, latest or None

    async def _remember(self, covered: dict[uuid.UUID, int], name: str) -> None:
        try:
            async with self._db.transaction("audit_digest") as conn:
                state = FailureRepository(conn)
                await state.set_state(_HEADS_STATE, json.dumps({str(c): s for c, s in covered.items()}))
                await state.set_state(_LATEST_STATE, name)
        except DatabaseError as exc:  # the digest is stored; the next one relists to find it
            log.warning("the digest %s is stored but its hint was not: %s", name, exc)
