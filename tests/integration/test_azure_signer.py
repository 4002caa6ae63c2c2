"""The signing key on Azure Key Vault: the real azure-keyvault-keys SDK against the loopback Key Vault stand-in.

What it must show: signatures made in the vault verify here with the public half alone (no vault call
per verification), a version's public half is fetched once, another key's signature or another
message is refused, a missing key is ``SigningKeyMissingError``, and the key signs only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.keys.aio import KeyClient
from azure.keyvault.keys.crypto.aio import CryptographyClient
from cryptography.hazmat.primitives.asymmetric import ec

from shared.crypto.attest import es256_sign
from shared.errors import SignatureError
from shared.vault.azure_signer import AzureSigner
from shared.vault.signer import Signature, SigningKeyMissingError, verify
from tests.support import FakeCredential, KeyVaultServer
from tests.support.keyvault_server import FAST_RETRY, key_adapters, transport_for


@pytest.fixture
def server(keyvault_server: KeyVaultServer) -> KeyVaultServer:
    return keyvault_server


@pytest.fixture
async def signer(server: KeyVaultServer) -> AsyncIterator[AzureSigner]:
    kek, adapter = await key_adapters(server)
    yield adapter
    await adapter.close()
    await kek.close()


def adapter(server: KeyVaultServer, name: str) -> AzureSigner:
    return AzureSigner(server.url, FakeCredential(), name, retry=FAST_RETRY, transport=transport_for(server))


def calls(server: KeyVaultServer, start: int) -> list[tuple[str, str]]:
    return [(r.method, r.path.rsplit("/", 1)[-1] if r.method == "POST" else "get") for r in server.requests[start:]
            if r.status == 200]


async def test_a_signature_from_the_vault_verifies_here_with_the_public_half(
        signer: AzureSigner, server: KeyVaultServer) -> None:
    start = len(server.requests)
    signature = await signer.sign(b"statement")
    assert signature.key_reference.startswith("blobseal-signing/") and len(signature.value) == 64
    await verify(signer, b"statement", signature)
    await verify(signer, b"statement", signature)
    assert calls(server, start) == [("POST", "sign")]  # the key known from create(): verifying costs no call
    with pytest.raises(SignatureError):
        await verify(signer, b"another statement", signature)


async def test_a_version_unknown_here_is_fetched_once(signer: AzureSigner, server: KeyVaultServer) -> None:
    signature = await signer.sign(b"statement")
    fresh = adapter(server, signer.name)  # another instance: it never saw the key
    start = len(server.requests)
    for _ in range(3):
        await verify(fresh, b"statement", signature)
    assert calls(server, start) == [("GET", "get")]
    await fresh.close()


async def test_signatures_by_any_other_key_are_refused(signer: AzureSigner) -> None:
    genuine = await signer.sign(b"statement")
    attacker = ec.generate_private_key(ec.SECP256R1())
    forged = Signature(genuine.key_reference, es256_sign(attacker, b"statement"))  # claims the service's version
    with pytest.raises(SignatureError):
        await verify(signer, b"statement", forged)
    with pytest.raises(SignatureError, match="not the service's"):
        await verify(signer, b"statement", Signature("attacker-key/1", es256_sign(attacker, b"statement")))
    with pytest.raises(SignatureError):
        await verify(signer, b"statement", Signature(genuine.key_reference, bytes(64)))


async def test_a_missing_signing_key_is_named_and_the_key_signs_only(server: KeyVaultServer) -> None:
    kek, signer = await key_adapters(server, signing="blobseal-signing")
    absent = adapter(server, "no-such-key")
    with pytest.raises(SigningKeyMissingError):
        await absent.sign(b"statement")
    version = (await signer.current()).split("/")[1]
    async with KeyClient(server.url, FakeCredential(), **transport_for(server).client_kwargs()) as keys:
        key = await keys.get_key("blobseal-signing", version)
        assert key.key_operations == ["sign", "verify"]
        async with CryptographyClient(key, FakeCredential(), **transport_for(server).client_kwargs()) as crypto:
            with pytest.raises(HttpResponseError) as refused:  # the vault refuses to wrap with a sign-only key
                await crypto.wrap_key("RSA-OAEP-256", bytes(32))
    assert refused.value.status_code == 403
    for closing in (absent, signer, kek):
        await closing.close()
