"""What the operator commands do on the configured deployment (``shared.cli.ops_commands`` parses them).

They read the same settings as ``make dev`` (environment first, then ``local.settings.json``)
and call the same service code as the functions, so ``rotate`` is the timer's code path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from shared import bootstrap
from shared.cli.io import atomic_output
from shared.config import Settings, redact_url
from shared.db.migrations import MIGRATIONS, migrate
from shared.service import FileService, parse_file_id

__all__ = ["run_decrypt_file", "run_expire", "run_migrate", "run_rotate", "run_show"]

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
        reference = _with_service(args, lambda s: s.rotate_file(args.file_id))
        print(json.dumps({"rotated": [args.file_id], "key_reference": reference}))
        return 0
    report = _with_service(args, lambda s: s.rotate_due(limit=args.limit))
    print(json.dumps(report.as_dict()))
    return 1 if report.failed else 0


def run_expire(args: argparse.Namespace) -> int:
    expires = _with_service(args, lambda s: s.expire_key(args.file_id))
    print(json.dumps({"file_id": args.file_id, "key_expires_at": expires}))
    return 0


def run_decrypt_file(args: argparse.Namespace) -> int:
    parse_file_id(args.file_id)

    async def work(service: FileService) -> None:
        body = await service.open(await service.encrypted_file(args.file_id), None)
        with atomic_output(args.output) as sink:
            async for piece in body:
                sink.write(piece)

    _with_service(args, work)
    return 0
