"""Benchmark of the blobseal v1 format against bare AES-GCM, and its memory bound.

Run ``make bench`` (or ``.venv/bin/python -m bench.format_bench``). Writes a markdown table
to stdout and to ``bench/results/format.md``:

1. Throughput: the format's ``Encryptor.update_into`` / ``Decryptor.update_into`` fed in
   transfer chunks (5 MiB) against a reference loop of bare ``AESGCM.encrypt_into`` /
   ``decrypt_into`` over the same blocks, same AAD, one reused output buffer, in the same
   run. Rounds alternate reference and format; the best round of each is kept (the least
   disturbed by other load), and the ratio is format / reference.
2. Range cost: bytes fetched for 1 MiB ranges at random offsets, per block size.
3. Peak memory: the CLI encrypting then decrypting a 16 MiB and a 1 GiB file, each in a fresh
   process (peak RSS: ``VmHWM`` of ``/proc/self/status``).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench import table
from shared.crypto.format import Layout
from shared.crypto.ranges import plan_range
from shared.crypto.stream import Decryptor, Encryptor

MiB = 1024 * 1024
CHUNK = 5 * MiB
RESULTS = Path(__file__).with_name("results") / "format.md"


def best_of(rounds: int, *runs: Callable[[], float]) -> list[float]:
    """Alternate the runs ``rounds`` times; the best (shortest) time of each."""
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        for i, run in enumerate(runs):
            best[i] = min(best[i], run())
    return best


def throughput_row(block: int, total: int, rounds: int) -> list[str]:
    key = os.urandom(32)
    plaintext = memoryview(os.urandom(total))
    aad = Encryptor(key, file_id=uuid.uuid4(), block_size=block).header.encode()
    bare = _Bare(key, block, aad, plaintext)
    sealed = memoryview(bytes(_encrypt_all(key, plaintext, block)))

    def format_encrypt() -> float:
        return _timed_feed(Encryptor(key, file_id=uuid.uuid4(), block_size=block), plaintext)

    def format_decrypt() -> float:
        return _timed_feed(Decryptor(key), sealed)

    ref_e, fmt_e, ref_d, fmt_d = best_of(rounds, bare.encrypt, format_encrypt, bare.decrypt, format_decrypt)
    gbps = [total / t / 1e9 for t in (ref_e, fmt_e, ref_d, fmt_d)]
    return [f"{block // 1024} KiB", *(f"{v:.2f}" for v in gbps), f"{ref_e / fmt_e:.2f}x", f"{ref_d / fmt_d:.2f}x"]


class _Bare:
    """The reference: bare AESGCM over the same blocks of the same data, nonce = block index,
    writing into one reused transfer-chunk-sized buffer (as the format's callers do)."""

    def __init__(self, key: bytes, block: int, aad: bytes, plaintext: memoryview) -> None:
        self.aead, self.block, self.aad, self.plaintext = AESGCM(key), block, aad, plaintext
        self.count, self.per_chunk = len(plaintext) // block, CHUNK // block
        sealed = bytearray()
        for i in range(self.count):
            sealed += self.aead.encrypt(i.to_bytes(12, "big"), plaintext[i * block : (i + 1) * block], aad)
        self.sealed = memoryview(sealed)

    def encrypt(self) -> float:
        return self._loop(self.aead.encrypt_into, self.plaintext, self.block, self.block + 16)

    def decrypt(self) -> float:
        return self._loop(self.aead.decrypt_into, self.sealed, self.block + 16, self.block)

    def _loop(self, step: Callable[..., int], source: memoryview,
              size_in: int, size_out: int) -> float:
        aad, per_chunk = self.aad, self.per_chunk
        out = memoryview(bytearray(per_chunk * size_out))
        start = time.perf_counter()
        for i in range(self.count):
            j = i % per_chunk
            target = out[j * size_out : (j + 1) * size_out]
            step(i.to_bytes(12, "big"), source[i * size_in : (i + 1) * size_in], aad, target)
        return time.perf_counter() - start


def _encrypt_all(key: bytes, plaintext: memoryview, block: int) -> bytearray:
    encryptor = Encryptor(key, file_id=uuid.uuid4(), block_size=block)
    return encryptor.update(plaintext) + encryptor.finalize()


def _timed_feed(stream: Encryptor | Decryptor, data: memoryview) -> float:
    out = bytearray(CHUNK + CHUNK // 4)
    start = time.perf_counter()
    for offset in range(0, len(data), CHUNK):
        stream.update_into(data[offset : offset + CHUNK], out)
    stream.finalize()
    return time.perf_counter() - start


def range_row(block: int, samples: int = 2000) -> list[str]:
    size = 1024 * MiB
    layout = Layout.for_plaintext(171, block, size)
    rng = random.Random(7)
    fetched = []
    for _ in range(samples):
        offset = rng.randrange(0, size - MiB)
        plan = plan_range(layout, offset, MiB)
        fetched.append(plan.cipher_length + plan.final_span[1])
    mean, worst = sum(fetched) / len(fetched) / MiB, max(fetched) / MiB
    return [f"{block // 1024} KiB", f"{mean:.3f} MiB", f"{worst:.3f} MiB"]


# VmHWM (peak RSS) from /proc, not ru_maxrss: after fork+exec ru_maxrss keeps the parent's peak.
_MEMORY_PROBE = """
import sys
from shared.cli.main import main
code = main(sys.argv[1:])
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(int(peak.split()[1]), file=sys.stderr)
sys.exit(code)
"""


def peak_rss_kib(args: list[str], cwd: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=True)
    return int(done.stderr.strip().splitlines()[-1])


def memory_rows(sizes_mib: list[int], scratch: Path) -> list[list[str]]:
    import base64

    (scratch / "key").write_text(base64.b64encode(os.urandom(32)).decode())
    rows = []
    for size in sizes_mib:
        _write_random_file(scratch / "plain", size * MiB)
        file_id = str(uuid.uuid4())
        enc = peak_rss_kib(["encrypt", "--key-file", "key", "--file-id", file_id, "plain", "sealed"], scratch)
        dec = peak_rss_kib(["decrypt", "--key-file", "key", "sealed", "out"], scratch)
        rows.append([f"{size} MiB", f"{enc / 1024:.1f} MiB", f"{dec / 1024:.1f} MiB"])
        for name in ("plain", "sealed", "out"):
            (scratch / name).unlink()
    return rows


def _write_random_file(path: Path, size: int) -> None:
    piece = os.urandom(8 * MiB)
    with path.open("wb") as handle:
        for offset in range(0, size, len(piece)):
            handle.write(piece[: min(len(piece), size - offset)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-mib", type=int, default=256, help="bytes per throughput round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memory-sizes", default="16,1024", help="MiB sizes for the peak-memory runs")
    args = parser.parse_args()
    blocks = [16 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024]
    sections = [
        "## Throughput (GB/s; ratio = format / bare AES-GCM over the same blocks)\n\n" + table(
            ["block", "bare enc", "format enc", "bare dec", "format dec", "enc ratio", "dec ratio"],
            [throughput_row(b, args.total_mib * MiB, args.rounds) for b in blocks]),
        "## Bytes fetched for a 1 MiB HTTP range (random offsets, final-block check included)\n\n" + table(
            ["block", "mean", "worst"], [range_row(b) for b in blocks]),
    ]
    with tempfile.TemporaryDirectory(prefix="blobseal-bench-") as scratch:
        sizes = [int(s) for s in args.memory_sizes.split(",") if s]
        sections.append("## Peak RSS of the CLI (64 KiB blocks, 1 MiB reads)\n\n" + table(
            ["input", "encrypt", "decrypt"], memory_rows(sizes, Path(scratch))))
    report = f"# Format benchmark ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores)\n\n" + "\n\n".join(sections)
    print(report)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(report + "\n")


if __name__ == "__main__":
    main()
