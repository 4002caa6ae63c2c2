"""Versioned, idempotent schema migrations (``schema_migrations`` records what ran).

Each migration runs in its own transaction that first takes a transaction-scoped advisory
lock, so any number of migrators (workers starting together, the CLI) can run at once: one
applies a version, the others wait, see it recorded and skip it. A schema that is already up
to date costs one query and no lock. Versions only ever get appended; a database that is
ahead of the code (a newer deployment) is left alone with a warning.

Applied by ``Database`` on first use and by ``python -m shared.cli migrate`` (``migrate``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import asyncpg

from shared.db.errors import Attempt, database_errors
from shared.db.tls import server_verification
from shared.errors import DatabaseError

__all__ = ["MIGRATIONS", "Migration", "apply_migrations", "migrate"]

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key: the ASCII bytes of "blobseal", as a signed 64-bit integer.
LOCK_KEY = int.from_bytes(b"blobseal", "big", signed=True)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


# The spec's table verbatim, plus the bookkeeping the key service needs. No key material:
# the vault holds keys; a row holds only the reference "file-<file_id>/<version>".
_FILE_KEYS = """
CREATE TABLE file_keys (
    id SERIAL PRIMARY KEY,
    file_id UUID NOT NULL,
    key_reference TEXT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    expires_at TIMESTAMP WITH TIME ZONE,
    UNIQUE(file_id, key_reference),
    state TEXT NOT NULL DEFAULT 'active'
        CONSTRAINT file_keys_state_check CHECK (state IN ('pending', 'active', 'retired')),
    retired_at TIMESTAMP WITH TIME ZONE,
    vault_disabled_at TIMESTAMP WITH TIME ZONE,
    rotation_claimed_by TEXT,
    rotation_claimed_at TIMESTAMP WITH TIME ZONE,
    rotation_lease_until TIMESTAMP WITH TIME ZONE,
    CONSTRAINT file_keys_reference_check CHECK (key_reference LIKE ('file-' || file_id::text || '/%')),
    CONSTRAINT file_keys_retired_check CHECK ((state = 'retired') = (retired_at IS NOT NULL))
);
COMMENT ON TABLE file_keys IS 'Key metadata per file; the keys themselves live in the vault.';
CREATE UNIQUE INDEX file_keys_one_active ON file_keys (file_id) WHERE state = 'active';
CREATE UNIQUE INDEX file_keys_one_pending ON file_keys (file_id) WHERE state = 'pending';
CREATE INDEX file_keys_due ON file_keys (expires_at, id) WHERE state = 'active';
CREATE INDEX file_keys_disable_pending ON file_keys (retired_at)
    WHERE state = 'retired' AND vault_disabled_at IS NULL;
"""

# File metadata for the function app: what was uploaded, where its ciphertext is, which key.
# The original name lives here only (never as plaintext blob metadata).
_FILES = """
CREATE TABLE files (
    file_id UUID PRIMARY KEY,
    source_name TEXT NOT NULL,
    source_etag TEXT NOT NULL,
    name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT CONSTRAINT files_size_check CHECK (size >= 0),
    status TEXT NOT NULL DEFAULT 'pending'
        CONSTRAINT files_status_check CHECK (status IN ('pending', 'encrypted')),
    protected_blob TEXT,
    key_reference TEXT,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    encrypted_at TIMESTAMP WITH TIME ZONE,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    CONSTRAINT files_encrypted_check CHECK (
        (status = 'encrypted') = (protected_blob IS NOT NULL AND key_reference IS NOT NULL AND size IS NOT NULL))
);
CREATE INDEX files_source_name ON files (source_name, created_at DESC);
CREATE TABLE retired_blobs (
    blob_name TEXT PRIMARY KEY,
    file_id UUID NOT NULL,
    delete_after TIMESTAMP WITH TIME ZONE NOT NULL
);
CREATE INDEX retired_blobs_due ON retired_blobs (delete_after);
"""

# Self-healing: uploads that failed (with the reason, and when to try again), rotation backoff
# per file, and what the reconciler remembers between runs.
_RELIABILITY = """
CREATE TABLE ingest_failures (
    source_name TEXT NOT NULL,
    source_etag TEXT NOT NULL,
    file_id UUID,
    error TEXT NOT NULL,
    reason TEXT NOT NULL,
    permanent BOOLEAN NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    first_failed_at TIMESTAMP WITH TIME ZONE NOT NULL,
    last_failed_at TIMESTAMP WITH TIME ZONE NOT NULL,
    next_attempt_at TIMESTAMP WITH TIME ZONE,
    PRIMARY KEY (source_name, source_etag),
    CONSTRAINT ingest_failures_next_check CHECK (permanent = (next_attempt_at IS NULL))
);
ALTER TABLE file_keys
    ADD COLUMN rotation_failures INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN rotation_next_attempt_at TIMESTAMP WITH TIME ZONE,
    ADD COLUMN rotation_last_error TEXT;
ALTER TABLE files ADD COLUMN pending_etag TEXT;
UPDATE files SET pending_etag = source_etag WHERE status = 'pending';
CREATE INDEX files_pending ON files (updated_at) WHERE pending_etag IS NOT NULL;
CREATE INDEX files_updated ON files (updated_at);
CREATE TABLE reconciler_state (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# Day two: who accessed what (append-only), and deleted files kept as tombstones.
_ACCESS_LOG = """
CREATE TABLE access_log (
    id BIGSERIAL PRIMARY KEY,
    at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    operation TEXT NOT NULL,
    file_id UUID,
    caller TEXT NOT NULL,
    client_address TEXT,
    range_start BIGINT,
    range_end BIGINT,
    bytes_sent BIGINT,
    outcome TEXT NOT NULL
);
CREATE INDEX access_log_at ON access_log (at);
CREATE INDEX access_log_file ON access_log (file_id, at);
CREATE INDEX access_log_caller ON access_log (caller, at);
-- Append-only: rows are never changed; they go only through purge_access_log (retention).
CREATE FUNCTION access_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('blobseal.access_log_purge', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'access_log is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER access_log_append_only BEFORE UPDATE OR DELETE ON access_log
    FOR EACH ROW EXECUTE FUNCTION access_log_append_only();
CREATE FUNCTION purge_access_log(older_than TIMESTAMP WITH TIME ZONE) RETURNS BIGINT
    LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE purged BIGINT;
BEGIN
    PERFORM set_config('blobseal.access_log_purge', 'on', true);
    DELETE FROM access_log WHERE at < older_than;
    GET DIAGNOSTICS purged = ROW_COUNT;
    PERFORM set_config('blobseal.access_log_purge', 'off', true);
    RETURN purged;
END $$;
ALTER TABLE files DROP CONSTRAINT files_status_check;
ALTER TABLE files ADD CONSTRAINT files_status_check CHECK (status IN ('pending', 'encrypted', 'deleted'));
ALTER TABLE files ADD COLUMN deleted_at TIMESTAMP WITH TIME ZONE, ADD COLUMN deleted_by TEXT;
CREATE INDEX files_listing ON files (source_name, file_id);
"""

# What a download needs to know about the protected blob without asking storage first: its ETag
# (reads are pinned to it) and the format's block size (with the key reference's length and the
# plaintext size, the whole layout). NULL for rows from before: those ask storage as they did.
_BLOB_FACTS = """
ALTER TABLE files ADD COLUMN protected_etag TEXT, ADD COLUMN block_size INTEGER;
"""

# The envelope key mode (docs/SCALE.md): intermediate keys, each wrapped by one KEK version, and
# per key row where its key lives: a vault secret version (``vault_reference``; NULL: the
# ``key_reference`` itself, as every row before and a row of the spec's columns alone), or
# wrapped by an intermediate key (``wrapped_key``, bound to the row). ``key_reference`` (in the blob's
# header) never changes, so keys move between modes without re-encryption. After a move to
# envelope, ``vault_reference`` keeps naming the old (disabled) secret until the file is deleted.
_ENVELOPE = """
CREATE TABLE intermediate_keys (
    id UUID PRIMARY KEY,
    kek_reference TEXT NOT NULL,
    wrapped_key BYTEA NOT NULL,
    created_by TEXT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    use_until TIMESTAMP WITH TIME ZONE NOT NULL,
    max_files INTEGER NOT NULL
);
COMMENT ON TABLE intermediate_keys IS 'Envelope mode: intermediate keys, wrapped by the KEK (never stored plain).';
CREATE INDEX intermediate_keys_kek ON intermediate_keys (kek_reference);
ALTER TABLE file_keys
    ADD COLUMN custody TEXT NOT NULL DEFAULT 'secret',
    ADD COLUMN vault_reference TEXT,
    ADD COLUMN wrapped_key BYTEA,
    ADD COLUMN intermediate_id UUID REFERENCES intermediate_keys (id);
ALTER TABLE file_keys
    ADD CONSTRAINT file_keys_custody_check CHECK (
        (custody = 'secret' AND wrapped_key IS NULL AND intermediate_id IS NULL)
        OR (custody = 'envelope' AND wrapped_key IS NOT NULL AND intermediate_id IS NOT NULL));
CREATE INDEX file_keys_intermediate ON file_keys (intermediate_id) WHERE intermediate_id IS NOT NULL;
CREATE INDEX file_keys_custody ON file_keys (custody, id) WHERE state <> 'retired' OR vault_disabled_at IS NULL;
"""

# Indexes for the hot queries that read a big table whole (docs/DATABASE.md has the plans): the
# reconciler's referenced-blobs check of a listing page, its unfinished-deletions pass, and the
# listing by upload-name prefix (LIKE 'p%' cannot use a b-tree of a non-C collation; text_pattern_ops
# can, and the plan then sorts the matches). Plain CREATE INDEX (migrations run in a transaction):
# writes to files wait for the build (0.4 s for 200,000 rows on the bench/explain.py data).
_HOT_INDEXES = """
CREATE INDEX files_protected_blob ON files (protected_blob) WHERE protected_blob IS NOT NULL;
CREATE INDEX files_deleted ON files (file_id) WHERE status = 'deleted';
CREATE INDEX files_source_name_prefix ON files (source_name text_pattern_ops);
CREATE INDEX file_keys_claims ON file_keys (rotation_lease_until)
    WHERE state = 'active' AND rotation_claimed_by IS NOT NULL;
-- A retired key never falls due: its expiry is cleared (FileKeyRepository.retire_claimed does so from
-- now on), so the statistics of expires_at describe the keys that can, and the due keys are planned
-- from file_keys_due instead of a scan of every file.
UPDATE file_keys SET expires_at = NULL WHERE state = 'retired';
"""

# Keys the database cannot subvert (docs/THREATS.md): each intermediate key row carries the signing
# key's signature over it (rows from before stay unsigned, and are refused until an operator runs
# `blobseal attest-intermediates`); a secret placed in the vault is announced in secret_intents
# before the vault call and the announcement removed with the row that records it, so the
# reconciler finds every version a killed worker left (and nothing else); a deleted file is
# erased (blobs, plaintext, keys) when erased_at is set, and the reconciler finishes the rest.
_KEY_TRUST = """
ALTER TABLE intermediate_keys ADD COLUMN signing_key TEXT, ADD COLUMN signature BYTEA;
ALTER TABLE intermediate_keys ADD CONSTRAINT intermediate_keys_signed_check
    CHECK ((signing_key IS NULL) = (signature IS NULL));
CREATE TABLE secret_intents (
    file_id UUID NOT NULL,
    token TEXT NOT NULL,
    since TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    PRIMARY KEY (file_id, token)
);
CREATE INDEX secret_intents_since ON secret_intents (since);
ALTER TABLE files ADD COLUMN erased_at TIMESTAMP WITH TIME ZONE;
CREATE INDEX files_unerased ON files (deleted_at) WHERE status = 'deleted' AND erased_at IS NULL;
"""

# Access you can prove (docs/THREATS.md): each row is linked into its writer's chain (chain, number,
# HMAC under a vault-held key: shared/crypto/chain.py); rows from before stay unchained. Purging is
# for the purge role alone (blobseal_audit_purger), never younger than 30 days, with a fixed
# search_path; the trigger lets a DELETE through only inside purge_access_log itself (there the
# current user is the function's owner), so setting the session flag no longer opens the table.
_ACCESS_CHAIN = """
ALTER TABLE access_log ADD COLUMN chain UUID, ADD COLUMN seq BIGINT, ADD COLUMN mac BYTEA;
ALTER TABLE access_log ADD CONSTRAINT access_log_chained_check
    CHECK ((chain IS NULL) = (seq IS NULL) AND (seq IS NULL) = (mac IS NULL));
CREATE UNIQUE INDEX access_log_chain ON access_log (chain, seq);
-- every row from now on is chained; rows from before stay (NOT VALID), pinned by the first digest
ALTER TABLE access_log ADD CONSTRAINT access_log_chained_now CHECK (chain IS NOT NULL) NOT VALID;
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'blobseal_audit_purger') THEN
        CREATE ROLE blobseal_audit_purger NOLOGIN;
    END IF;
END $$;
CREATE OR REPLACE FUNCTION purge_access_log(older_than TIMESTAMP WITH TIME ZONE) RETURNS BIGINT
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE purged BIGINT;
BEGIN
    IF older_than IS NULL OR older_than > now() - interval '30 days' THEN
        RAISE EXCEPTION 'access_log keeps every row for at least 30 days' USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM set_config('blobseal.access_log_purge', 'on', true);
    DELETE FROM public.access_log WHERE at < older_than;
    GET DIAGNOSTICS purged = ROW_COUNT;
    PERFORM set_config('blobseal.access_log_purge', 'off', true);
    RETURN purged;
END $$;
REVOKE ALL ON FUNCTION purge_access_log(TIMESTAMP WITH TIME ZONE) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION purge_access_log(TIMESTAMP WITH TIME ZONE) TO blobseal_audit_purger;
CREATE OR REPLACE FUNCTION access_log_append_only() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('blobseal.access_log_purge', true) = 'on'
       AND current_user = (SELECT pg_get_userbyid(proowner) FROM pg_proc
                            WHERE oid = 'public.purge_access_log(timestamp with time zone)'::regprocedure) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'access_log is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
-- TRUNCATE fires no row trigger: refused by a statement trigger (the app's role has no TRUNCATE grant either)
CREATE TRIGGER access_log_no_truncate BEFORE TRUNCATE ON access_log
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_append_only();
"""

# Safe retries of POST /api/files (shared/upload.py): what each Idempotency-Key stands for, per caller, the upload
# attempt serving it and, once its file is encrypted (in the same commit), the request's fingerprint and first
# answer; keys expire (the reconciler deletes them), after which the key may name a new upload.
_UPLOAD_REQUESTS = """
CREATE TABLE upload_requests (
    caller TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    attempt TEXT NOT NULL,
    file_id UUID NOT NULL,
    fingerprint TEXT,
    response JSONB,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (caller, idempotency_key),
    CONSTRAINT upload_requests_answered_check CHECK ((fingerprint IS NULL) = (response IS NULL))
);
CREATE INDEX upload_requests_expiry ON upload_requests (expires_at);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "file_keys", _FILE_KEYS),
    Migration(2, "files", _FILES),
    Migration(3, "reliability", _RELIABILITY),
    Migration(4, "access_log", _ACCESS_LOG),
    Migration(5, "blob_facts", _BLOB_FACTS),
    Migration(6, "envelope", _ENVELOPE),
    Migration(7, "hot_indexes", _HOT_INDEXES),
    Migration(8, "key_trust", _KEY_TRUST),
    Migration(9, "access_chain", _ACCESS_CHAIN),
    Migration(10, "upload_requests", _UPLOAD_REQUESTS),
)

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now()
)
"""


async def apply_migrations(conn: Any, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Apply every migration ``conn``'s database lacks; return the versions this call applied."""
    _check_sequence(migrations)
    if await _up_to_date(conn, migrations):
        return []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        await conn.execute(_CREATE_LEDGER)
    return [m.version for m in migrations if await _apply_one(conn, m)]


async def migrate(database_url: str, *, connect_timeout: float = 5.0) -> list[int]:
    """Bring the database at ``database_url`` up to date (the ``migrate`` CLI command)."""
    attempt = Attempt()
    with database_errors("migrate", database_url, attempt):
        # no statement cache: migrations may also be pointed at PgBouncer (transaction pooling)
        url, tls = server_verification(database_url)
        conn = await asyncpg.connect(url, timeout=connect_timeout, command_timeout=60, statement_cache_size=0,
                                     **({"ssl": tls} if tls is not None else {}))
        attempt.stage = "query"
        try:
            with attempt.on(conn):
                return await apply_migrations(conn)
        finally:
            await conn.close(timeout=connect_timeout)


async def _up_to_date(conn: Any, migrations: tuple[Migration, ...]) -> bool:
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return False
    recorded = {r["version"]: r["name"] for r in await conn.fetch("SELECT version, name FROM schema_migrations")}
    for m in migrations:
        if m.version in recorded and recorded[m.version] != m.name:
            raise DatabaseError(
                "schema_migrations disagrees with the code about a migration's name",
                operation="migrate",
                details={"version": m.version, "recorded": recorded[m.version], "expected": m.name},
            )
    newer = sorted(set(recorded) - {m.version for m in migrations})
    if newer:
        log.warning("database has migrations this code does not know: %s", newer)
    return all(m.version in recorded for m in migrations)


async def _apply_one(conn: Any, migration: Migration) -> bool:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        if await conn.fetchval("SELECT 1 FROM schema_migrations WHERE version = $1", migration.version):
            return False
        await conn.execute(migration.sql)
        await conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", migration.version, migration.name
        )
    log.info("applied migration %d (%s)", migration.version, migration.name)
    return True


def _check_sequence(migrations: tuple[Migration, ...]) -> None:
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)) or any(v < 1 for v in versions):
        raise ValueError(f"migration versions must be unique, positive and ascending: {versions}")
