"""Who is calling, and what they may do: identity only from what the platform validated, roles per caller.

Roles (``ROLES``): ``read`` (download, HEAD, metadata, lookup, list), ``write`` (upload), ``erase``
(DELETE), ``audit`` (read the access log), ``operate`` (health details, metrics; the CLI's rotate,
replay, reconcile, migrate run with the operator's own rights).

Where a caller's identity and roles come from (``docs/THREATS.md``), in this order:

1. **App Service Authentication** (Easy Auth), only when the platform says it is on
   (``WEBSITE_AUTH_ENABLED``, set by the platform, never by the templates): the ``X-MS-CLIENT-PRINCIPAL``
   header, base64 JSON of the token's claims, which Microsoft documents callers cannot set while it is
   on. The name comes from its claims, the roles from its ``roles`` claims (Entra app roles
   ``blobseal.read`` ... ``blobseal.operate``). With Easy Auth off, every ``X-MS-CLIENT-PRINCIPAL*``
   header is the caller's own words and is ignored.
2. **A function key**, only where keys are on (``FUNCTION_KEYS_ENABLED``: the functions' auth level is
   then ``function``, so the host checked the key before the app sees it). Python never learns the
   key's name from the host, so the key is named by its fingerprint (``FUNCTION_KEY_NAMES``, locally
   ``LOCAL_FUNCTION_KEYS``) and its roles come from ``FUNCTION_KEY_ROLES``; the local development key
   (``LOCAL_FUNCTION_KEY``) has every role unless that setting names it.
3. Anyone else is ``anonymous``, with no role.

The client's address is the ``X-Forwarded-For`` value the Functions host sets for the worker (it
replaces what the caller sent; the local host does the same), else the socket's peer.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.config import ROLES, Settings, key_fingerprint

__all__ = ["ALL_ROLES", "ROLES", "SYSTEM", "Caller", "IdentityPolicy"]

log = logging.getLogger(__name__)

ALL_ROLES = frozenset(ROLES)
ENTRA_ROLE_PREFIX = "blobseal."
_ROLE_CLAIMS = {"roles", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"}
_OID_CLAIMS = ("http://schemas.microsoft.com/identity/claims/objectidentifier", "oid")
_NAME_CLAIMS = ("preferred_username", "upn", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn", "name",
                "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name")
MAX_NAME = 200


@dataclass(frozen=True)
class Caller:
    """A caller as the access log names it, with its roles and address."""

    name: str
    roles: frozenset[str] = field(default_factory=frozenset)
    address: str | None = None

    def may(self, role: str) -> bool:
        return role in self.roles


SYSTEM = Caller("system", ALL_ROLES)  # what the app does by itself (timers, the reconciler)


@dataclass(frozen=True)
class IdentityPolicy:
    """How this deployment tells callers apart (from the settings, once)."""

    platform_auth: bool
    keys_enabled: bool
    key_names: Mapping[str, str]  # fingerprint -> name
    key_roles: Mapping[str, frozenset[str]]  # name -> roles

    @classmethod
    def from_settings(cls, settings: Settings) -> IdentityPolicy:
        roles = dict(settings.key_roles)
        if settings.local_function_key and "default" not in roles:
            roles["default"] = ALL_ROLES  # the local development key: every role unless the setting says otherwise
        return cls(settings.platform_auth_enabled, settings.function_keys_enabled, settings.key_names, roles)

    def caller(self, headers: Mapping[str, str], query: Mapping[str, str], peer: str | None) -> Caller:
        """The caller of a request (``headers`` case-insensitive, as Starlette's)."""
        address = _address(headers, peer)
        principal = headers.get("x-ms-client-principal") if self.platform_auth else None
        if principal:
            return _entra(principal, headers.get("x-ms-client-principal-id"), address)
        key = (headers.get("x-functions-key") or query.get("code")) if self.keys_enabled else None
        if key:
            name = self.key_names.get(key_fingerprint(key), key_fingerprint(key))
            return Caller(f"key:{name}"[:MAX_NAME], self.key_roles.get(name, frozenset()), address)
        return Caller("anonymous", frozenset(), address)


def _address(headers: Mapping[str, str], peer: str | None) -> str | None:
    """The host's ``X-Forwarded-For`` (one address; the rightmost if a chain got through), else the peer."""
    forwarded = [part.strip() for part in headers.get("x-forwarded-for", "").split(",") if part.strip()]
    return forwarded[-1] if forwarded else peer


def _entra(encoded: str, principal_id: str | None, address: str | None) -> Caller:
    claims = _claims(encoded)
    if claims is None:
        log.warning("an X-MS-CLIENT-PRINCIPAL header did not decode: the caller is treated as anonymous")
        return Caller("anonymous", frozenset(), address)
    oid = _first(claims, _OID_CLAIMS) or principal_id or ""
    name = _first(claims, _NAME_CLAIMS) or oid or "unknown"
    roles = {value.removeprefix(ENTRA_ROLE_PREFIX) for typ, value in claims if typ in _ROLE_CLAIMS
             and value.startswith(ENTRA_ROLE_PREFIX)}
    return Caller(f"entra:{name}"[:MAX_NAME], frozenset(roles) & ALL_ROLES, address)


def _claims(encoded: str) -> list[tuple[str, str]] | None:
    """``(type, value)`` of each claim of the principal header, or None when it is not what the platform sends."""
    try:
        document: Any = json.loads(base64.b64decode(encoded, validate=True))
        claims = [(str(c["typ"]), str(c["val"])) for c in document["claims"]]
        role_type = document.get("role_typ")
    except (binascii.Error, ValueError, KeyError, TypeError):
        return None
    return claims + [("roles", value) for typ, value in claims if role_type and typ == role_type]


def _first(claims: list[tuple[str, str]], types: tuple[str, ...]) -> str | None:
    for wanted in types:
        for typ, value in claims:
            if typ == wanted and value:
                return value
    return None
