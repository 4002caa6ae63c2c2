"""Operator command line: ``python -m shared.cli COMMAND``.

Every command exits 0 on success and non-zero with a one-line message on stderr on failure;
no message ever carries key material, plaintext or connection secrets.
"""

from shared.cli.main import main

__all__ = ["main"]
