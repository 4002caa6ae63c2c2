"""Microsoft Entra access tokens as PostgreSQL passwords (passwordless Azure Database for PostgreSQL).

With ``DATABASE_AUTH=entra`` the pool asks ``EntraPassword`` for a password on every new
connection: an access token for the PostgreSQL resource from the app's managed identity
(``azure-identity``), cached and renewed five minutes before it expires. A token is checked
only when a connection opens, so pooled connections live on after it expires; new ones get
a fresh one. Local mode keeps plain URLs (``DATABASE_AUTH=password``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential

__all__ = ["SCOPE", "EntraPassword", "managed_identity"]

SCOPE = "https://ossrdbms-aad.database.windows.net/.default"


class EntraPassword:
    """An async callable for asyncpg's ``password``: the current token, renewed before it expires."""

    def __init__(self, credential: AsyncTokenCredential, *, renew_before: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._credential, self._renew_before, self._clock = credential, renew_before, clock
        self._token: AccessToken | None = None

    async def __call__(self) -> str:
        if self._token is None or self._token.expires_on - self._renew_before <= self._clock():
            self._token = await self._credential.get_token(SCOPE)
        return self._token.token

    def __repr__(self) -> str:
        return "EntraPassword(<token>)"

    async def close(self) -> None:
        await self._credential.close()


def managed_identity(client_id: str) -> AsyncTokenCredential:
    """The app's managed identity: a user-assigned one by client id, else the default chain."""
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

    credential: Any = ManagedIdentityCredential(client_id=client_id) if client_id else DefaultAzureCredential()
    return credential  # type: ignore[no-any-return]
