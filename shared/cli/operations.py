"""What the operator commands do on the configured deployment (``shared.cli.ops_commands`` parses them).

They read the same settings as ``make dev`` (environment first, then ``local.settings.json``)
and call the same service code as the functions, so ``rotate`` is the timer's code path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TypeVar

from shared import bootstrap
from shared.audit import cli_access
from shared.cli.io import Progress, UsageError, atomic_output
from shared.config import Settings, key_fingerprint, redact_url
from shared.db.migrations import MIGRATIONS, migrate
from shared.errors import BlobsealError, SecretDisabledError
from shared.service import FileService, parse_file_id

__all__ = [
    "run_attest_intermediates", "run_audit", "run_decrypt_file",
    "run_delete", "run_expire", "run_failed", "run_key_fingerprint", "run_list",
    "run_migrate", "run_migrate_keys", "run_reconcile", "run_release", "run_replay", "run_rotate", "run_rotate_kek",
    "run_show",
]

T = TypeVar("T")


def _settings(args: argparse.Namespace) -> Settings:
    environ: Mapping[str, str] | None = getattr(args, "environ", None)
    return bootstrap.load_settings(environ)


def _with_service(args: argparse.Namespace, work: Callable[[FileService], Awaitable[T]]) -> T:
    async def run() -> T:
        services = bootstrap.build_services(_settings(args))
        try:
            return await work(services.files)
        finally:
            await services.close()

    return asyncio.run(run())


def run_migrate(args: argparse.Namespace) -> int:
    url = _settings(args).database_url
    applied = asyncio.run(migrate(url))
    latest = MIGRATIONS[-1].version
    done = f"applied {', '.join(map(str, applied))}; schema" if applied else "schema already"
    print(f"{redact_url(url)}: {done} at version {latest}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    print(json.dumps(_with_service(args, lambda s: s.describe(args.file_id)), indent=2))
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    if args.file_id:
        reference = _with_service(args, lambda s: s.rotate_file(args.file_id, cli_access()))
        print(json.dumps({"rotated": [args.file_id], "key_reference": reference}))
        return 0
    report = _with_service(args, lambda s: s.rotate_due(limit=args.limit))
    print(json.dumps(report.as_dict()))
    return 1 if report.failed else 0


def run_expire(args: argparse.Namespace) -> int:
    expires = _with_service(args, lambda s: s.expire_key(args.file_id))
    print(json.dumps({"file_id": args.file_id, "key_expires_at": expires}))
    return 0


def run_reconcile(args: argparse.Namespace) -> int:
    report = _with_service(args, lambda s: s.reconcile())
    print(json.dumps(report.as_dict()))
    return 1 if report.failed else 0


def run_migrate_keys(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise UsageError("--batch must be at least 1")
    result = _with_service(args, lambda s: s.migrate_keys(args.to, cli_access(), batch=args.batch))
    print(json.dumps(result))
    return 1 if result["refused"] else 0  # rows the service cannot prove its own: the database was written


def run_rotate_kek(args: argparse.Namespace) -> int:
    print(json.dumps(_with_service(args, lambda s: s.rotate_kek(cli_access(), rewrap_only=args.rewrap_only))))
    return 0


def run_attest_intermediates(args: argparse.Namespace) -> int:
    print(json.dumps(_with_service(args, lambda s: s.attest_intermediates(cli_access()))))
    return 0


def run_failed(args: argparse.Namespace) -> int:
    failures = _with_service(args, lambda s: s.failed_uploads())
    rows = [{"name": f.source_name, "etag": f.source_etag, "file_id": str(f.file_id) if f.file_id else None,
             "error": f.error, "reason": f.reason, "permanent": f.permanent, "attempts": f.attempts,
             "first_failed_at": f.first_failed_at.isoformat(), "last_failed_at": f.last_failed_at.isoformat(),
             "next_attempt_at": f.next_attempt_at.isoformat() if f.next_attempt_at else None} for f in failures]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no failed uploads")
    for row in rows:
        when = "waits for an operator (replay)" if row["permanent"] else f"retried after {row['next_attempt_at']}"
        print(f"{row['name']}  [{row['error']}, {row['attempts']} attempt(s); {when}]\n    {row['reason']}")
    return 0


def run_replay(args: argparse.Namespace) -> int:
    async def work(service: FileService) -> list[dict[str, str]]:
        names = [f.source_name for f in await service.failed_uploads()] if args.all else args.names
        results = []
        for name in dict.fromkeys(names):
            try:
                outcome = await service.replay(name)
                results.append({"name": name, "outcome": outcome.status})
            except BlobsealError as exc:
                results.append({"name": name, "outcome": "failed", "reason": str(exc)})
        return results

    results = _with_service(args, work)
    print(json.dumps(results, indent=2))
    return 1 if any(r["outcome"] == "failed" for r in results) else 0


def run_list(args: argparse.Namespace) -> int:
    page, cursor = _with_service(args, lambda s: s.list_files(prefix=args.prefix, status=args.status,
                                                              limit=args.limit, cursor=args.cursor))
    if args.json:
        print(json.dumps({"files": page, "next_cursor": cursor}, indent=2))
        return 0
    for view in page:
        print(f"{view['file_id']}  {view['status']:<9}  {view['size'] if view['size'] is not None else '-':>12}  "
              f"{view['source_name']}")
    if cursor:
        print(f"more: --cursor {cursor}", file=sys.stderr)
    return 0


def run_delete(args: argparse.Namespace) -> int:
    parse_file_id(args.file_id)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("delete erases the file and its keys for good: confirm with --yes")
        if input(f"erase file {args.file_id} and every key that opens it? type yes: ").strip() != "yes":
            print("not deleted", file=sys.stderr)
            return 1
    print(json.dumps(_with_service(args, lambda s: s.delete(args.file_id, cli_access())), indent=2))
    return 0


def run_audit(args: argparse.Namespace) -> int:
    file_id = parse_file_id(args.file_id) if args.file_id else None
    since = _when(args.since) if args.since else None
    records = _with_service(args, lambda s: s.audit.query(file_id=file_id, since=since, caller=args.caller,
                                                           limit=args.limit))
    if args.json:
        print(json.dumps([r.as_dict() for r in records], indent=2))
        return 0
    for r in records:
        row = r.as_dict()
        print(f"{row['at']}  {row['operation']:<9} {row['outcome']:<22} {row['caller']:<28} "
              f"{row['file_id'] or '-':<36} range={row['range'] or '-'} bytes={row['bytes_sent']} "
              f"from={row['client_address'] or '-'}")
    return 0


def run_release(args: argparse.Namespace) -> int:
    released = _with_service(args, lambda s: s.release_rotation(args.file_id))
    print(json.dumps({"file_id": args.file_id, "released": released}))
    return 0


def run_key_fingerprint(args: argparse.Namespace) -> int:
    key = sys.stdin.readline().strip()
    if not key:
        raise UsageError("give the function key on stdin (it is never printed or stored)")
    print(key_fingerprint(key))
    return 0


def _when(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since must be an ISO 8601 time, got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def run_decrypt_file(args: argparse.Namespace) -> int:
    parse_file_id(args.file_id)

    async def work(service: FileService) -> None:
        record = await service.encrypted_file(args.file_id)
        try:
            body = await service.open(record, None)
        except SecretDisabledError:
            raise UsageError(_enable_hint(_settings(args), str(record.key_reference))) from None
        progress = Progress(record.size, "decrypt-file", enabled=sys.stderr.isatty() and args.output != "-")
        with atomic_output(args.output) as sink:
            async for piece in body:
                sink.write(piece)
                progress.advance(len(piece))
        progress.close()

    _with_service(args, work)
    return 0


def _enable_hint(settings: Settings, key_reference: str) -> str:
    """What to run when the key version a file needs was disabled (a restored row from before a rotation)."""
    name, version = key_reference.split("/", 1)
    if settings.key_vault_mode == "azure":
        how = (f"az keyvault secret set-attributes --enabled true --id "
               f"{settings.key_vault_url.rstrip('/')}/secrets/{name}/{version}")
    else:
        how = f'set "enabled": true for version {version} of {name} in {settings.key_vault_local_path}/secrets.json'
    return (f"key version {key_reference} is disabled (a rotation retired it): {how}, run decrypt-file again, "
            "then disable the version again")
