"""Key vault adapters behind one port (``KeyVault``)."""

from shared.vault.base import (
    KeyVault,
    SecretProperties,
    SecretVersion,
    format_key_reference,
    parse_key_reference,
    secret_name,
)

__all__ = [
    "KeyVault",
    "SecretProperties",
    "SecretVersion",
    "format_key_reference",
    "parse_key_reference",
    "secret_name",
]
