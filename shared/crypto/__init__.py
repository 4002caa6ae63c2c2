"""The blobseal v1 encrypted format: pure, no I/O, no Azure, no database (see docs/FORMAT.md)."""

from shared.crypto.cipher import KEY_SIZE, BlockCipher, open_header, seal_header
from shared.crypto.format import MAX_HEADER_SIZE, TAG_SIZE, Header, Layout, header_size_from_prefix
from shared.crypto.ranges import RangeOpener, RangePlan, plan_range
from shared.crypto.stream import DEFAULT_BLOCK_SIZE, Decryptor, Encryptor, decrypt, encrypt

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "KEY_SIZE",
    "MAX_HEADER_SIZE",
    "TAG_SIZE",
    "BlockCipher",
    "Decryptor",
    "Encryptor",
    "Header",
    "Layout",
    "RangeOpener",
    "RangePlan",
    "decrypt",
    "encrypt",
    "header_size_from_prefix",
    "open_header",
    "plan_range",
    "seal_header",
]
