"""The local JSON vault: the spec's file shape, versions, modes, atomicity, locking, backups."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import random
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.errors import KeyVaultError, SecretDisabledError, SecretNotFoundError, VaultMissingError
from shared.metrics import REGISTRY
from shared.vault.local import IMPLICIT_VERSION_NAMESPACE, LocalJsonVault, default_master_key_path
from shared.vault.sealing import MasterKeySource

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

# Verbatim from the spec's "Development Mode" section (the value is the spec's placeholder).
SPEC_EXAMPLE = """\
{
  "file-123": {
    "value": "base64-encoded-key",
    "content_type": "application/octet-stream",
    "enabled": true,
    "created_on": "2025-02-27T00:00:00Z",
    "expires_on": "2025-03-27T00:00:00Z"
  }
}
"""


def key_for(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "secrets"


@pytest.fixture
async def vault(folder: Path) -> LocalJsonVault:
    return await initialized(LocalJsonVault(folder, clock=Clock()))


async def initialized(vault: LocalJsonVault) -> LocalJsonVault:
    """A new vault, as the key service makes one (after checking that no key is recorded)."""
    await vault.initialize()
    return vault


def stored(folder: Path, name: str, data: dict[str, Any] | None = None) -> bytes:
    """The latest value of ``name`` in the file, opened with the vault's master key (beside the folder)."""
    entry = (data or read_json(folder))[name]
    master = MasterKeySource(default_master_key_path(folder)).load()
    assert master is not None
    return master.open(str(entry["value"]), name, str(entry["version"]))


def write_file(folder: Path, text: str) -> Path:
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / "secrets.json"
    path.write_text(text)
    return path


def listing(folder: Path, pattern: str) -> list[str]:
    return sorted(path.name for path in folder.glob(pattern))


def read_json(folder: Path, name: str = "secrets.json") -> dict[str, dict[str, object]]:
    data = json.loads((folder / name).read_text())
    assert isinstance(data, dict)
    return data


# --- the spec's file shape ----------------------------------------------------------------


async def test_spec_example_file_loads_as_is(folder: Path) -> None:
    write_file(folder, SPEC_EXAMPLE)
    vault = LocalJsonVault(folder)

    [props] = await vault.list_versions("file-123")

    assert props.name == "file-123"
    assert props.enabled is True
    assert props.content_type == "application/octet-stream"
    assert props.created_on == datetime(2025, 2, 27, tzinfo=UTC)
    assert props.expires_on == datetime(2025, 3, 27, tzinfo=UTC)
    assert props.version == uuid.uuid5(IMPLICIT_VERSION_NAMESPACE, "file-123\n2025-02-27T00:00:00Z").hex
    assert [p.version for p in await LocalJsonVault(folder).list_versions("file-123")] == [props.version]
    # The spec's placeholder is not base64: a clear error naming the entry, not a crash.
    with pytest.raises(KeyVaultError, match=r"file-123.*not base64"):
        await vault.get_secret("file-123")


async def test_spec_shape_with_a_real_key_returns_its_bytes(folder: Path) -> None:
    key = os.urandom(32)
    write_file(folder, SPEC_EXAMPLE.replace("base64-encoded-key", base64.b64encode(key).decode()))
    vault = LocalJsonVault(folder)

    latest = await vault.get_secret("file-123")
    exact = await vault.get_secret("file-123", latest.properties.version)

    assert latest.value == key
    assert exact == latest


async def test_rotating_a_spec_entry_keeps_the_shape_and_the_old_version(folder: Path) -> None:
    old_key, new_key = os.urandom(32), os.urandom(32)
    write_file(folder, SPEC_EXAMPLE.replace("base64-encoded-key", base64.b64encode(old_key).decode()))
    vault = LocalJsonVault(folder, clock=Clock())
    [old] = await vault.list_versions("file-123")

    new = await vault.set_secret("file-123", new_key)

    entry = read_json(folder)["file-123"]
    assert {"value", "content_type", "enabled", "created_on", "expires_on"} <= entry.keys()
    assert stored(folder, "file-123") == new_key
    assert entry["version"] == new.version
    assert list(entry["versions"]) == [old.version]
    assert (await vault.get_secret("file-123", old.version)).value == old_key
    assert (await vault.get_secret("file-123")).value == new_key


# --- operations -----------------------------------------------------------------------------


async def test_round_trip_versions_oldest_first(vault: LocalJsonVault, folder: Path) -> None:
    keys = [os.urandom(32) for _ in range(3)]
    expires = NOW + timedelta(days=30)
    stored = [await vault.set_secret("file-a", key, expires_on=expires) for key in keys]

    listed = await vault.list_versions("file-a")

    assert [p.version for p in listed] == [p.version for p in stored]
    assert all(len(p.version) == 32 and int(p.version, 16) >= 0 for p in listed)
    assert [p.created_on for p in listed] == sorted(p.created_on for p in listed)
    assert listed[0].expires_on == expires
    assert (await vault.get_secret("file-a")).value == keys[-1]
    for props, key in zip(stored, keys, strict=True):
        assert (await vault.get_secret("file-a", props.version)).value == key
    entry = read_json(folder)["file-a"]
    assert entry["expires_on"] == "2026-02-01T03:04:05Z"
    assert entry["created_on"] == "2026-01-02T03:04:08Z"


async def test_disabled_versions_are_refused(vault: LocalJsonVault) -> None:
    first = await vault.set_secret("file-a", os.urandom(32))
    second = await vault.set_secret("file-a", os.urandom(32))

    await vault.disable_version("file-a", first.version)

    with pytest.raises(SecretDisabledError):
        await vault.get_secret("file-a", first.version)
    assert (await vault.get_secret("file-a")).properties.version == second.version
    await vault.disable_version("file-a", second.version)
    with pytest.raises(SecretDisabledError):
        await vault.get_secret("file-a")
    assert [p.enabled for p in await vault.list_versions("file-a")] == [False, False]


async def test_unknown_names_and_versions(vault: LocalJsonVault) -> None:
    await vault.set_secret("file-a", os.urandom(32))

    with pytest.raises(SecretNotFoundError):
        await vault.get_secret("file-b")
    with pytest.raises(SecretNotFoundError):
        await vault.get_secret("file-a", uuid.uuid4().hex)
    with pytest.raises(SecretNotFoundError):
        await vault.disable_version("file-a", uuid.uuid4().hex)
    with pytest.raises(SecretNotFoundError):
        await vault.delete_secret("file-b")
    assert await vault.list_versions("file-b") == []


async def test_delete_removes_every_version(vault: LocalJsonVault, folder: Path) -> None:
    first = await vault.set_secret("file-a", os.urandom(32))
    await vault.set_secret("file-a", os.urandom(32))
    await vault.set_secret("file-b", os.urandom(32))

    await vault.delete_secret("file-a")

    assert list(read_json(folder)) == ["file-b"]
    assert await vault.list_versions("file-a") == []
    with pytest.raises(SecretNotFoundError):
        await vault.get_secret("file-a", first.version)


@pytest.mark.parametrize("name", ["", "file_a", "file/a", "file-a\n", "x" * 128])
async def test_invalid_names_are_refused(vault: LocalJsonVault, name: str) -> None:
    with pytest.raises(KeyVaultError, match="invalid secret name or version"):
        await vault.set_secret(name, os.urandom(32))


async def test_bad_values_and_naive_expiry_are_refused(vault: LocalJsonVault) -> None:
    with pytest.raises(KeyVaultError, match="non-empty bytes"):
        await vault.set_secret("file-a", b"")
    with pytest.raises(KeyVaultError, match="too large"):
        await vault.set_secret("file-a", b"x" * 20_000)
    with pytest.raises(KeyVaultError, match="timezone-aware"):
        await vault.set_secret("file-a", b"x" * 32, expires_on=datetime(2030, 1, 1))
    assert await vault.list_versions("file-a") == []


async def test_ping_checks_the_folder_and_the_file(vault: LocalJsonVault, folder: Path) -> None:
    with pytest.raises(VaultMissingError, match="does not exist"):  # initialized, no key yet: no file
        await vault.ping()
    await vault.set_secret("file-a", os.urandom(32))
    await vault.ping()
    assert mode(folder) == 0o700
    (folder / "secrets.json").write_text("{}")
    with pytest.raises(VaultMissingError, match="is empty"):
        await vault.ping()
    (folder / "secrets.json").write_text("{")
    with pytest.raises(KeyVaultError, match="not valid JSON"):
        await vault.ping()


def key_operations(outcome: str) -> float:
    labels = {"operation": "get_secret", "backend": "local", "outcome": outcome}
    return REGISTRY.get_sample_value("blobseal_key_operations_total", labels) or 0.0


async def test_metrics_are_recorded(vault: LocalJsonVault) -> None:
    before_ok, before_missing = key_operations("ok"), key_operations("SecretNotFoundError")
    await vault.set_secret("file-a", os.urandom(32))

    await vault.get_secret("file-a")
    with pytest.raises(SecretNotFoundError):
        await vault.get_secret("file-b")

    assert key_operations("ok") == before_ok + 1
    assert key_operations("SecretNotFoundError") == before_missing + 1


async def test_no_key_material_in_logs_or_errors(
    vault: LocalJsonVault, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = os.urandom(32)
    encoded = base64.b64encode(key).decode()
    caplog.set_level(logging.DEBUG)
    props = await vault.set_secret("file-a", key)
    await vault.disable_version("file-a", props.version)
    with pytest.raises(SecretDisabledError) as disabled:
        await vault.get_secret("file-a")
    text = (folder / "secrets.json").read_text()
    (folder / "secrets.json").write_text(text[:-5])
    with pytest.raises(KeyVaultError) as corrupt:
        await vault.get_secret("file-a")

    for shown in (caplog.text, repr(disabled.value), repr(corrupt.value), str(corrupt.value)):
        assert encoded not in shown
    assert corrupt.value.__cause__ is None  # the JSON error would carry the whole document


async def test_the_event_loop_runs_while_the_file_is_written(
    vault: LocalJsonVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(0.05)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    await vault.set_secret("file-a", os.urandom(32))
    task.cancel()
    assert ticks >= 5


async def test_parsed_file_is_reused_until_another_writer_changes_it(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parses = 0
    real_loads = json.loads

    def counting_loads(raw: str | bytes) -> object:
        nonlocal parses
        parses += 1
        return real_loads(raw)

    monkeypatch.setattr("shared.vault.jsonfile.json.loads", counting_loads)
    mine, other = [await initialized(LocalJsonVault(folder, clock=Clock())) for _ in range(2)]
    first = await mine.set_secret("file-a", key_for("a"))
    for _ in range(5):
        await mine.get_secret("file-a")
    await mine.set_secret("file-b", key_for("b"))
    assert parses == 0  # its own writes keep the parsed copy current

    second = await other.set_secret("file-a", key_for("a2"))  # as another process would
    assert parses == 1
    assert (await mine.get_secret("file-a")).properties.version == second.version
    assert [p.version for p in await mine.list_versions("file-a")] == [first.version, second.version]
    assert parses == 2


async def test_file_has_one_entry_per_line(vault: LocalJsonVault, folder: Path) -> None:
    for index in range(3):
        await vault.set_secret(f"file-{index}", key_for(str(index)))
    await vault.set_secret("file-1", key_for("again"))
    await vault.delete_secret("file-0")

    lines = (folder / "secrets.json").read_text().splitlines()

    assert lines[0] == "{" and lines[-1] == "}"
    assert [json.loads(line.rstrip(",").split(": ", 1)[0]) for line in lines[1:-1]] == ["file-1", "file-2"]
    assert [stored(folder, name) for name in ("file-1", "file-2")] == [key_for(key) for key in ("again", "2")]


# --- files on disk: modes, backups, corruption -----------------------------------------------


async def test_folder_0700_and_files_0600(vault: LocalJsonVault, folder: Path) -> None:
    for _ in range(3):
        await vault.set_secret("file-a", os.urandom(32))

    assert mode(folder) == 0o700
    files = listing(folder, "*")
    assert files == ["secrets.json", "secrets.json.bak.1", "secrets.json.bak.2", "secrets.json.lock"]
    for name in files:
        assert mode(folder / name) == 0o600, name


async def test_open_fixes_loose_modes(folder: Path) -> None:
    path = write_file(folder, "{}")
    os.chmod(folder, 0o755)  # noqa: S103 (the loose mode the vault must fix)
    os.chmod(path, 0o644)

    await LocalJsonVault(folder).list_versions("file-a")

    assert mode(folder) == 0o700
    assert mode(path) == 0o600


async def test_each_update_backs_up_the_previous_file(folder: Path) -> None:
    vault = await initialized(LocalJsonVault(folder, clock=Clock(), backups=3))
    states = []
    for index in range(5):
        await vault.set_secret(f"file-{index}", key_for(f"file-{index}"))
        states.append((folder / "secrets.json").read_bytes())

    backups = listing(folder, "secrets.json.bak.*")
    assert backups == ["secrets.json.bak.1", "secrets.json.bak.2", "secrets.json.bak.3"]
    for index in (1, 2, 3):
        content = (folder / f"secrets.json.bak.{index}").read_bytes()
        assert content == states[-1 - index]
        assert len(json.loads(content)) == 5 - index


async def test_corrupt_file_is_refused_and_left_alone(vault: LocalJsonVault, folder: Path) -> None:
    await vault.set_secret("file-a", os.urandom(32))
    await vault.set_secret("file-b", os.urandom(32))
    path = folder / "secrets.json"
    broken = path.read_bytes()[:-10]
    path.write_bytes(broken)

    for attempt in (lambda: vault.get_secret("file-a"), lambda: vault.set_secret("file-c", os.urandom(32))):
        with pytest.raises(KeyVaultError) as caught:
            await attempt()
        message = str(caught.value)
        assert str(path) in message
        assert "not valid JSON" in message
        assert "secrets.json.bak.1" in message
    assert path.read_bytes() == broken


@pytest.mark.parametrize("content", [b"", b"[]", b'{"file-a": "x"}', b"{}{}", b'{"a": "\xc3\x28"}'])
async def test_malformed_files_are_refused(folder: Path, content: bytes) -> None:
    write_file(folder, "")
    (folder / "secrets.json").write_bytes(content)
    with pytest.raises(KeyVaultError, match="refusing to use it") as caught:
        await LocalJsonVault(folder).list_versions("file-a")
    assert "no backup exists" in str(caught.value)


# --- several processes: a killed writer, concurrent writers ----------------------------------

# Child process: writes committed entries, then hangs at a chosen point of the next write,
# printing HANG so the parent can SIGKILL it exactly there.
HANGING_WRITER = """
import asyncio, os, sys, time
from pathlib import Path
from typing import Any
from shared.vault.local import LocalJsonVault

folder, where = Path(sys.argv[1]), sys.argv[2]
armed = False
real_write, real_replace, real_link = os.write, os.replace, os.link

def hang():
    print("HANG", flush=True)
    time.sleep(60)

def write(fd, data):
    if armed and where == "mid-write" and len(data) > 1:
        real_write(fd, bytes(data[: len(data) // 2]))
        hang()
    return real_write(fd, data)

def link(src, dst, **kw):
    real_link(src, dst, **kw)
    if armed and where == "after-backup":
        hang()

def replace(src, dst):
    if armed and where == "before-rename" and str(dst).endswith("secrets.json"):
        hang()
    return real_replace(src, dst)

os.write, os.replace, os.link = write, replace, link

async def main():
    global armed
    vault = LocalJsonVault(folder)
    await vault.initialize()
    for i in range(20):
        await vault.set_secret(f"file-{i}", bytes([i]) * 32)
        print(f"OK file-{i}", flush=True)
    armed = True
    await vault.set_secret("file-doomed", b"d" * 32)
    print("NOT KILLED", flush=True)

asyncio.run(main())
"""

# Child process: writes distinct entries forever (or `count` of them), acknowledging each.
LOOPING_WRITER = """
import asyncio, hashlib, sys
from pathlib import Path
from typing import Any
from shared.vault.local import LocalJsonVault

folder, prefix, count, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])

async def main():
    vault = LocalJsonVault(folder)
    await vault.initialize()
    print("READY", flush=True)
    while not go.exists():
        await asyncio.sleep(0.001)
    i = 0
    while count < 0 or i < count:
        name = f"file-{prefix}-{i}"
        await vault.set_secret(name, hashlib.sha256(name.encode()).digest())
        print("OK", name, flush=True)
        i += 1

asyncio.run(main())
"""


def spawn(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, cwd=REPO, env=env
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()


def read_acks(process: subprocess.Popen[str], until: str | None = None, limit: int | None = None) -> list[str]:
    assert process.stdout is not None
    acked: list[str] = []
    for line in process.stdout:
        if line.strip() == "READY":
            continue
        if line.strip() == until:
            break
        assert line.startswith("OK "), line
        acked.append(line.split()[1])
        if limit is not None and len(acked) >= limit:
            break
    return acked


def assert_holds(folder: Path, names: list[str], values: dict[str, bytes]) -> dict[str, dict[str, object]]:
    data = read_json(folder)  # parses: the kill left no partial file behind
    for name in names:
        assert stored(folder, name, data) == values[name], name
    return data


@pytest.mark.parametrize("where", ["mid-write", "after-backup", "before-rename"])
async def test_writer_killed_mid_update_loses_nothing_committed(
    folder: Path, where: str, processes: list[subprocess.Popen[str]]
) -> None:
    writer = spawn(HANGING_WRITER, str(folder), where)
    processes.append(writer)

    acked = read_acks(writer, until="HANG")
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=10)

    assert len(acked) == 20
    data = assert_holds(folder, acked, {f"file-{i}": bytes([i]) * 32 for i in range(20)})
    assert "file-doomed" not in data
    backups = listing(folder, "secrets.json.bak.*")
    assert backups
    assert all(len(read_json(folder, backup)) >= 17 for backup in backups)
    vault = LocalJsonVault(folder)
    await vault.set_secret("file-after", os.urandom(32))
    assert len(read_json(folder)) == 21
    assert listing(folder, ".*.tmp") == []  # the dead writer's temp files are cleaned up


def test_writer_killed_at_random_moments_loses_nothing_committed(
    folder: Path, processes: list[subprocess.Popen[str]]
) -> None:
    go = folder.parent / "go"
    go.touch()
    rng = random.Random(1234)
    acked: list[str] = []
    for round_ in range(3):
        writer = spawn(LOOPING_WRITER, str(folder), f"r{round_}", "-1", str(go))
        processes.append(writer)
        acked += read_acks(writer, limit=rng.randint(5, 40))
        time.sleep(rng.random() * 0.004)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=10)

        assert_holds(folder, acked, {name: key_for(name) for name in acked})


async def test_two_processes_writing_concurrently_lose_nothing(
    folder: Path, processes: list[subprocess.Popen[str]]
) -> None:
    go = folder.parent / "go"
    writers = [spawn(LOOPING_WRITER, str(folder), prefix, "200", str(go)) for prefix in ("p", "q")]
    processes.extend(writers)
    for writer in writers:  # both interpreters are up and polling for the start signal
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "READY"
    go.touch()

    acked = [read_acks(writer) for writer in writers]
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0]

    assert [len(names) for names in acked] == [200, 200]
    data = assert_holds(folder, acked[0] + acked[1], {name: key_for(name) for name in acked[0] + acked[1]})
    assert len(data) == 400
    vault = LocalJsonVault(folder)
    assert (await vault.get_secret("file-q-199")).value == key_for("file-q-199")


# --- fail closed: never a new empty vault by accident ----------------------------------------


def exists(path: Path) -> bool:
    return path.exists()


async def test_a_vault_that_was_never_initialized_creates_nothing(folder: Path) -> None:
    vault = LocalJsonVault(folder)
    for attempt in (lambda: vault.set_secret("file-a", os.urandom(32)), lambda: vault.get_secret("file-a"),
                    lambda: vault.list_versions("file-a"), vault.ping):
        with pytest.raises(VaultMissingError, match="does not exist"):
            await attempt()
    assert not exists(folder)  # not even the folder


async def test_an_empty_file_takes_no_first_key_unless_initialized(folder: Path) -> None:
    write_file(folder, "{}")
    vault = LocalJsonVault(folder)
    with pytest.raises(VaultMissingError, match="is empty"):
        await vault.set_secret("file-a", os.urandom(32))
    assert read_json(folder) == {}
    await vault.initialize()
    await vault.set_secret("file-a", os.urandom(32))
    assert list(read_json(folder)) == ["file-a"]


async def test_a_deleted_vault_file_is_missing_not_new(vault: LocalJsonVault, folder: Path) -> None:
    await vault.set_secret("file-a", os.urandom(32))
    saved = (folder / "secrets.json").read_bytes()
    (folder / "secrets.json").unlink()
    for attempt in (lambda: vault.set_secret("file-b", os.urandom(32)), lambda: vault.get_secret("file-a"),
                    vault.ping):
        with pytest.raises(VaultMissingError):
            await attempt()
    assert not exists(folder / "secrets.json")  # no new, empty vault took its place
    (folder / "secrets.json").write_bytes(saved)  # the operator restores it
    assert len((await vault.get_secret("file-a")).value) == 32
    await vault.set_secret("file-b", os.urandom(32))
