"""Who runs an operator command, as the access log names them.

An operator command reaches the database and the vault with the operator's own credentials, so its
rights are whatever those are (every role here: the access log records *who*, the database and the
vault decide *what*). Where the deployment is Azure's (the Key Vault, or Entra sign-in to
PostgreSQL), the operator has signed in (``az login``, a managed identity, ...): the name is that
principal, read from the token ``DefaultAzureCredential`` hands out: ``cli:entra:<upn or app id>
(<object id>)``. Locally nobody signed in, and the name says so:
``cli:unauthenticated:<OS user>@<host>`` (the OS user is a hint, not an identity).

The token's claims are only read for the name, never trusted for a decision: the services the
token is for check it.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import json
import logging
import socket
from typing import Any, Protocol

from shared.config import Settings
from shared.identity import ALL_ROLES, MAX_NAME, Caller

__all__ = ["operator", "principal_name"]

log = logging.getLogger(__name__)

ARM_SCOPE = "https://management.azure.com/.default"  # any scope: only the claims are read


class TokenSource(Protocol):
    def get_token(self, *scopes: str) -> Any: ...


def operator(settings: Settings, credential: TokenSource | None = None) -> Caller:
    """The caller of this command: the signed-in Azure principal when the deployment is Azure's."""
    if not _uses_azure(settings):
        return Caller(f"cli:unauthenticated:{_os_user()}@{socket.gethostname()}"[:MAX_NAME], ALL_ROLES)
    try:
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        name = principal_name(credential.get_token(ARM_SCOPE).token)
    except Exception as exc:  # no sign-in at all: the command's own Azure calls will fail with the reason
        log.warning("no Azure sign-in for the access log's name (%s)", type(exc).__name__)
        name = None
    if name is None:
        return Caller(f"cli:unauthenticated:{_os_user()}@{socket.gethostname()}"[:MAX_NAME], ALL_ROLES)
    return Caller(f"cli:entra:{name}"[:MAX_NAME], ALL_ROLES)


def principal_name(token: str) -> str | None:
    """``<upn or app id> (<object id>)`` from a JWT's claims (read for display only, not verified)."""
    try:
        payload = token.split(".")[1]
        claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return None
    who = next((str(claims[c]) for c in ("upn", "preferred_username", "unique_name", "appid", "azp")
                if claims.get(c)), None)
    oid = claims.get("oid")
    if who is None and oid is None:
        return None
    return f"{who} ({oid})" if who and oid else str(who or oid)


def _uses_azure(settings: Settings) -> bool:
    return (settings.key_vault_enabled and settings.key_vault_mode == "azure") or settings.database_auth == "entra"


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
