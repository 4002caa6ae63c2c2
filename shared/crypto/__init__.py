"""The blobseal v1 encrypted format: pure, no I/O, no Azure, no database (see docs/FORMAT.md).

Import from the module that owns a name; this package exports nothing itself, so that what
needs only the header (``inspect``) never loads ``cryptography``:

- ``format``: the header, its limits and the size arithmetic (standard library only);
- ``cipher``: key derivation, key commitment, sealing and opening single blocks;
- ``engine``: the block loop and the failure rule shared by every stream;
- ``stream``: ``Encryptor`` and ``Decryptor`` (push style), one-shot ``encrypt``/``decrypt``;
- ``ranges``: which blocks cover a byte range, and ``RangeOpener``.
"""
