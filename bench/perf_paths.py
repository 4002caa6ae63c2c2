"""The paths ``bench.perf_bench`` compares, as clients in the benchmark process, and readings of the host.

- blobseal: only its HTTP API on the running local host (httpx), never its code, so the benchmark
  keeps working while the product changes underneath;
- plain: ``azure-storage-blob`` on plain blobs in the same Azurite;
- CSE v2: ``azure-storage-blob`` client-side encryption v2 (AES-256-GCM in 4 MiB regions), its
  content keys wrapped with AES key wrap under a local key-encryption-key.

Host readings come from ``/proc/<pid>``: CPU time (utime + stime) and the peak RSS, which is reset
before each measurement (``clear_refs``).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from azure.storage.blob import BlobClient
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap

from localinfra.hostprocess import DevHost

MiB = 1024 * 1024
PATTERN = os.urandom(4 * MiB)
CSE_REGION = 4 * MiB  # plaintext bytes per AES-GCM region of CSE v2 (azure-storage-blob)


def content(size: int) -> Iterator[bytes]:
    """``size`` bytes of a repeated random 4 MiB piece, generated as they are sent."""
    for offset in range(0, size, len(PATTERN)):
        yield PATTERN[: min(len(PATTERN), size - offset)]


def expected(offset: int, length: int) -> bytes:
    """What ``content`` holds at ``[offset, offset + length)``."""
    out = bytearray()
    while len(out) < length:
        start = (offset + len(out)) % len(PATTERN)
        out += PATTERN[start : start + length - len(out)]
    return bytes(out)


class LocalKek:
    """A CSE key-encryption-key held in memory: AES-256 key wrap (RFC 3394, ``A256KW``)."""

    ALGORITHM = "A256KW"

    def __init__(self) -> None:
        self._key = os.urandom(32)

    def wrap_key(self, key: bytes) -> bytes:
        return aes_key_wrap(self._key, key)

    def unwrap_key(self, key: bytes, algorithm: str) -> bytes:
        if algorithm != self.ALGORITHM:
            raise ValueError(f"unknown key wrap algorithm {algorithm}")
        return aes_key_unwrap(self._key, key)

    def get_kid(self) -> str:
        return "local:perf-bench"

    def get_key_wrap_algorithm(self) -> str:
        return self.ALGORITHM


def blob_client(connection_string: str, container: str, name: str, chunk: int) -> BlobClient:
    """A plain client that downloads in pieces of ``chunk`` bytes (the first request too)."""
    return BlobClient.from_connection_string(connection_string, container, name, max_single_get_size=chunk,
                                             max_chunk_get_size=chunk)


def cse_client(connection_string: str, container: str, name: str, kek: LocalKek) -> BlobClient:
    """A client that requires CSE v2 and downloads one encryption region per request: a piece that is not a
    multiple of the region would fetch and decrypt the regions it cuts twice."""
    return BlobClient.from_connection_string(connection_string, container, name, max_single_get_size=CSE_REGION,
                                             max_chunk_get_size=CSE_REGION, require_encryption=True,
                                             key_encryption_key=kek, encryption_version="2.0")


class CountingSink(io.RawIOBase):
    """A seekable sink that keeps nothing and counts what is written (parallel downloads seek)."""

    def __init__(self) -> None:
        super().__init__()
        self.count, self.position = 0, 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.position = offset if whence == io.SEEK_SET else self.position + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        self.count += size
        self.position += size
        return size


class Blobseal:
    """The HTTP API of the local host, synchronous (httpx, one kept-alive connection)."""

    def __init__(self, host: DevHost) -> None:
        self.url = host.url
        self.client = httpx.Client(headers=host.headers, timeout=600)

    def close(self) -> None:
        self.client.close()

    def upload(self, name: str, size: int) -> str:
        """``POST /api/files``; the new file's id."""
        response = self.client.post(f"{self.url}/files", content=content(size), headers={"X-File-Name": name})
        assert response.status_code == 201, response.text
        return str(response.json()["file_id"])

    def get_range(self, file_id: str, offset: int, length: int) -> bytes:
        response = self.client.get(f"{self.url}/files/{file_id}",
                                   headers={"Range": f"bytes={offset}-{offset + length - 1}"})
        assert response.status_code == 206, response.text
        return response.content

    def download(self, file_id: str) -> int:
        """The whole file, streamed; the bytes received."""
        with self.client.stream("GET", f"{self.url}/files/{file_id}") as response:
            assert response.status_code == 200
            return sum(len(piece) for piece in response.iter_bytes())

    def wait_all_encrypted(self, prefix: str, count: int, timeout: float = 600) -> None:
        """Poll ``GET /api/files?prefix=&status=encrypted`` (one listing, every 0.2 s) until ``count`` are."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.client.get(f"{self.url}/files", params={"prefix": prefix, "status": "encrypted",
                                                                 "limit": "1000"})
            assert found.status_code == 200, found.text
            if len(found.json()["files"]) >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"files {prefix}* not all encrypted within {timeout:.0f} s")
            time.sleep(0.2)

    def wait_encrypted(self, names: list[str], timeout: float = 600) -> list[str]:
        """Poll ``GET /api/files?name=`` for each name in turn until it is encrypted; their file ids."""
        deadline, ids = time.monotonic() + timeout, []
        for name in names:
            while True:
                found = self.client.get(f"{self.url}/files", params={"name": name})
                if found.status_code == 200 and found.json()["status"] == "encrypted":
                    ids.append(str(found.json()["file_id"]))
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not encrypted within {timeout:.0f} s")
                time.sleep(0.1)
        return ids


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss(pid: int) -> None:
    """Set the peak RSS (``VmHWM``) of ``pid`` back to its current RSS (Linux ``clear_refs``, value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
