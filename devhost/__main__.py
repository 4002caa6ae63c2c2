"""``python -m devhost``: run blobseal locally with no Azure account (what ``make dev`` runs).

Starts Azurite (standard ports 10000-10002, data in ``.azurite/``) unless one already
answers; uses PostgreSQL at ``DATABASE_URL`` if set, else the one on 127.0.0.1:5432, else an
embedded one (data in ``.dev/pgdata``); creates the containers and the schema, then
runs the functions of ``function_app.py``: with ``func start`` when Core Tools are installed,
else with the bundled host, which runs them on Microsoft's Python runtime (``azure-functions-runtime``)
and plays the Functions host around it (HTTP on 127.0.0.1:7071, function keys, blob polling,
timers). Settings come from the environment first, then ``local.settings.json`` (created from the
example if missing).
Ctrl-C stops everything this command started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import platform
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from localinfra.azurite import Azurite, listening, running_azurite
from localinfra.postgres import DatabaseProblem, database
from shared import bootstrap
from shared.cli import devstate
from shared.config import DEFAULT_DATABASE_URL
from shared.errors import BlobsealError

ROOT = Path(__file__).resolve().parents[1]
AZURITE_PORTS = (10000, 10001, 10002)
EXAMPLE_KEY = "local-dev-key"  # the example's development key (local.settings.json.example)
DATABASE_KINDS = {"configured": "DATABASE_URL's", "default": "the one answering on 127.0.0.1:5432",
                  "embedded": "embedded (data in .dev/pgdata; the blobseal CLI finds it while this runs)"}


class DevProblem(RuntimeError):
    """Something on this machine stops the local host from starting; the message says what to do."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devhost", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7071, help="HTTP port (default 7071)")
    parser.add_argument("--no-azurite", action="store_true", help="use the storage the settings name as is")
    parser.add_argument("--no-func", action="store_true", help="use the bundled host even if Core Tools exist")
    parser.add_argument("--poll-seconds", type=float, default=2.0, help="blob polling interval")
    parser.add_argument("--verbose", action="store_true",
                        help="also the runtime's own logs and the Azure SDK's HTTP logs (as `func start --verbose`)")
    parser.add_argument("--embedded-postgres", action="store_true",
                        help="a private PostgreSQL in .dev/pgdata even if one answers on 127.0.0.1:5432")
    return parser.parse_args(argv)


def prepare_settings() -> dict[str, str]:
    """Environment over local.settings.json over the example's values (for settings added since the
    file was made); exported so function_app and bootstrap see the same."""
    settings_file, example = ROOT / "local.settings.json", ROOT / "local.settings.json.example"
    if not settings_file.exists() and example.exists():
        shutil.copyfile(example, settings_file)
        print(f"created {settings_file.name} from the example")
    defaults = bootstrap.settings_mapping({}, settings_file=example)
    values = {**defaults, **bootstrap.settings_mapping(settings_file=settings_file)}
    os.environ.update(values)
    return values


@contextlib.contextmanager
def storage(args: argparse.Namespace) -> Iterator[Azurite | None]:
    if args.no_azurite or listening(AZURITE_PORTS[0]):
        if not args.no_azurite:
            print("Azurite already answers on 127.0.0.1:10000: using it")
        yield None
        return
    with running_azurite(ROOT / ".azurite", ports=AZURITE_PORTS, log=ROOT / ".azurite" / "azurite.log") as azurite:
        print("Azurite started on 127.0.0.1:10000-10002 (data in .azurite/)")
        yield azurite


async def prepare_storage_and_schema() -> None:
    services = bootstrap.build_services(bootstrap.load_settings())
    try:
        await services.ingest.ensure()
        await services.protected.ensure()
        await services.db.ping()  # applies the migrations
    finally:
        await services.close()


def banner(port: int, settings: dict[str, str]) -> str:
    key = settings.get("LOCAL_FUNCTION_KEY", "")
    if key != EXAMPLE_KEY:  # a key of your own is not echoed to the terminal
        key = "$LOCAL_FUNCTION_KEY"
    ingest = settings.get("INGEST_CONTAINER", "ingest")
    return f"""
blobseal is running at http://127.0.0.1:{port}/api  (Ctrl-C stops it)
  runtime:       azure-functions-runtime {runtime_version()} on Python {platform.python_version()}
  drop a file:   .venv/bin/python -m devhost.upload ./report.pdf        (into the '{ingest}' container)
  find it:       curl -H "x-functions-key: {key}" "http://127.0.0.1:{port}/api/files?name=report.pdf"
  download it:   curl -H "x-functions-key: {key}" -o report.pdf http://127.0.0.1:{port}/api/files/<file_id>
  health:        curl http://127.0.0.1:{port}/api/health
"""


def runtime_version() -> str:
    """The version of Microsoft's Python runtime the bundled host drives (installed from requirements.txt)."""
    return importlib.metadata.version("azure-functions-runtime")


def run_func(port: int) -> int:
    return subprocess.call(["func", "start", "--port", str(port)], cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = devstate.dev_dir()
    try:
        values = prepare_settings()
        configured = values.get("DATABASE_URL")
        with devstate.holding(folder), running_database(args, configured, folder) as database_url, storage(args):
            os.environ["DATABASE_URL"] = values["DATABASE_URL"] = database_url  # the host and func see it too
            bootstrap.load_settings()  # every settings problem, at once, before anything starts
            if listening(args.port):
                raise DevProblem(f"port {args.port} is already in use (another `make dev`?): stop it, "
                                 f"or run `make dev PORT={args.port + 1}`")
            asyncio.run(prepare_storage_and_schema())
            print(banner(args.port, values))
            return run(args, values)
    except (BlobsealError, DatabaseProblem, DevProblem, devstate.DevRunning) as exc:
        print(f"blobseal: {exc}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def running_database(args: argparse.Namespace, configured: str | None, folder: Path) -> Iterator[str]:
    """The database (``localinfra.postgres.database``), named to the CLI (``shared.cli.devstate``): a
    configured URL is not written down (it may hold a password), only that there is one."""
    if args.embedded_postgres:
        configured, default = None, None
    else:
        default = DEFAULT_DATABASE_URL
    with database(configured, folder / "pgdata", default=default) as url:
        kind = "configured" if configured else "default" if url == DEFAULT_DATABASE_URL else "embedded"
        devstate.publish(folder, "" if kind == "configured" else url, kind)
        print(f"PostgreSQL: {DATABASE_KINDS[kind]}")
        yield url


def run(args: argparse.Namespace, values: dict[str, str]) -> int:
    if shutil.which("func") and not args.no_func:
        return run_func(args.port)
    from devhost.host import serve

    asyncio.run(serve(port=args.port, poll_seconds=args.poll_seconds, settings=values, verbose=args.verbose))
    return 0


def _stop(signum: int, frame: object) -> None:
    """SIGTERM and SIGHUP (a closed terminal) as Ctrl-C: what this command started (the host, Azurite, an
    embedded PostgreSQL) is stopped on the way out. While the host serves, uvicorn takes SIGTERM (and
    SIGINT) itself, shuts down gracefully and raises it again after; SIGHUP is turned into that."""
    if signum == signal.SIGHUP:
        _quiet_lost_terminal()
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise KeyboardInterrupt


def _quiet_lost_terminal() -> None:
    """After SIGHUP the terminal may be gone: writes to it would fail and stop the clean-up half way."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
        with contextlib.suppress(OSError, ValueError):
            os.dup2(devnull, stream.fileno())


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
