"""Fail fast, with instructions, when PostgreSQL does not answer at DATABASE_URL."""

from __future__ import annotations

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import asyncpg

from shared.config import Settings

HELP = """PostgreSQL does not answer at {url} ({reason}).
Start it, or point DATABASE_URL at one that runs, e.g.:
  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start   # Debian
  docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16   # anywhere with Docker
  DATABASE_URL=postgresql://user:pass@host:5432/db make test"""


async def _probe(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    await conn.close()


def main() -> int:
    settings = Settings.from_env(os.environ)
    try:
        asyncio.run(asyncio.wait_for(_probe(settings.database_url), timeout=8))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        reason = type(exc).__name__
        print(HELP.format(url=settings.database_url_redacted, reason=reason), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
