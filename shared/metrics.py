"""Prometheus metrics of blobseal (one registry per process).

Labels are small fixed vocabularies (operation names, backends, outcomes): never a file id,
a blob name, a key or anything a user chose. ``timed`` records latency and outcome of one
operation. Azure Monitor export (fleet-wide view) is wired by ``shared.telemetry``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "AUDIT_FAILURES",
    "BYTES_PROCESSED",
    "COMMITS_UNCERTAIN",
    "ERRORS",
    "FAILED_UPLOADS",
    "FILE_SIZE",
    "HEALTH_CHECKS",
    "INGEST_RETRIES",
    "INTEGRITY_FAILURES",
    "KEYS_MISSING",
    "KEY_CACHE",
    "KEY_INTEGRITY_FAILURES",
    "KEY_OPERATIONS",
    "KEY_OPERATION_SECONDS",
    "OLDEST_PLAINTEXT",
    "OPERATIONS",
    "OPERATION_SECONDS",
    "REGISTRY",
    "REPAIRS",
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
INTEGRITY_FAILURES = Counter(
    "blobseal_integrity_failures_total", "Stored files that failed authentication (tampered, truncated, wrong key).",
    ["operation"], registry=REGISTRY)
KEYS_MISSING = Counter(
    "blobseal_keys_missing_total", "Recorded keys the vault did not have (an operator must restore them).",
    registry=REGISTRY)
KEY_INTEGRITY_FAILURES = Counter(
    "blobseal_key_integrity_failures_total", "Key rows refused because the service cannot prove it made them "
    "(forged, moved, unsigned, a custody not allowed): someone wrote the database.", ["reason"], registry=REGISTRY)
AUDIT_FAILURES = Counter(
    "blobseal_audit_failures_total", "Access log writes that failed (the access was refused unless fail-open).",
    registry=REGISTRY)
REPAIRS = Counter("blobseal_repairs_total", "Repairs made by the reconciler, by kind.", ["kind"], registry=REGISTRY)
INGEST_RETRIES = Counter(
    "blobseal_ingest_retries_total", "Ingest attempts retried after a transient failure.", registry=REGISTRY)
OLDEST_PLAINTEXT = Gauge(
    "blobseal_ingest_oldest_plaintext_seconds",
    "Age of the oldest upload still in plaintext in the ingest container (as of the last reconcile).",
    registry=REGISTRY)
COMMITS_UNCERTAIN = Counter(
    "blobseal_commits_uncertain_total", "Commits whose acknowledgement was lost, by what the re-read found "
    "(committed|rolled_back|unknown).", ["operation", "outcome"], registry=REGISTRY)
HEALTH_CHECKS = Gauge(
    "blobseal_health_check", "The last health probe of each check (1: ok, 0: failing); `uploads` is 0 while "
    "uploads cannot succeed (the vault cannot take keys, the KEK is missing).", ["check"], registry=REGISTRY)
FAILED_UPLOADS = Gauge(
    "blobseal_failed_uploads", "Uploads recorded as failed and not yet encrypted (as of the last reconcile).",
    ["kind"], registry=REGISTRY)


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
