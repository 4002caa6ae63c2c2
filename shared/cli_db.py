"""The database commands of the CLI: ``migrate`` (wired into ``python -m shared.cli``).

``main(["migrate"])`` reads ``DATABASE_URL`` through ``Settings``, applies the pending
migrations and prints what it did; exit status 0 on success, 1 on a database or settings
error (the message names the database without its password).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence

from shared.config import Settings, redact_url
from shared.db.migrations import MIGRATIONS, migrate
from shared.errors import BlobsealError

__all__ = ["main", "run_migrate"]


def run_migrate(database_url: str) -> int:
    """Apply pending migrations to ``database_url``; print the outcome; return an exit status."""
    try:
        applied = asyncio.run(migrate(database_url))
    except BlobsealError as exc:
        print(f"migrate failed: {exc}", file=sys.stderr)
        return 1
    latest = MIGRATIONS[-1].version
    if applied:
        print(f"{redact_url(database_url)}: applied {', '.join(map(str, applied))}; schema at version {latest}")
    else:
        print(f"{redact_url(database_url)}: schema already at version {latest}")
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blobseal", description="blobseal database commands")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply pending database migrations (idempotent)")
    parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ if environ is None else environ)
    except BlobsealError as exc:
        print(f"migrate failed: {exc}", file=sys.stderr)
        return 1
    return run_migrate(settings.database_url)


if __name__ == "__main__":
    sys.exit(main())
