"""The fault suite: every failure mode of issue 8, reproduced on the real local stack.

Real PostgreSQL (a scratch database per module; cut through a TCP proxy), real Azurite (stopped
and restarted), the real local vault (corrupted, deleted, restored) and the real Azure SDK
against the loopback Key Vault stand-in (429 + Retry-After). Each test asserts the final state:
every upload encrypted once and downloadable byte-identical, ingest empty, no pending attempt,
no orphan blob or staged block, no enabled unrecorded vault version.

Fast cases run in ``make test``; the long ones (``@pytest.mark.long``: 100 race trials, 1,000
throttled files, killed host processes) in ``make faults``.
"""

from __future__ import annotations

