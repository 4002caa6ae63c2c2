"""The custody port: where a file key lives, and the one rule for trusting a key row.

A *custody* keeps file keys somewhere and gives them back only for rows it can prove it made.
Every custody implements ``KeyCustody``; the key service picks one by the row's ``custody`` name
and holds no branch on it. A new kind of custody (say, Managed HSM keys) is one new module.

A row is trusted only when (``docs/THREATS.md``):

- its custody is one the deployment allows (``KEY_CUSTODIES``); any other name is refused;
- its ``key_reference`` names its own file (``file-<file_id>/...``);
- its custody vouches for it: a vault secret of *this file's* name (``secret``), or a key wrapped
  under an intermediate key the signing key signed, bound to this very row (``envelope``).

Anything else raises ``KeyIntegrityError``: logged at ERROR, counted in
``blobseal_key_integrity_failures_total{reason}`` (an alert fires on it), never followed.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any, Protocol

from shared.db.file_keys import Custody, KeyRow, Placement
from shared.errors import KeyIntegrityError
from shared.metrics import KEY_INTEGRITY_FAILURES
from shared.vault.base import secret_name

__all__ = ["KeyCustody", "check_reference", "integrity_refused"]

log = logging.getLogger(__name__)


class KeyCustody(Protocol):
    """Where keys of one kind live. Messages never hold key material."""

    name: Custody

    async def place(self, file_id: uuid.UUID, key: bytes, expires_at: datetime, *, reference: str | None = None,
                    previous: Placement | None = None) -> tuple[str, Placement]:
        """Keep ``key`` for the file; its reference (``reference`` when an existing key moves in) and placement.
        Nothing is recorded yet: the caller records the row, then calls ``recorded`` in that transaction."""
        ...

    async def recorded(self, conn: Any, placement: Placement) -> None:
        """Inside the transaction that recorded ``placement``: forget what was kept for a crash in between."""
        ...

    async def read(self, row: KeyRow) -> bytes:
        """The key of a row this custody made, or ``KeyIntegrityError`` (``integrity_refused``)."""
        ...

    async def discard(self, placement: Placement) -> None:
        """Make a placed key that no row needs (any more) unusable. Idempotent."""
        ...

    async def erase(self, file_id: uuid.UUID, rows: list[KeyRow] | None) -> None:
        """Destroy whatever of the file's keys this custody keeps outside the rows (the rows go after).
        ``rows``: the file's rows still recorded, or None when none are left to tell."""
        ...

    async def repair(self, cutoff: datetime, limit: int) -> int:
        """Make unusable what a killed worker placed before ``cutoff`` and never recorded; return how many."""
        ...

    async def check(self, *, placing: bool) -> None:
        """Raise if this custody cannot serve (``placing``: new keys go here, so it must be able to make them)."""
        ...

    async def check_writable(self) -> None:
        """Raise if a new key could not be placed here now (the vault cannot take a write, the KEK is gone):
        uploads would fail while reads may still work."""
        ...


def integrity_refused(row: KeyRow, reason: str, message: str,
                      kind: type[KeyIntegrityError] = KeyIntegrityError) -> KeyIntegrityError:
    """The error for a row the service cannot prove its own, logged and counted once here."""
    KEY_INTEGRITY_FAILURES.labels(reason).inc()
    log.error("key integrity: refused key %s of file %s (%s): %s; someone wrote the database (docs/THREATS.md)",
              row.key_reference[:200], row.file_id, reason, message)
    return kind(message, operation="get_key", details={"key_reference": row.key_reference[:200], "reason": reason})


def check_reference(row: KeyRow, allowed: tuple[Custody, ...]) -> None:
    """The checks every row passes before any custody looks at it."""
    if row.custody not in allowed:
        raise integrity_refused(row, "custody_not_allowed",
                                "the key row names a custody this deployment does not allow (KEY_CUSTODIES)")
    if not row.key_reference.startswith(f"{secret_name(row.file_id)}/"):
        raise integrity_refused(row, "reference_of_another_file", "the key reference names another file")
