"""The access log: who read, looked up, uploaded, rotated or deleted which file, and how it ended; provably.

- ``log``: appending (one row per access; intent and outcome around a state change), chained with a
  vault-held key, group-committed, fail-closed;
- ``digests``: signed digests of the chains, in a container its writers cannot change (WORM in Azure);
- ``verify``: ``blobseal audit verify``, naming the first row or digest that was changed, removed,
  reordered or forged.

Rows leave the log only through ``purge_access_log``: the purge role alone, never younger than 30 days,
and after a digest that says what the purge removes (``Digests.purge``). ``docs/THREATS.md``.
"""

from shared.audit.digests import Digests, DigestStore
from shared.audit.log import AuditLog, ChainKey
from shared.audit.verify import VerifyReport, verify_log

__all__ = ["AuditLog", "ChainKey", "DigestStore", "Digests", "VerifyReport", "verify_log"]
