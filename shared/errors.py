"""Error types of blobseal.

The tree::

    BlobsealError                      base: message, operation, timestamp (UTC), details
    ├── ConfigError                    settings missing, malformed or contradictory
    ├── KeyVaultError                  key storage or retrieval failed
    │   ├── SecretNotFoundError        no such secret (or version)
    │   ├── SecretDisabledError        the secret version is disabled
    │   ├── VaultUnavailableError      the vault did not answer (transient; retry later)
    │   ├── VaultMissingError          the local vault file is missing or empty (created only where no key is recorded)
    │   └── VaultUnwritableError       the vault cannot take a new key now (the local vault's disk is full or
    │                                  read-only): uploads wait, reads go on
    ├── KeyManagementError             file-key bookkeeping refused (no such key, rotation claimed)
    │   ├── FileKeyNotFoundError       no key is recorded for the file
    │   │   └── KeyRetiredError        the key was rotated out and its vault version disabled
    │   ├── KeyMissingError            a recorded key is not in the vault (an operator must restore it)
    │   ├── KeyIntegrityError          a key row the service cannot prove its own (forged, moved, unsigned,
    │   │   │                          a custody the deployment does not allow): refused, never followed
    │   │   └── WrappedKeyError        a wrapped file key that does not open for its row
    │   └── RotationConflictError      another worker holds the rotation of this file
    ├── DatabaseError                  PostgreSQL refused a statement or the schema disagrees
    │   ├── DatabaseUnavailableError   the database did not answer (transient; retry later)
    │   │   └── CommitUnknownError     a commit's answer was lost and the database cannot say yet whether it
    │   │                              happened: nothing may be cleaned up on it (the reconciler settles it)
    │   └── AuditUnavailableError      the access log cannot be written: access refused (fail-closed)
    ├── EncryptionError                encryption or decryption failed
    │   ├── FormatError                not a blobseal file, or a header we refuse
    │   ├── IntegrityError             authentication failed: tampered data or wrong key
    │   └── SignatureError             a signature that does not verify (or by a key not trusted)
    ├── StorageError                   blob storage failed
    │   ├── BlobNotFoundError          no such blob (or container)
    │   ├── BlobChangedError           the blob changed since it was read (ETag mismatch)
    │   └── StorageUnavailableError    storage did not answer (transient; retry later)
    ├── AccessDeniedError              the caller lacks the role the operation needs (403; logged)
    └── FileError                      a request about a file cannot be served
        ├── UnknownFileError           no such file id or name
        ├── FileNotReadyError          the file is not encrypted yet (or was deleted)
        ├── RangeNotSatisfiableError   a well-formed range outside the file
        ├── NotModified                If-None-Match names the current version (304)
        ├── PreconditionFailedError    If-Match names another version (412)
        ├── UploadConflictError        an upload reuses a file id held by other content or another name
        ├── UploadRaceError            an older attempt held the upload's row (transient; retried)
        ├── ClientGoneError            the client went away before the request's body arrived whole
        ├── RequestInProgressError     a request with the same Idempotency-Key is still being served (409)
        ├── IdempotencyKeyReusedError  an Idempotency-Key sent again with another request (422)
        └── InvalidRequestError        malformed id, range or header
            ├── InvalidNameError       a name that breaks the name rule (shared.names)
            └── UploadTooLargeError    an upload body over UPLOAD_MAX_MB

``transient`` marks the errors worth retrying soon (a dependency that did not answer): the
ingest retries them with backoff, for minutes. Everything else is retried later by the
reconciler, except what ``permanent`` marks: those wait for an operator (``failed``,
``replay``).

Every error carries keyword context (``operation``, ``details``) and never key material,
plaintext, SAS tokens or connection strings: callers put only identifiers and sizes in
``details``. Third-party exceptions are translated where they are caught, with
``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "AccessDeniedError",
    "AuditUnavailableError",
    "BlobChangedError",
    "BlobNotFoundError",
    "BlobsealError",
    "ClientGoneError",
    "CommitUnknownError",
    "ConfigError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "EncryptionError",
    "FileError",
    "FileKeyNotFoundError",
    "FileNotReadyError",
    "FormatError",
    "IdempotencyKeyReusedError",
    "IntegrityError",
    "InvalidNameError",
    "InvalidRequestError",
    "KeyIntegrityError",
    "KeyManagementError",
    "KeyMissingError",
    "KeyRetiredError",
    "KeyVaultError",
    "NotModified",
    "PreconditionFailedError",
    "RangeNotSatisfiableError",
    "RequestInProgressError",
    "RotationConflictError",
    "SecretDisabledError",
    "SecretNotFoundError",
    "SignatureError",
    "StorageError",
    "StorageUnavailableError",
    "UnknownFileError",
    "UploadConflictError",
    "UploadRaceError",
    "UploadTooLargeError",
    "VaultMissingError",
    "VaultUnavailableError",
    "VaultUnwritableError",
    "WrappedKeyError",
    "is_transient",
]


class BlobsealError(Exception):
    """Base of every error this project raises on purpose."""

    default_operation = "unknown"
    transient = False  # a dependency did not answer: retry soon, with backoff
    permanent = False  # retrying cannot help until someone changes something

    def __init__(
        self,
        message: str,
        *,
        operation: str | None = None,
        details: Mapping[str, Any] | None = None,
        timestamp: datetime | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.operation = operation or self.default_operation
        self.details: dict[str, Any] = dict(details or {})
        self.timestamp = timestamp or datetime.now(UTC)

    def __str__(self) -> str:
        return f"{self.operation}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, operation={self.operation!r}, "
            f"details={self.details!r}, timestamp={self.timestamp.isoformat()!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view for structured logs (``extra``; Azure Monitor keeps it as custom dimensions)."""
        return {
            "error": type(self).__name__,
            "message": self.message,
            "operation": self.operation,
            "timestamp": self.timestamp.isoformat(),
            "details": self.details,
        }


class ConfigError(BlobsealError):
    default_operation = "config"

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "invalid configuration: " + "; ".join(self.problems),
            details={"problems": self.problems},
        )


class KeyVaultError(BlobsealError):
    default_operation = "key_vault"


class SecretNotFoundError(KeyVaultError):
    pass


class SecretDisabledError(KeyVaultError):
    pass


class VaultUnavailableError(KeyVaultError):
    transient = True


class VaultMissingError(KeyVaultError):
    pass


class VaultUnwritableError(KeyVaultError):
    """The vault answers reads but cannot take a new key now (the local vault's disk full or read-only)."""


class KeyManagementError(BlobsealError):
    default_operation = "key_management"


class FileKeyNotFoundError(KeyManagementError):
    pass


class KeyRetiredError(FileKeyNotFoundError):
    pass


class KeyMissingError(KeyManagementError):
    pass


class RotationConflictError(KeyManagementError):
    pass


class KeyIntegrityError(KeyManagementError):
    """A key row the service cannot prove it made (``docs/THREATS.md``): refused, logged, counted, alerted on."""


class WrappedKeyError(KeyIntegrityError):
    """A wrapped file key that does not open for its row (moved, altered): refused, never guessed around."""


class DatabaseError(BlobsealError):
    default_operation = "database"


class DatabaseUnavailableError(DatabaseError):
    transient = True


class CommitUnknownError(DatabaseUnavailableError):
    """A commit's acknowledgement was lost and the database could not be asked whether it happened.

    Whoever gets it must not clean up what the commit may have recorded (keys, blobs): the truth is
    settled later (a retry that re-reads, the reconciler)."""


class AuditUnavailableError(DatabaseError):
    pass


class EncryptionError(BlobsealError):
    default_operation = "encryption"


class FormatError(EncryptionError):
    pass


class IntegrityError(EncryptionError):
    pass


class SignatureError(EncryptionError):
    """A signed statement whose signature does not verify, or names a key that is not the service's."""


class StorageError(BlobsealError):
    default_operation = "storage"


class BlobNotFoundError(StorageError):
    pass


class BlobChangedError(StorageError):
    pass


class StorageUnavailableError(StorageError):
    transient = True


class AccessDeniedError(BlobsealError):
    """The caller's roles do not include the one the operation needs (``details["role"]``)."""

    default_operation = "authorize"
    permanent = True


class FileError(BlobsealError):
    default_operation = "file"


class UnknownFileError(FileError):
    pass


class FileNotReadyError(FileError):
    pass


class InvalidRequestError(FileError):
    pass


class InvalidNameError(InvalidRequestError):
    """A name that breaks the one name rule (``shared.names``): never accepted, whichever way it came."""

    permanent = True


class UploadTooLargeError(InvalidRequestError):
    permanent = True


class RangeNotSatisfiableError(FileError):
    pass


class NotModified(FileError):
    """``If-None-Match`` matched the current version: 304, no body (``details["etag"]``)."""


class PreconditionFailedError(FileError):
    """``If-Match`` named another version than the current one: 412, nothing done."""


class UploadConflictError(FileError):
    permanent = True


class UploadRaceError(FileError):
    transient = True


class ClientGoneError(FileError):
    """The client closed the connection before its request body arrived whole (an upload cut short)."""


class RequestInProgressError(FileError):
    """A request with the same ``Idempotency-Key`` is still being served: retry after it ended (409)."""

    transient = True


class IdempotencyKeyReusedError(FileError):
    """An ``Idempotency-Key`` sent again with another request (another body, name or type): 422."""

    permanent = True


def is_transient(exc: BaseException) -> bool:
    """Worth retrying soon: one of ours marked transient, or a timeout that escaped an adapter."""
    return isinstance(exc, TimeoutError) or (isinstance(exc, BlobsealError) and exc.transient)
