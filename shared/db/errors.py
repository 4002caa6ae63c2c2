"""Translation of asyncpg and socket errors into ``DatabaseError`` and its subclass.

Owned here so that the pool, the migrator and the repositories report database trouble the
same way: ``DatabaseUnavailableError`` when the server did not answer or the connection was
lost (transient; retry later), plain ``DatabaseError`` for everything else the server
refused. Messages name the database by its redacted URL and never contain the password.

``details["stage"]`` tells a caller how far the failed attempt got: ``connect`` (no
statement was sent, so nothing can have been written), ``query`` (a statement failed before
the commit was sent: the transaction did not commit) or ``commit`` (the outcome is unknown).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import asyncpg

from shared.config import redact_url
from shared.errors import DatabaseError, DatabaseUnavailableError

__all__ = ["DATABASE_ERRORS", "Attempt", "Stage", "database_errors", "translate_error"]

Stage = Literal["connect", "query", "commit"]

# Everything a database call can raise that is not already one of ours.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    # The pool's bookkeeping tripping over a connection cut under it (seen during cuts): transient.
    asyncpg.exceptions.InternalClientError,
    asyncpg.PostgresConnectionError,  # class 08, incl. "connection was closed mid-operation"
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, cannot connect now
    asyncpg.TooManyConnectionsError,
)
_MAX_REASON = 300


@dataclass
class Attempt:
    """How far one database attempt got (mutable on purpose: the guarded code advances it)."""

    stage: Stage = "connect"
    connection_lost: bool = False

    @contextmanager
    def on(self, conn: Any) -> Iterator[None]:
        """Note, while ``conn`` is still ours, whether a failure inside the block lost it."""
        try:
            yield
        except BaseException:
            self.connection_lost = _is_closed(conn)
            raise


def translate_error(exc: BaseException, *, operation: str, url: str, attempt: Attempt) -> DatabaseError:
    """The ``DatabaseError`` to raise (``from exc``) for a database failure."""
    # A certificate that does not verify is not a server that went away: waiting will not help.
    unavailable = not isinstance(exc, ssl.SSLCertVerificationError) and (
        attempt.connection_lost or isinstance(exc, _UNAVAILABLE))
    kind = DatabaseUnavailableError if unavailable else DatabaseError
    what = "database unavailable" if unavailable else "database error"
    target = redact_url(url)
    return kind(
        f"{what} at {target}: {_reason(exc, url)}",
        operation=operation,
        details={
            "database": target,
            "error": type(exc).__name__,
            "sqlstate": getattr(exc, "sqlstate", None),
            "stage": attempt.stage,
        },
    )


@contextmanager
def database_errors(operation: str, url: str, attempt: Attempt | None = None) -> Iterator[Attempt]:
    """Translate database exceptions raised inside the block (ours pass through untouched)."""
    attempt = attempt or Attempt()
    try:
        yield attempt
    except DATABASE_ERRORS as exc:
        raise translate_error(exc, operation=operation, url=url, attempt=attempt) from exc


def _is_closed(conn: Any) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True  # a pooled connection is detached from its user only when it closes


def _reason(exc: BaseException, url: str) -> str:
    text = str(exc).strip() or "no detail"
    for secret in _secrets_of(url):
        text = text.replace(secret, "***")
    if isinstance(exc, TimeoutError):
        text = "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        text = f"the server's TLS certificate was not verified ({exc.verify_message})"
    return f"{type(exc).__name__}: {text[:_MAX_REASON]}"


def _secrets_of(url: str) -> list[str]:
    """The password of the URL, in its user part or its query (never echoed in a message)."""
    try:
        parts = urlsplit(url)
        found = [parts.password or ""] + [v for k, v in parse_qsl(parts.query) if k.lower().endswith("password")]
    except ValueError:
        return []
    return [secret for secret in found if secret]
