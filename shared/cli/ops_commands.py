"""Operator commands on the configured deployment: ``migrate``, ``show``, ``rotate``, ``expire``,
``reconcile``, ``failed``, ``replay``, ``list``, ``delete``, ``audit``, ``release``, ``key-fingerprint``,
``migrate-keys``, ``rotate-kek``, ``decrypt-file``.

Only the parser lives here: the commands' code (``shared.cli.operations``) pulls in the Azure
SDK, asyncpg and the settings, so it is imported when one of them runs, never for the format
commands (``encrypt``, ``decrypt``, ``inspect``), which start in a fraction of that time.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["register"]


def _lazy(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        handler: Callable[[argparse.Namespace], int] = getattr(importlib.import_module("shared.cli.operations"), name)
        return handler(args)

    return run


def count(maximum: int) -> Callable[[str], int]:
    """An argparse type: a whole number from 1 to ``maximum`` (0 or -5 is a usage error, not the default)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if not 1 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {maximum:,}, got {text!r}")
        return value

    return parse


def register(commands: Any) -> None:
    migrate_cmd = commands.add_parser("migrate", help="apply pending database migrations (idempotent)")
    migrate_cmd.set_defaults(handler=_lazy("run_migrate"))

    show = commands.add_parser("show", help="print a file's metadata as JSON")
    show.add_argument("file_id")
    show.set_defaults(handler=_lazy("run_show"))

    rotate = commands.add_parser("rotate", help="rotate keys now (the timer's code path)")
    which = rotate.add_mutually_exclusive_group(required=True)
    which.add_argument("--due", action="store_true", help="every file whose key has expired (bounded per run)")
    which.add_argument("--file-id", help="this file, whether due or not")
    rotate.add_argument("--limit", type=count(1_000_000), default=None, help="at most this many files (with --due)")
    rotate.set_defaults(handler=_lazy("run_rotate"))

    expire = commands.add_parser("expire", help="make a file's key due: the next rotation run rotates it")
    expire.add_argument("file_id")
    expire.set_defaults(handler=_lazy("run_expire"))

    reconcile = commands.add_parser("reconcile", help="repair what faults left behind now (the timer's code path)")
    reconcile.set_defaults(handler=_lazy("run_reconcile"))

    failed = commands.add_parser("failed", help="list uploads that failed, with the reason and when they retry")
    failed.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    failed.set_defaults(handler=_lazy("run_failed"))

    replay = commands.add_parser("replay", help="ingest failed uploads again now (after fixing the cause)")
    which_uploads = replay.add_mutually_exclusive_group(required=True)
    which_uploads.add_argument("names", nargs="*", default=[], help="ingest blob names, as `failed` lists them")
    which_uploads.add_argument("--all", action="store_true", help="every upload `failed` lists")
    replay.set_defaults(handler=_lazy("run_replay"))

    listing = commands.add_parser("list", help="list files by upload name (a page at a time)")
    listing.add_argument("--prefix", default="", help="upload names starting with this")
    listing.add_argument("--status", choices=("pending", "encrypted", "deleted"))
    listing.add_argument("--limit", type=count(1000), default=100)
    listing.add_argument("--cursor", help="next_cursor of the previous page")
    listing.add_argument("--json", action="store_true", help="the page as JSON (with next_cursor)")
    listing.set_defaults(handler=_lazy("run_list"))

    delete = commands.add_parser("delete", help="erase a file: blobs and every key version; a tombstone stays")
    delete.add_argument("file_id")
    delete.add_argument("--yes", action="store_true", help="do not ask")
    delete.set_defaults(handler=_lazy("run_delete"))

    audit = commands.add_parser("audit", help="the access log: list (who read, uploaded, rotated or deleted what), "
                                "verify (chains and signed digests), digest (write one now), purge (the purge role)")
    audit.add_argument("action", nargs="?", choices=("list", "verify", "digest", "purge"), default="list")
    audit.add_argument("--before", help="purge: remove rows older than this ISO 8601 time (default: "
                       "AUDIT_RETENTION_DAYS ago; never later)")
    audit.add_argument("--yes", action="store_true", help="purge: do not ask")
    audit.add_argument("--file-id")
    audit.add_argument("--since", help="ISO 8601 time, e.g. 2026-11-30 or 2026-11-30T12:00Z")
    audit.add_argument("--caller", help="e.g. key:alice, entra:someone@contoso.com, cli:user@host")
    audit.add_argument("--limit", type=count(10_000), default=1000)
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(handler=_lazy("run_audit"))

    release = commands.add_parser("release", help="give up a stuck rotation claim, whoever holds it")
    release.add_argument("file_id")
    release.set_defaults(handler=_lazy("run_release"))

    fingerprint = commands.add_parser("key-fingerprint", help="the access log's name for a function key (read from "
                                      "stdin), for FUNCTION_KEY_NAMES")
    fingerprint.set_defaults(handler=_lazy("run_key_fingerprint"))

    migrate_keys = commands.add_parser("migrate-keys", help="move every file key into a custody (KEY_MODE's two: "
                                       "vault secrets or envelope-wrapped), without re-encrypting a file")
    migrate_keys.add_argument("--to", required=True, choices=("secret", "envelope"))
    migrate_keys.add_argument("--batch", type=count(10_000), default=100, help="keys per database read")
    migrate_keys.set_defaults(handler=_lazy("run_migrate_keys"))

    rotate_kek = commands.add_parser("rotate-kek", help="envelope mode: a new KEK version, then every intermediate "
                                     "key rewrapped with it (file keys and blobs untouched)")
    rotate_kek.add_argument("--rewrap-only", action="store_true", help="no new version: finish an interrupted rewrap")
    rotate_kek.set_defaults(handler=_lazy("run_rotate_kek"))

    attest = commands.add_parser("attest-intermediates", help="once, right after upgrading from a version without "
                                 "signed intermediate keys: sign the existing rows (trusts the database as it is now)")
    attest.set_defaults(handler=_lazy("run_attest_intermediates"))

    decrypt = commands.add_parser("decrypt-file", help="decrypt a protected blob with the configured vault")
    decrypt.add_argument("file_id")
    decrypt.add_argument("output", help="plaintext file, or - for stdout")
    decrypt.set_defaults(handler=_lazy("run_decrypt_file"))
