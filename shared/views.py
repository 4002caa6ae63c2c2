"""What a client may see of a file: one view, for answers and for the answers kept for retries.

``FileService`` answers with it, and ``Uploader`` keeps an upload's first answer in it (an
``Idempotency-Key`` retry gets the same). Never key material.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.db.files import FileRecord

__all__ = ["file_view"]


def file_view(record: FileRecord, key_expires_at: datetime | None) -> dict[str, Any]:
    view = {
        "file_id": str(record.file_id),
        "name": record.name,
        "source_name": record.source_name,
        "size": record.size,
        "content_type": record.content_type,
        "status": record.status,
        "created_at": record.created_at.isoformat(),
        "encrypted_at": record.encrypted_at.isoformat() if record.encrypted_at else None,
        "key_reference": record.key_reference,
        "key_expires_at": key_expires_at.isoformat() if key_expires_at else None,
    }
    if record.status == "deleted":
        view.update(deleted_at=record.deleted_at.isoformat() if record.deleted_at else None,
                    deleted_by=record.deleted_by)
    return view
