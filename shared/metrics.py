"""Prometheus metrics of blobseal (one registry per process).

Labels are small fixed vocabularies (operation names, backends, outcomes): never a file id,
a blob name, a key or anything a user chose. ``timed`` records latency and outcome of one
operation. Azure Monitor export (fleet-wide view) is wired by ``shared.telemetry``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = [
    "BYTES_PROCESSED",
    "ERRORS",
    "FILE_SIZE",
    "KEY_CACHE",
    "KEY_OPERATIONS",
    "KEY_OPERATION_SECONDS",
    "OPERATIONS",
    "OPERATION_SECONDS",
    "REGISTRY",
    "ROTATIONS",
    "timed",
]

REGISTRY = CollectorRegistry(auto_describe=True)

KEY_OPERATIONS = Counter(
    "blobseal_key_operations_total", "Key vault operations.", ["operation", "backend", "outcome"], registry=REGISTRY
)
KEY_OPERATION_SECONDS = Histogram(
    "blobseal_key_operation_seconds", "Key vault operation latency.", ["operation", "backend"], registry=REGISTRY
)
KEY_CACHE = Counter(
    "blobseal_key_cache_total", "Key cache lookups by outcome (hit|miss).", ["outcome"], registry=REGISTRY
)
ROTATIONS = Counter("blobseal_key_rotations_total", "Key rotations by outcome.", ["outcome"], registry=REGISTRY)
OPERATIONS = Counter(
    "blobseal_operations_total", "Encrypt/decrypt/rotate operations.", ["operation", "outcome"], registry=REGISTRY
)
OPERATION_SECONDS = Histogram(
    "blobseal_operation_seconds",
    "Latency of encrypt/decrypt/rotate operations.",
    ["operation"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
BYTES_PROCESSED = Counter("blobseal_bytes_total", "Plaintext bytes processed.", ["operation"], registry=REGISTRY)
FILE_SIZE = Histogram(
    "blobseal_file_size_bytes",
    "Sizes of files encrypted.",
    buckets=tuple(float(4**k) for k in range(5, 18)),
    registry=REGISTRY,
)
ERRORS = Counter("blobseal_errors_total", "Errors by operation and type.", ["operation", "error"], registry=REGISTRY)


@contextmanager
def timed(operation: str, *, backend: str) -> Iterator[None]:
    """Count a key operation and its latency; the outcome is ``ok`` or the error's type."""
    start = time.perf_counter()
    outcome = "ok"
    try:
        yield
    except Exception as exc:
        outcome = type(exc).__name__
        raise
    finally:
        KEY_OPERATIONS.labels(operation, backend, outcome).inc()
        KEY_OPERATION_SECONDS.labels(operation, backend).observe(time.perf_counter() - start)
