"""How the database connection verifies the server it talks to (TLS), from ``DATABASE_URL``.

Azure Database for PostgreSQL is reached with ``sslmode=verify-full``: the server's certificate must
chain to a root the platform trusts and name the host, so a bearer token (the Entra password) or a
password never goes to a server that is not the database. libpq reads ``sslrootcert=system`` as "the
system's CA store"; asyncpg does not know that word and, without ``sslrootcert``, looks only for
``~/.postgresql/root.crt``. So this module gives asyncpg a context over the system store itself.
"""

from __future__ import annotations

import ssl
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["server_verification"]


def server_verification(url: str) -> tuple[str, ssl.SSLContext | None]:
    """The URL for asyncpg and, where it verifies the server against the platform's trust store, the TLS context.

    ``sslmode=verify-full`` (or ``verify-ca``) with no ``sslrootcert``, or ``sslrootcert=system`` (libpq's
    word for it), checks the server's certificate against the system's CA store (in Azure: the platform's,
    which holds the roots Azure Database for PostgreSQL chains to), the host name too with verify-full.
    asyncpg alone would look for ``~/.postgresql/root.crt`` instead. A file in ``sslrootcert`` is asyncpg's.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    params = dict(query)
    mode, root = params.get("sslmode", ""), params.get("sslrootcert", "")
    if mode not in ("verify-ca", "verify-full") or root not in ("", "system"):
        return url, None
    context = ssl.create_default_context()
    context.check_hostname = mode == "verify-full"
    kept = [(k, v) for k, v in query if k not in ("sslmode", "sslrootcert")]
    return urlunsplit(parts._replace(query=urlencode(kept))), context
