"""Test doubles that stand in for services that cannot run on this machine.

Only what has no local emulator lives here: a loopback HTTPS server speaking the Key Vault
secrets and keys REST APIs (driven by the real SDKs; the keys API wraps and unwraps with real RSA
keys) and the throwaway TLS material and credential it needs.
"""

from tests.support.keyvault_server import (
    FakeCredential,
    KeyVaultServer,
    RequestRecord,
    TlsMaterial,
    make_tls_material,
)

__all__ = ["FakeCredential", "KeyVaultServer", "RequestRecord", "TlsMaterial", "make_tls_material"]
