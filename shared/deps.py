"""The adapters the service layer works with, passed around as one value."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from shared.blobs import BlobStore
from shared.config import Settings
from shared.db.pool import Database
from shared.keys import FileKeyService
from shared.vault.base import KeyVault

__all__ = ["Deps", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Deps:
    settings: Settings
    db: Database
    keys: FileKeyService
    blobs: BlobStore
    vault: KeyVault
    clock: Callable[[], datetime] = field(default=utcnow)
