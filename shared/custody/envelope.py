"""Envelope custody: each file key wrapped in its own row by an intermediate key (docs/SCALE.md).

The file key (random, 256-bit, one per file and version as in secret custody) is wrapped locally
with AES-256-GCM under an intermediate key, the row bound in as associated data
(``shared.crypto.keywrap``: file id, intermediate id, key reference): copied to another row, it
does not open. The intermediate key is trusted only with the signing key's signature over its row
(``shared.custody.intermediates``), so a row under an intermediate key the service did not make is
refused before anything is unwrapped. Vault calls then grow with instances x periods, not files.

A key moved in from secret custody keeps naming the secret it came from (``vault_reference``):
deleting the file deletes that secret too. Nothing is kept outside the rows, so deleting the rows
destroys the keys (crypto-shredding).
"""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime
from typing import Any

from shared.crypto.keywrap import unwrap_file_key, wrap_file_key
from shared.custody.base import integrity_refused
from shared.custody.intermediates import IntermediateKeys
from shared.db.file_keys import Custody, KeyRow, Placement
from shared.errors import WrappedKeyError
from shared.vault.base import secret_name

__all__ = ["EnvelopeCustody"]


class EnvelopeCustody:
    """File keys wrapped by intermediate keys, stored in ``file_keys``."""

    name: Custody = "envelope"

    def __init__(self, intermediates: IntermediateKeys) -> None:
        self.intermediates = intermediates

    async def place(self, file_id: uuid.UUID, key: bytes, expires_at: datetime, *, reference: str | None = None,
                    previous: Placement | None = None) -> tuple[str, Placement]:
        reference = reference or f"{secret_name(file_id)}/env-{secrets.token_hex(12)}"
        intermediate_id, intermediate = await self.intermediates.for_new_key()
        wrapped = wrap_file_key(intermediate, key, file_id=file_id, intermediate_id=intermediate_id,
                                key_reference=reference)
        vault_reference = previous.vault_reference if previous is not None else None
        return reference, Placement("envelope", vault_reference=vault_reference, wrapped_key=wrapped,
                                    intermediate_id=intermediate_id)

    async def recorded(self, conn: Any, placement: Placement) -> None:
        """Nothing was kept outside the row."""

    async def read(self, row: KeyRow) -> bytes:
        if row.wrapped_key is None or row.intermediate_id is None:
            raise integrity_refused(row, "envelope_incomplete", "the key row holds no wrapped key")
        intermediate = await self.intermediates.key(row.intermediate_id)
        try:
            return unwrap_file_key(intermediate, row.wrapped_key, file_id=row.file_id,
                                   intermediate_id=row.intermediate_id, key_reference=row.key_reference)
        except WrappedKeyError as exc:
            raise integrity_refused(row, "wrapped_key_moved", exc.message, WrappedKeyError) from None

    async def discard(self, placement: Placement) -> None:
        """A wrapped key no row holds opens nothing: there is nothing to disable."""

    async def erase(self, file_id: uuid.UUID, rows: list[KeyRow] | None) -> None:
        """The keys are in the rows: deleting them (the caller's next step) destroys the keys."""

    async def repair(self, cutoff: datetime, limit: int) -> int:
        """A killed worker leaves at most an intermediate key row that wraps nothing: harmless."""
        return 0

    async def check(self, *, placing: bool) -> None:
        await self.intermediates.check(placing=placing)

    async def check_writable(self) -> None:
        """New keys need the KEK and the signing key (nothing is written to the vault)."""
        await self.intermediates.check(placing=True)
