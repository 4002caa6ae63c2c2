"""Where file keys live: custodies behind one port (``base.KeyCustody``), chosen by name.

- ``secret``: a vault secret version per key (the spec's model), ``shared.custody.secret``;
- ``envelope``: wrapped in its row by a signed intermediate key, ``shared.custody.envelope`` and
  ``shared.custody.intermediates`` (docs/SCALE.md).

``KEY_MODE`` picks the custody of *new* keys; a key row records its own custody, and a deployment
reads the custodies ``KEY_CUSTODIES`` allows (any other name in a row is refused), so keys move
between custodies (``FileKeyService.migrate_keys``) without touching a blob.
"""

from shared.custody.base import KeyCustody, check_reference, integrity_refused
from shared.custody.envelope import EnvelopeCustody
from shared.custody.intermediates import IntermediateKeys, IntermediatePolicy
from shared.custody.secret import SecretCustody

__all__ = [
    "EnvelopeCustody", "IntermediateKeys", "IntermediatePolicy", "KeyCustody", "SecretCustody", "check_reference",
    "integrity_refused",
]
