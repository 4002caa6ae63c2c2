"""The ``Signer`` port on an Azure Key Vault EC key (P-256, ES256), through the async ``CryptographyClient``.

The signing key is an EC key named ``KEY_VAULT_SIGNING_KEY_NAME`` with the operations ``sign`` and
``verify``; the templates give the app's identity a role that may read it and sign with it and
nothing else (``infra/modules/rbac.bicep``): it cannot wrap, decrypt, create or delete. Key Vault
EC keys sign a digest; ES256 signatures are ``r || s`` (``shared.crypto.attest`` verifies them
with the public half alone, here, so verifying costs no vault call).

Vault calls (measured against ``tests/support/keyvault_server.py``)::

    sign()        POST /keys/{name}//sign, one per signature (rare: one per intermediate key): a
                  request without a version, which Key Vault serves with the current version and
                  names in its answer (the same request the SDK's CryptographyClient makes for a key
                  id without a version); no GET of the key first
    public_key()  GET /keys/{name}/{version} once per version and process, then from memory
    create()      POST /keys/{name}/create (operators and tests: the app never creates it in Azure)

Errors as every key adapter (``shared.vault.azure_keys``): 404 -> ``SigningKeyMissingError``.
"""

from __future__ import annotations

import base64
import binascii
from typing import ClassVar, Final

from azure.core.rest import HttpRequest
from azure.keyvault.keys import KeyCurveName, KeyOperation, KeyVaultKey
from azure.keyvault.keys.crypto import SignatureAlgorithm

from shared.config import Settings
from shared.crypto.attest import POINT_SIZE, statement_digest
from shared.errors import KeyVaultError
from shared.vault.azure import RetryOptions, build_credential
from shared.vault.azure_keys import AzureKey
from shared.vault.base import parse_key_reference
from shared.vault.signer import Signature, SigningKeyMissingError

__all__ = ["AzureSigner"]

ALGORITHM: Final = SignatureAlgorithm.es256
_KEY_OPERATIONS: Final[list[str | KeyOperation]] = [KeyOperation.sign, KeyOperation.verify]


class AzureSigner(AzureKey):
    """Sign with the EC key ``name`` of one Azure Key Vault (the ``Signer`` port)."""

    kind: ClassVar[str] = "signing key"
    missing: ClassVar[type[KeyVaultError]] = SigningKeyMissingError
    detail: ClassVar[str] = "signing_key"

    @classmethod
    def from_settings(cls, settings: Settings, *, retry: RetryOptions | None = None) -> AzureSigner:
        return cls(settings.key_vault_url, build_credential(settings), settings.key_vault_signing_key_name,
                   retry=retry, current_ttl=settings.key_ttl_seconds)

    async def sign(self, message: bytes) -> Signature:
        body = {"alg": str(ALGORITHM.value), "value": _b64url(statement_digest(message))}
        with self._call("sign", self.name):
            response = await self._client().send_request(HttpRequest("POST", f"/keys/{self.name}//sign", json=body))
            response.raise_for_status()
            answer = response.json()
        return Signature(self._reference_of(answer.get("kid")), _from_b64url(answer.get("value"), self.name))

    async def public_key(self, key_reference: str) -> bytes:
        name, version = parse_key_reference(key_reference)
        if name != self.name:
            raise KeyVaultError("not a version of the signing key", operation="verify_signature",
                                details={"signing_key": key_reference})
        with self._call("get_signing_key", key_reference):
            return _point(await self._version_key(version), key_reference)

    async def create(self) -> str:
        return await self._create("EC", list(_KEY_OPERATIONS), curve=KeyCurveName.p_256)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _from_b64url(text: object, name: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(str(text) + "=" * (-len(str(text)) % 4))
    except (binascii.Error, ValueError):
        raise KeyVaultError("the vault answered a sign request without a signature", operation="sign",
                            details={"signing_key": name}) from None


def _point(key: KeyVaultKey, reference: str) -> bytes:
    """The uncompressed point of a P-256 JWK (``x``, ``y``); anything else is refused."""
    jwk = key.key
    x, y = getattr(jwk, "x", None), getattr(jwk, "y", None)
    point = b"\x04" + bytes(x or b"") + bytes(y or b"")
    if getattr(jwk, "crv", None) != KeyCurveName.p_256 or len(point) != POINT_SIZE:
        raise KeyVaultError("the signing key is not a P-256 EC key", operation="verify_signature",
                            details={"signing_key": reference})
    return point
