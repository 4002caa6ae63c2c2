"""``encrypt``, ``decrypt`` and ``inspect``: the format on local files, for recovery and tests.

Only the crypto core and the standard library are imported; ``inspect`` needs no key, so
the modules that load ``cryptography`` are imported by the commands that use a key.
"""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any, BinaryIO

from shared.cli.io import CHUNK, Progress, UsageError, atomic_output, input_size, open_input, read_key_file
from shared.crypto.format import DEFAULT_BLOCK_SIZE, MAX_HEADER_SIZE, Header, Layout
from shared.errors import FormatError, IntegrityError

__all__ = ["UsageError", "register"]


def register(commands: Any) -> None:
    encrypt = commands.add_parser("encrypt", help="encrypt a local file")
    encrypt.add_argument("--key-file", required=True, help="file holding the 32-byte key in base64")
    encrypt.add_argument("--file-id", required=True, type=_uuid, help="the file's UUID (recorded in the header)")
    encrypt.add_argument("--key-reference", default="", help="key reference to record, e.g. file-<id>/<version>")
    encrypt.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE, help="format block size in bytes")
    encrypt.add_argument("input", help="plaintext file, or - for stdin")
    encrypt.add_argument("output", help="encrypted file, or - for stdout")
    encrypt.set_defaults(handler=run_encrypt)

    decrypt = commands.add_parser("decrypt", help="decrypt a local file (or a byte range of it)")
    decrypt.add_argument("--key-file", required=True, help="file holding the 32-byte key in base64")
    decrypt.add_argument("--offset", type=int, default=0, help="first plaintext byte to output")
    decrypt.add_argument("--length", type=int, default=None, help="plaintext bytes to output (default: to the end)")
    decrypt.add_argument("--file-id", type=_uuid, default=None,
                         help="the file this must be (its authenticated header is checked; a blob of another file, "
                              "even one this key opens, is refused)")
    decrypt.add_argument("input", help="encrypted file, or - for stdin")
    decrypt.add_argument("output", help="plaintext file, or - for stdout")
    decrypt.set_defaults(handler=run_decrypt)

    inspect = commands.add_parser("inspect", help="print an encrypted file's header as JSON (no key needed)")
    inspect.add_argument("input", help="encrypted file, or - for stdin")
    inspect.set_defaults(handler=run_inspect)


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r}") from None


def run_encrypt(args: argparse.Namespace) -> int:
    from shared.crypto.stream import Encryptor

    key = read_key_file(args.key_file)
    encryptor = Encryptor(key, file_id=args.file_id, key_reference=args.key_reference, block_size=args.block_size)
    with open_input(args.input) as source, atomic_output(args.output) as sink:
        progress = Progress(input_size(source), "encrypt")
        buffer = bytearray(encryptor.buffer_size(CHUNK))
        while chunk := source.read(CHUNK):
            sink.write(memoryview(buffer)[: encryptor.update_into(chunk, buffer)])
            progress.advance(len(chunk))
        sink.write(encryptor.finalize())
        progress.close()
    return 0


def run_decrypt(args: argparse.Namespace) -> int:
    if args.offset < 0 or (args.length is not None and args.length < 1):
        raise UsageError("--offset must be >= 0 and --length >= 1")
    key = read_key_file(args.key_file)
    with open_input(args.input) as source, atomic_output(args.output) as sink:
        size = input_size(source)
        if size is not None and (args.offset or args.length is not None):
            _decrypt_range(key, source, sink, size, args.offset, args.length, args.file_id)
        else:
            _decrypt_stream(key, source, sink, size, args.offset, args.length, args.file_id)
    return 0


def _decrypt_stream(key: bytes, source: BinaryIO, sink: BinaryIO, size: int | None,
                    offset: int, length: int | None, file_id: uuid.UUID | None) -> None:
    """Decrypt everything in order; the optional range is cut from the verified output."""
    from shared.crypto.stream import Decryptor

    decryptor = Decryptor(key, expect_file_id=file_id)
    window = _Window(offset, length)
    progress = Progress(size, "decrypt")
    while chunk := source.read(CHUNK):
        sink.write(window.cut(decryptor.update(chunk)))
        progress.advance(len(chunk))
    sink.write(window.cut(decryptor.finalize()))
    progress.close()
    window.check()


def _decrypt_range(key: bytes, source: BinaryIO, sink: BinaryIO, size: int, offset: int, length: int | None,
                   file_id: uuid.UUID | None) -> None:
    """Random access: read only the blocks covering the range, plus the final block."""
    from shared.crypto.cipher import open_header
    from shared.crypto.ranges import RangeOpener, plan_range

    header = Header.parse(source.read(MAX_HEADER_SIZE))
    if file_id is not None and header.file_id != file_id:
        raise IntegrityError("file id in header does not match", operation="decrypt")
    layout = Layout(header.size, header.block_size, size)
    plaintext_size = layout.plaintext_size
    if offset >= plaintext_size:
        raise UsageError(f"--offset {offset} is beyond the end of the file ({plaintext_size} bytes)")
    plan = plan_range(layout, offset, min(length or plaintext_size, plaintext_size - offset))
    source.seek(plan.final_span[0])
    opener = RangeOpener(open_header(key, header), layout, plan, source.read(plan.final_span[1]))
    source.seek(plan.cipher_offset)
    remaining = plan.cipher_length
    while remaining:
        chunk = source.read(min(CHUNK, remaining))
        if not chunk:
            break
        remaining -= len(chunk)
        sink.write(opener.update(chunk))
    sink.write(opener.finalize())


class _Window:
    """Cuts [offset, offset+length) out of a stream of pieces."""

    def __init__(self, offset: int, length: int | None) -> None:
        self.offset, self.length, self.position = offset, length, 0

    def cut(self, piece: bytes | bytearray) -> bytes | bytearray:
        start, self.position = self.position, self.position + len(piece)
        low = max(0, self.offset - start)
        high = len(piece) if self.length is None else max(0, min(len(piece), self.offset + self.length - start))
        return piece[low:high] if (low, high) != (0, len(piece)) else piece

    def check(self) -> None:
        if self.offset and self.offset >= self.position:
            raise UsageError(f"--offset {self.offset} is beyond the end of the file ({self.position} bytes)")


def run_inspect(args: argparse.Namespace) -> int:
    with open_input(args.input) as source:
        prefix = source.read(MAX_HEADER_SIZE)
        header = Header.parse(prefix)
        size = input_size(source)
        if size is None:
            size = len(prefix) + _drain(source)
    print(json.dumps(describe_header(header, size), indent=2))
    return 0


def describe_header(header: Header, ciphertext_size: int) -> dict[str, Any]:
    """What an operator may see of an encrypted file: never key material."""
    layout = Layout(header.size, header.block_size, ciphertext_size)
    try:
        plaintext_size: int | None = layout.plaintext_size
    except FormatError:
        plaintext_size = None  # a truncated or padded file: the size does not fit the format
    return {
        "format_version": header.version,
        "algorithm": "AES-256-GCM",
        "file_id": str(header.file_id),
        "key_reference": header.key_reference or None,
        "block_size": header.block_size,
        "header_size": header.size,
        "ciphertext_size": ciphertext_size,
        "plaintext_size": plaintext_size,
        "block_count": layout.block_count if plaintext_size is not None else None,
        "authenticated": False,  # inspect reads the header without the key; decrypt verifies
    }


def _drain(source: BinaryIO) -> int:
    total = 0
    while chunk := source.read(CHUNK):
        total += len(chunk)
    return total
