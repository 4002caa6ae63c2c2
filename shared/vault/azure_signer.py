"""The ``Signer`` port on an Azure Key Vault EC key (P-256, ES256), through the async ``CryptographyClient``.

The signing key is an EC key named ``KEY_VAULT_SIGNING_KEY_NAME`` with the operations ``sign`` and
``verify``; the templates give the app's identity a role that may read it and sign with it and
nothing else (``infra/modules/rbac.bicep``): it cannot wrap, decrypt, create or delete. Key Vault
EC keys sign a digest; ES256 signatures are ``r || s`` (``shared.crypto.attest`` verifies them
with the public half alone, here, so verifying costs no vault call).

Vault calls (measured against ``tests/support/keyvault_server.py``)::

    sign()        POST /keys/{name}/{version}/sign, one per signature (rare: one per intermediate
                  key, one per access-log digest); the current version is fetched once per 5 minutes
    public_key()  GET /keys/{name}/{version} once per version and process, then from memory
    create()      POST /keys/{name}/create (operators and tests: the app never creates it in Azure)

Errors as every key adapter (``shared.vault.azure_keys``): 404 -> ``SigningKeyMissingError``.
"""

from __future__ import annotations

from typing import ClassVar, Final

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
                   retry=retry)

    async def sign(self, message: bytes) -> Signature:
        with self._call("sign", self.name):
            key = await self._current_key()
            result = await self._crypto_client(key).sign(ALGORITHM, statement_digest(message))
            return Signature(self._reference_of(result.key_id), bytes(result.signature))

    async def public_key(self, key_reference: str) -> bytes:
        name, version = parse_key_reference(key_reference)
        if name != self.name:
            raise KeyVaultError("not a version of the signing key", operation="verify_signature",
                                details={"signing_key": key_reference})
        with self._call("get_signing_key", key_reference):
            return _point(await self._version_key(version), key_reference)

    async def create(self) -> str:
        return await self._create("EC", list(_KEY_OPERATIONS), curve=KeyCurveName.p_256)


def _point(key: KeyVaultKey, reference: str) -> bytes:
    """The uncompressed point of a P-256 JWK (``x``, ``y``); anything else is refused."""
    jwk = key.key
    x, y = getattr(jwk, "x", None), getattr(jwk, "y", None)
    point = b"\x04" + bytes(x or b"") + bytes(y or b"")
    if getattr(jwk, "crv", None) != KeyCurveName.p_256 or len(point) != POINT_SIZE:
        raise KeyVaultError("the signing key is not a P-256 EC key", operation="verify_signature",
                            details={"signing_key": reference})
    return point
