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
from shared.cli import devstate
from shared.cli.identity import operator
from shared.cli.io import Progress, UsageError, atomic_output
from shared.config import DEFAULT_DATABASE_URL, Settings, key_fingerprint, redact_url
from shared.db.migrations import MIGRATIONS, migrate
from shared.errors import BlobsealError, SecretDisabledError
from shared.identity import Caller
from shared.names import for_terminal
from shared.service import parse_file_id

__all__ = [
    "run_attest_intermediates", "run_audit", "run_decrypt_file",
    "run_delete", "run_expire", "run_failed", "run_key_fingerprint", "run_list",
    "run_migrate", "run_migrate_keys", "run_reconcile", "run_release", "run_replay", "run_rotate", "run_rotate_kek",
    "run_show",
]

T = TypeVar("T")


def _settings(args: argparse.Namespace) -> Settings:
    """The deployment's settings, read once per command; with no ``DATABASE_URL`` set, the database of a running
    ``make dev``."""
    settings: Settings | None = getattr(args, "loaded_settings", None)
    if settings is None:
        environ: Mapping[str, str] | None = getattr(args, "environ", None)
        values = bootstrap.settings_mapping(environ)
        if not values.get("DATABASE_URL"):
            values["DATABASE_URL"] = _dev_database(environ)
        settings = args.loaded_settings = Settings.from_env(values)
    return settings


def _dev_database(environ: Mapping[str, str] | None) -> str:
    """A running ``make dev``'s database (said on stderr), else the default address."""
    dev = devstate.running(devstate.dev_dir(environ))
    if dev is None or not dev.database_url:
        if dev is not None and dev.database == "configured":
            print("blobseal: `make dev` runs with a DATABASE_URL of its own: set the same here", file=sys.stderr)
        return DEFAULT_DATABASE_URL
    print(f"blobseal: using the database of `make dev` (pid {dev.pid}, {dev.database}: "
          f"{redact_url(dev.database_url)})", file=sys.stderr)
    return dev.database_url


def _with_services(args: argparse.Namespace, work: Callable[[bootstrap.Services, Caller], Awaitable[T]]) -> T:
    """Run ``work`` on the deployment's services, as the operator (``shared.cli.identity``)."""
    async def run() -> T:
        settings = _settings(args)
        caller = operator(settings)
        services = bootstrap.build_services(settings)
        try:
            return await work(services, caller)
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
    print(json.dumps(_with_services(args, lambda s, me: s.files.describe(me, args.file_id)), indent=2))
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    if args.file_id:
        reference = _with_services(args, lambda s, me: s.maintenance.rotate_file(me, args.file_id))
        print(json.dumps({"rotated": [args.file_id], "key_reference": reference}))
        return 0
    report = _with_services(args, lambda s, me: s.maintenance.rotate_due(me, limit=args.limit))
    print(json.dumps(report.as_dict()))
    return 1 if report.failed else 0


def run_expire(args: argparse.Namespace) -> int:
    expires = _with_services(args, lambda s, me: s.maintenance.expire_key(me, args.file_id))
    print(json.dumps({"file_id": args.file_id, "key_expires_at": expires}))
    return 0


def run_reconcile(args: argparse.Namespace) -> int:
    report = _with_services(args, lambda s, me: s.maintenance.reconcile(me))
    print(json.dumps(report.as_dict()))
    return 1 if report.failed else 0


def run_migrate_keys(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise UsageError("--batch must be at least 1")
    result = _with_services(args, lambda s, me: s.maintenance.migrate_keys(me, args.to, batch=args.batch))
    print(json.dumps(result))
    return 1 if result["refused"] else 0  # rows the service cannot prove its own: the database was written


def run_rotate_kek(args: argparse.Namespace) -> int:
    print(json.dumps(_with_services(args, lambda s, me: s.maintenance.rotate_kek(me, rewrap_only=args.rewrap_only))))
    return 0


def run_attest_intermediates(args: argparse.Namespace) -> int:
    print(json.dumps(_with_services(args, lambda s, me: s.maintenance.attest_intermediates(me))))
    return 0


def run_failed(args: argparse.Namespace) -> int:
    failures = _with_services(args, lambda s, me: s.maintenance.failed_uploads(me))
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
        print(f"{for_terminal(str(row['name']))}  [{row['error']}, {row['attempts']} attempt(s); {when}]\n"
              f"    {for_terminal(str(row['reason']))}")
    return 0


def run_replay(args: argparse.Namespace) -> int:
    async def work(services: bootstrap.Services, me: Caller) -> list[dict[str, str]]:
        names = [f.source_name for f in await services.maintenance.failed_uploads(me)] if args.all else args.names
        results = []
        for name in dict.fromkeys(names):
            try:
                outcome = await services.maintenance.replay(me, name)
                results.append({"name": name, "outcome": outcome.status})
            except BlobsealError as exc:
                results.append({"name": name, "outcome": "failed", "reason": str(exc)})
        return results

    results = _with_services(args, work)
    print(json.dumps(results, indent=2))
    return 1 if any(r["outcome"] == "failed" for r in results) else 0


def run_list(args: argparse.Namespace) -> int:
    page, cursor = _with_services(args, lambda s, me: s.files.list_files(me, prefix=args.prefix, status=args.status,
                                                                         limit=args.limit, cursor=args.cursor))
    if args.json:
        print(json.dumps({"files": page, "next_cursor": cursor}, indent=2))
        return 0
    for view in page:
        print(f"{view['file_id']}  {view['status']:<9}  {view['size'] if view['size'] is not None else '-':>12}  "
              f"{for_terminal(view['source_name'])}")
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
    print(json.dumps(_with_services(args, lambda s, me: s.files.delete(me, args.file_id)), indent=2))
    return 0


def run_audit(args: argparse.Namespace) -> int:
    """``audit`` (list), ``audit verify``, ``audit digest``, ``audit purge --before``."""
    action = getattr(args, "action", None) or "list"
    return {"list": _audit_list, "verify": _audit_verify, "digest": _audit_digest, "purge": _audit_purge}[action](args)


def _audit_list(args: argparse.Namespace) -> int:
    records = _with_services(args, lambda s, me: s.files.access_log(me, file_id=args.file_id, since=args.since,
                                                                    who=args.caller, limit=args.limit))
    if args.json:
        print(json.dumps([r.as_dict() for r in records], indent=2))
        return 0
    for r in records:
        row = r.as_dict()
        sent = "-" if row["bytes_sent"] is None else row["bytes_sent"]
        print(f"{row['at']}  {row['operation']:<9} {for_terminal(row['outcome']):<22} "
              f"{for_terminal(row['caller']):<28} {row['file_id'] or '-':<36} range={row['range'] or '-'} "
              f"bytes={sent} from={for_terminal(row['client_address'])}")
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    """Exit 0 when every row and digest checks out; 1 naming the first problem (and listing the rest)."""
    report = _with_services(args, lambda s, me: s.maintenance.audit_verify(me))
    print(json.dumps(report.as_dict(), indent=2))
    if not report.ok:
        first = report.problems[0]
        print(f"access log verification FAILED: {first.where}: {first.what}", file=sys.stderr)
    return 0 if report.ok else 1


def _audit_digest(args: argparse.Namespace) -> int:
    name = _with_services(args, lambda s, me: s.maintenance.audit_digest(me))
    print(json.dumps({"digest": name}))
    return 0


def _audit_purge(args: argparse.Namespace) -> int:
    before = _when(args.before) if args.before else None
    if not args.yes:
        when = before.isoformat() if before else "AUDIT_RETENTION_DAYS ago"
        raise UsageError(f"audit purge removes every access log row from before {when}: confirm with --yes")
    print(json.dumps(_with_services(args, lambda s, me: s.maintenance.audit_purge(me, before)), indent=2))
    return 0


def run_release(args: argparse.Namespace) -> int:
    released = _with_services(args, lambda s, me: s.maintenance.release_rotation(me, args.file_id))
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

    async def work(services: bootstrap.Services, me: Caller) -> None:
        try:
            got = await services.files.decrypt_file(me, args.file_id)
        except SecretDisabledError:
            record = await services.files.encrypted_file(args.file_id)  # for the hint: which version to enable
            raise UsageError(_enable_hint(_settings(args), str(record.key_reference))) from None
        assert got.body is not None
        progress = Progress(got.record.size, "decrypt-file", enabled=sys.stderr.isatty() and args.output != "-")
        with atomic_output(args.output) as sink:
            async for piece in got.body:
                sink.write(piece)
                progress.advance(len(piece))
        progress.close()

    _with_services(args, work)
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
