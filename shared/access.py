"""The access boundary: each operation's role checked, and its rows written to the access log, here and nowhere else.

Every use case the functions and the CLI call passes through one ``Guard``:

- ``read``: a read (download, HEAD, metadata, lookup, list, the access log itself). The role is
  checked; the row is written before the answer leaves (fail-closed: an access that cannot be recorded
  is refused with 503 unless ``AUDIT_FAIL_OPEN``); a failure is recorded with its error's type.
- ``change``: a state change (upload, delete, rotate, replay, migrate, decrypt-file, ...). The role is
  checked; an ``intent`` row is written before anything happens (fail-closed), and an outcome row after:
  ``ok``, the error's type, or ``aborted`` (the client went away, the task was cancelled).
- ``streamed``: a body that is sent after its row was written (a download, a decrypt-file): what was
  actually sent is recorded when it is cut short (``aborted`` with the bytes sent), and, for a change,
  when it ends.

A caller without the role gets ``AccessDeniedError`` (403, naming the role), and the refusal is
itself a row (``forbidden: needs <role>``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from shared.audit.log import AuditLog
from shared.errors import AccessDeniedError, BlobsealError, ClientGoneError
from shared.identity import Caller

__all__ = ["Guard", "Receipt"]


@dataclass
class Receipt:
    """What the operation tells its row (filled in by the use case as it learns it)."""

    file_id: uuid.UUID | None = None
    span: tuple[int, int] | None = None
    bytes_sent: int | None = None
    outcome: str = "ok"
    deferred: bool = False  # a change whose outcome ``streamed`` writes, once its body was read


class Guard:
    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    async def authorize(self, operation: str, caller: Caller, role: str, file_id: uuid.UUID | None = None) -> None:
        """Refuse (and record the refusal) unless ``caller`` has ``role``."""
        if caller.may(role):
            return
        await self.audit.record(operation, caller, file_id=file_id, outcome=f"forbidden: needs {role}",
                                required=False)
        raise AccessDeniedError(f"this needs the {role} role", operation=operation, details={"role": role})

    @asynccontextmanager
    async def read(self, operation: str, caller: Caller, role: str = "read", *,
                   file_id: uuid.UUID | None = None) -> AsyncIterator[Receipt]:
        await self.authorize(operation, caller, role, file_id)
        receipt = Receipt(file_id)
        try:
            yield receipt
        except BlobsealError as exc:
            await self._outcome(operation, caller, receipt, type(exc).__name__)
            raise
        await self.audit.record(operation, caller, file_id=receipt.file_id, span=receipt.span,
                                bytes_sent=receipt.bytes_sent, outcome=receipt.outcome)

    @asynccontextmanager
    async def change(self, operation: str, caller: Caller, role: str, *,
                     file_id: uuid.UUID | None = None) -> AsyncIterator[Receipt]:
        await self.authorize(operation, caller, role, file_id)
        await self.audit.record(operation, caller, file_id=file_id, outcome="intent")
        receipt = Receipt(file_id)
        try:
            yield receipt
        except BaseException as exc:
            await asyncio.shield(self._outcome(operation, caller, receipt, _outcome_of(exc)))
            raise
        if not receipt.deferred:
            await self._outcome(operation, caller, receipt, receipt.outcome)

    async def streamed(self, body: AsyncIterator[memoryview], operation: str, caller: Caller, receipt: Receipt, *,
                       record_end: bool) -> AsyncIterator[memoryview]:
        """``body``, recording what was sent when it is cut short (and when it ends, with ``record_end``)."""
        sent = 0
        try:
            async for piece in body:
                sent += len(piece)
                yield piece
        except BaseException as exc:
            receipt.bytes_sent = sent
            await asyncio.shield(self._outcome(operation, caller, receipt, _outcome_of(exc)))
            raise
        if record_end:
            receipt.bytes_sent = sent
            await self._outcome(operation, caller, receipt, "ok")

    async def _outcome(self, operation: str, caller: Caller, receipt: Receipt, outcome: str) -> None:
        await self.audit.record(operation, caller, file_id=receipt.file_id, span=receipt.span,
                                bytes_sent=receipt.bytes_sent, outcome=outcome, required=False)


def _outcome_of(exc: BaseException) -> str:
    if isinstance(exc, GeneratorExit | asyncio.CancelledError | ClientGoneError):
        return "aborted"
    return type(exc).__name__
