"""Attacks on the key hierarchy by a database writer (docs/THREATS.md, "database writer"), each refused.

The attacker can write any row of PostgreSQL, read (and in some tests write) storage, and holds the
KEK's *public* key: with Azure's RSA KEK, anyone can wrap a key of their own that the vault would
unwrap for the app. The stack is real (Azurite, PostgreSQL, the local vault for file-key secrets) and
the KEK and signing key are Azure Key Vault keys reached through the real SDK on the loopback Key
Vault stand-in. Every test asserts that the attack fails (nothing of the attacker's is used or
served, the vault never unwrapped the attacker's bytes, the refusal is counted) *and* that the file
stays readable by the service.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from localinfra.azurite import Azurite
from shared.bootstrap import Services
from shared.crypto.attest import es256_sign, intermediate_statement
from shared.crypto.keywrap import wrap_file_key
from shared.crypto.stream import Encryptor, decrypt
from shared.errors import IntegrityError, KeyIntegrityError
from shared.metrics import REGISTRY
from tests.integration.service_fixtures import http_download, read_blob, upload
from tests.support import KeyVaultServer
from tests.support.keyvault_server import key_adapters
from tests.support.stack import StackFactory, download

pytestmark = [pytest.mark.postgres, pytest.mark.azurite]

MODES = {  # the two ways a deployment reads envelope rows: envelope mode, and secret mode with the KEK deployed
    "envelope": {"KEY_MODE": "envelope", "KEY_CUSTODIES": "secret,envelope"},
    "secret, KEK deployed": {"KEY_MODE": "secret", "KEY_CUSTODIES": "secret,envelope"},
}


@pytest.fixture
def vault_server(keyvault_server: KeyVaultServer) -> KeyVaultServer:
    return keyvault_server


@pytest.fixture(params=list(MODES))
async def stack(request: pytest.FixtureRequest, make_stack: StackFactory,
                vault_server: KeyVaultServer) -> Services:
    kek, signer = await key_adapters(vault_server)
    return await make_stack(kek=kek, signer=signer, **MODES[request.param])


def refusals(reason: str) -> float:
    return REGISTRY.get_sample_value("blobseal_key_integrity_failures_total", {"reason": reason}) or 0.0


async def ingest(stack: Services, azurite: Azurite, data: bytes) -> uuid.UUID:
    name = f"{uuid.uuid4()}.bin"
    await upload(azurite, stack.settings.ingest_container, name, data)
    outcome = await stack.files.encrypt_ingest_blob(name)
    assert outcome.status == "encrypted" and outcome.file_id is not None
    return outcome.file_id


@dataclass
class Forgery:
    """What the attacker made: an intermediate key of its own (wrapped with the KEK's public key) and a file key."""

    intermediate_id: uuid.UUID
    intermediate: bytes
    file_key: bytes


async def plant_intermediate(stack: Services, server: KeyVaultServer, signing: str) -> Forgery:
    """An ``intermediate_keys`` row as a database writer makes one, signed in the way ``signing`` says."""
    public = server.public_key("blobseal-kek")
    assert isinstance(public, rsa.RSAPublicKey)
    kek_reference = await stack.intermediates.kek.current()
    forgery = Forgery(uuid.uuid4(), os.urandom(32), os.urandom(32))
    wrapped = public.encrypt(forgery.intermediate, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
    statement = intermediate_statement(forgery.intermediate_id, kek_reference, wrapped)
    genuine_key = await stack.intermediates.signer.current()
    attacker = ec.generate_private_key(ec.SECP256R1())
    key_and_signature: dict[str, tuple[Any, Any]] = {
        "unsigned": (None, None),
        "a garbage signature": (genuine_key, os.urandom(64)),
        "signed by the attacker's key, named as the service's": (genuine_key, es256_sign(attacker, statement)),
        "signed by the attacker's own key": ("attacker-key/1", es256_sign(attacker, statement)),
        "a genuine signature of another row": await genuine_signature(stack),
    }
    signing_key, signature = key_and_signature[signing]
    async with stack.db.connection() as conn:
        await conn.execute(
            "INSERT INTO intermediate_keys (id, kek_reference, wrapped_key, created_by, created_at, use_until, "
            "max_files, signing_key, signature) VALUES ($1, $2, $3, 'attacker', now(), now() + interval '1 hour', "
            "1, $4, $5)", forgery.intermediate_id, kek_reference, wrapped, signing_key, signature)
    return forgery


async def genuine_signature(stack: Services) -> tuple[str, bytes]:
    await stack.intermediates.for_new_key()  # the service's own, signed row
    async with stack.db.connection() as conn:
        row = await conn.fetchrow("SELECT signing_key, signature FROM intermediate_keys WHERE created_by <> 'attacker' "
                                  "AND signature IS NOT NULL LIMIT 1")
    return row["signing_key"], row["signature"]


async def plant_pending(stack: Services, file_id: uuid.UUID, forgery: Forgery) -> str:
    """A ``pending`` key row for the file, wrapped under the attacker's intermediate key (the associated data
    is public: file id, intermediate id, key reference)."""
    reference = f"file-{file_id}/env-{os.urandom(12).hex()}"
    wrapped = wrap_file_key(forgery.intermediate, forgery.file_key, file_id=file_id,
                            intermediate_id=forgery.intermediate_id, key_reference=reference)
    async with stack.db.connection() as conn:
        await conn.execute(
            "INSERT INTO file_keys (file_id, key_reference, created_at, expires_at, state, custody, wrapped_key, "
            "intermediate_id) VALUES ($1, $2, now(), now() + interval '30 days', 'pending', 'envelope', $3, $4)",
            file_id, reference, wrapped, forgery.intermediate_id)
    return reference


@pytest.mark.parametrize("signing", ["unsigned", "a garbage signature",
                                     "signed by the attacker's key, named as the service's",
                                     "signed by the attacker's own key", "a genuine signature of another row"])
async def test_a_planted_pending_key_is_never_used_by_the_reconciler(
        stack: Services, azurite: Azurite, vault_server: KeyVaultServer, signing: str) -> None:
    """Observed 1-3: a forged intermediate row and a pending key under it; the stalled-rotation repair used
    to re-encrypt the file under the attacker's key."""
    data = os.urandom(150_000)
    victim = await ingest(stack, azurite, data)
    forgery = await plant_intermediate(stack, vault_server, signing)
    planted = await plant_pending(stack, victim, forgery)
    refused_before = sum(refusals(r) for r in ("intermediate_unsigned", "intermediate_forged"))

    report = await stack.maintenance.reconcile()  # a pending key without a claim: a stalled rotation, resumed

    assert report.repairs.get("stalled_rotation") == 1 and report.failed == 0
    record = await stack.files.encrypted_file(str(victim))
    assert record.key_reference != planted  # rotated under a key of the service's own
    stored = await read_blob(azurite, stack.settings.protected_container, str(record.protected_blob))
    with pytest.raises(IntegrityError):  # the attacker's file key opens nothing of it
        decrypt(forgery.file_key, stored)
    forged_wrapped = await wrapped_of(stack, forgery.intermediate_id)
    assert forged_wrapped not in vault_server.unwrapped  # refused before any unwrap: the vault never opened it
    assert sum(refusals(r) for r in ("intermediate_unsigned", "intermediate_forged")) == refused_before + 1
    async with stack.db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM file_keys WHERE key_reference = $1", planted) == 0
    assert await download(stack, victim) == data


async def wrapped_of(stack: Services, intermediate_id: uuid.UUID) -> bytes:
    async with stack.db.connection() as conn:
        return bytes(await conn.fetchval("SELECT wrapped_key FROM intermediate_keys WHERE id = $1", intermediate_id))


async def test_forged_content_under_a_forged_key_is_never_served(
        stack: Services, make_stack: StackFactory, azurite: Azurite, vault_server: KeyVaultServer) -> None:
    """Observed 2, with storage write access too: a blob of the attacker's, its key row pointed at it."""
    data = os.urandom(20_000)
    victim = await ingest(stack, azurite, data)
    forgery = await plant_intermediate(stack, vault_server, "unsigned")
    reference = await plant_pending(stack, victim, forgery)
    blob = f"{victim}/forged.bseal"
    forged = Encryptor(forgery.file_key, file_id=victim, key_reference=reference, block_size=65536)
    await upload(azurite, stack.settings.protected_container, blob,
                 bytes(forged.update(b"forged content") + forged.finalize()))
    async with stack.db.transaction() as conn:  # the file now points at the forged blob and key
        original = await conn.fetchrow("SELECT key_reference, protected_blob, protected_etag, size, block_size "
                                        "FROM files WHERE file_id = $1", victim)
        await conn.execute("UPDATE file_keys SET state = 'retired', retired_at = now() WHERE file_id = $1 "
                           "AND state = 'active'", victim)
        await conn.execute("UPDATE file_keys SET state = 'active' WHERE key_reference = $1", reference)
        await conn.execute("UPDATE files SET key_reference = $2, protected_blob = $3, protected_etag = NULL, size = 14 "
                           "WHERE file_id = $1", victim, reference, blob)
    fresh = await sibling(make_stack, stack)  # an instance that has read nothing yet

    status, _, body = await http_download(fresh, str(victim))

    assert status == 500 and b"forged content" not in body
    assert b"KeyIntegrityError" in body
    with pytest.raises(KeyIntegrityError):
        await download(fresh, victim)
    async with stack.db.transaction() as conn:  # the operator restores the rows: the genuine file is there
        await conn.execute("DELETE FROM file_keys WHERE key_reference = $1", reference)
        await conn.execute("UPDATE file_keys SET state = 'active', retired_at = NULL WHERE file_id = $1", victim)
        await conn.execute("UPDATE files SET key_reference = $2, protected_blob = $3, protected_etag = $4, "
                           "size = $5, block_size = $6 WHERE file_id = $1", victim, *original.values())
    assert await download(fresh, victim) == data


async def sibling(make_stack: StackFactory, stack: Services, **overrides: str) -> Services:
    """Another instance of the same deployment (its own caches), on the same containers, database and keys."""
    settings = stack.settings
    same = {"KEY_MODE": settings.key_mode, "KEY_CUSTODIES": settings.key_custodies,
            "INGEST_CONTAINER": settings.ingest_container, "PROTECTED_CONTAINER": settings.protected_container}
    return await make_stack(kek=stack.intermediates.kek, signer=stack.intermediates.signer, **{**same, **overrides})


# --- rows moved, custodies switched: refused, and the file stays readable --------------------------------------


async def genuine_row(stack: Services, file_id: uuid.UUID) -> dict[str, Any]:
    async with stack.db.connection() as conn:
        return dict(await conn.fetchrow("SELECT * FROM file_keys WHERE file_id = $1 AND state = 'active'", file_id))


async def plant_row(stack: Services, file_id: uuid.UUID, reference: str, custody: str, *, vault_reference: Any = None,
                    wrapped_key: Any = None, intermediate_id: Any = None) -> None:
    async with stack.db.connection() as conn:
        await conn.execute(
            "INSERT INTO file_keys (file_id, key_reference, created_at, expires_at, state, custody, vault_reference, "
            "wrapped_key, intermediate_id) VALUES ($1, $2, now(), now() + interval '30 days', 'pending', $3, $4, $5, "
            "$6)", file_id, reference, custody, vault_reference, wrapped_key, intermediate_id)


async def test_a_pending_row_pointed_at_another_files_key_is_dropped_never_used_or_disabled(
        stack: Services, azurite: Azurite) -> None:
    """A key moved to another file: the victim's pending row names the donor's secret, or holds the donor's
    wrapped key. Rotation drops it (never disabling the donor's key) and makes a key of its own."""
    victim_data, donor_data = os.urandom(30_000), os.urandom(30_000)
    victim, donor = await ingest(stack, azurite, victim_data), await ingest(stack, azurite, donor_data)
    source = await genuine_row(stack, donor)
    before = refusals("secret_of_another_file") + refusals("wrapped_key_moved")
    if source["custody"] == "secret":  # the donor's vault secret, named by the victim's row
        await plant_row(stack, victim, f"file-{victim}/{os.urandom(16).hex()}", "secret",
                        vault_reference=source["vault_reference"] or source["key_reference"])
    else:  # the donor's wrapped key and intermediate key, in the victim's row
        await plant_row(stack, victim, f"file-{victim}/env-{os.urandom(12).hex()}", "envelope",
                        wrapped_key=source["wrapped_key"], intermediate_id=source["intermediate_id"])

    report = await stack.maintenance.reconcile()

    assert report.repairs.get("stalled_rotation") == 1 and report.failed == 0
    assert refusals("secret_of_another_file") + refusals("wrapped_key_moved") == before + 1
    assert (await genuine_row(stack, victim))["key_reference"] != source["key_reference"]
    assert await download(stack, victim) == victim_data
    assert await download(stack, donor) == donor_data  # the donor's key was not disabled on the way


async def test_a_custody_switched_in_a_row_is_refused(stack: Services, azurite: Azurite) -> None:
    """The victim's own genuine row, its custody name switched: it no longer proves itself, and is not followed."""
    data = os.urandom(10_000)
    victim = await ingest(stack, azurite, data)
    row = await genuine_row(stack, victim)
    reference = f"file-{victim}/{os.urandom(16).hex()}"
    if row["custody"] == "envelope":  # an envelope key read as a vault secret: its reference is no secret version
        await plant_row(stack, victim, f"file-{victim}/env-{os.urandom(12).hex()}", "secret")
    else:  # a secret read as an envelope key: no wrapped key to open
        await plant_row(stack, victim, reference, "envelope", wrapped_key=os.urandom(60),
                        intermediate_id=(await stack.intermediates.for_new_key())[0])
    report = await stack.maintenance.reconcile()
    assert report.repairs.get("stalled_rotation") == 1 and report.failed == 0
    assert await download(stack, victim) == data


async def test_a_custody_the_deployment_does_not_allow_is_refused_before_anything_is_read(
        make_stack: StackFactory, azurite: Azurite, vault_server: KeyVaultServer) -> None:
    """A secret-only deployment (KEY_CUSTODIES=secret): an envelope row, however well made, is not followed."""
    kek, signer = await key_adapters(vault_server)
    writer = await make_stack(kek=kek, signer=signer, KEY_MODE="envelope", KEY_CUSTODIES="secret,envelope")
    envelope_file = await ingest(writer, azurite, b"wrapped")  # a genuine envelope row, signed and all
    secret_only = await sibling(make_stack, writer, KEY_MODE="secret", KEY_CUSTODIES="secret")
    before, unwraps = refusals("custody_not_allowed"), len(vault_server.unwrapped)
    with pytest.raises(KeyIntegrityError, match="does not allow"):
        await download(secret_only, envelope_file)
    assert refusals("custody_not_allowed") == before + 1 and len(vault_server.unwrapped) == unwraps
    assert await download(writer, envelope_file) == b"wrapped"  # where envelope keys are allowed, it reads
