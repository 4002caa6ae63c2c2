"""DATABASE_AUTH=entra: the pool takes an Entra token as the password of every new connection,
renewed before it expires (against the real PostgreSQL: trust auth accepts any password)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from azure.core.credentials import AccessToken

from shared.config import Settings
from shared.db import Database
from shared.db.entra import SCOPE, EntraPassword
from shared.errors import ConfigError

pytestmark = pytest.mark.postgres


@dataclass
class Tokens:
    """A credential that hands out numbered tokens lasting ``lifetime`` seconds from ``now``."""

    now: float = 1000.0
    lifetime: float = 3600.0
    scopes: list[tuple[str, ...]] = field(default_factory=list)
    closed: bool = False

    async def get_token(self, *scopes: str, **_: object) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(f"token-{len(self.scopes)}", int(self.now + self.lifetime))

    async def close(self) -> None:
        self.closed = True


async def test_tokens_are_reused_and_renewed_five_minutes_before_they_expire() -> None:
    tokens = Tokens()
    password = EntraPassword(tokens, clock=lambda: tokens.now)  # type: ignore[arg-type]
    assert await password() == "token-1" and await password() == "token-1"
    tokens.now += 3600 - 301
    assert await password() == "token-1"
    tokens.now += 2  # now within five minutes of the expiry
    assert await password() == "token-2"
    assert tokens.scopes == [(SCOPE,), (SCOPE,)] and "token" not in repr(password).replace("<token>", "")


async def test_every_new_pooled_connection_asks_for_the_password(pg_database_url: str) -> None:
    tokens = Tokens()
    calls: list[str] = []
    inner = EntraPassword(tokens, clock=lambda: tokens.now)  # type: ignore[arg-type]

    class Counting(EntraPassword):
        async def __call__(self) -> str:
            calls.append(await inner())
            return calls[-1]

    database = Database(pg_database_url, pool_max=2, password=Counting(tokens))  # type: ignore[arg-type]
    async with database.connection() as one, database.connection() as two:
        assert await one.fetchval("SELECT 1") == await two.fetchval("SELECT 1") == 1
    await database.close()
    assert calls == ["token-1", "token-1"] and tokens.closed


def test_entra_settings_refuse_a_password_in_the_url_and_an_unverified_server() -> None:
    url = "postgresql://app@db/blobseal?sslmode=verify-full"
    settings = Settings.from_env({"DATABASE_AUTH": "entra", "DATABASE_URL": url})
    assert settings.database_auth == "entra"
    for given in ("postgresql://app:secret@db/blobseal?sslmode=verify-full", f"{url}&password=secret"):
        with pytest.raises(ConfigError, match="must not hold one") as refused:
            Settings.from_env({"DATABASE_AUTH": "entra", "DATABASE_URL": given})
        assert "secret" not in str(refused.value)
    for weaker in ("", "?sslmode=require", "?sslmode=verify-ca", "?sslmode=disable"):
        with pytest.raises(ConfigError, match="sslmode=verify-full"):  # the token would go to any server
            Settings.from_env({"DATABASE_AUTH": "entra", "DATABASE_URL": f"postgresql://app@db/blobseal{weaker}"})
