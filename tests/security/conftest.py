"""Each attack on a deployment of its own: a fresh database and vault per test (a vault made for one test's keys
must not meet another test's rows: the service refuses a vault that is missing keys the database records)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shared.db.migrations import migrate


@pytest.fixture
def vault_dir(tmp_path: Path) -> Path:
    return tmp_path / "vault" / "secrets"


@pytest.fixture
def database_url(pg_empty_database_url: str) -> str:
    asyncio.run(migrate(pg_empty_database_url))
    return pg_empty_database_url
