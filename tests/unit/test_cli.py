"""The format command line: in process (``main``) with real files and a real pipe on stdin, and
as a subprocess where the process itself is what is tested (start-up, imports, a terminal)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.cli.io import Progress
from shared.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def subprocess_cli(*args: str, stdin: bytes | None = None, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], input=stdin, capture_output=True,
                          cwd=cwd, env=env, timeout=60, check=False)


@contextlib.contextmanager
def piped_stdin(data: bytes) -> Iterator[io.TextIOWrapper]:
    """A real pipe as stdin (not seekable, like a shell pipe), fed by a thread."""
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as sink:
            sink.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    with io.TextIOWrapper(os.fdopen(read_fd, "rb")) as stdin:
        yield stdin
    writer.join()


def cli(*args: str, stdin: bytes | None = None, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """``main`` in this process, with the exit code, stdout and stderr a subprocess would give."""
    stdout, stderr = io.TextIOWrapper(io.BytesIO()), io.StringIO()
    saved = sys.stdin, sys.stdout, sys.stderr
    previous = Path.cwd()
    with contextlib.ExitStack() as stack:
        sys.stdin = stack.enter_context(piped_stdin(stdin or b""))
        sys.stdout, sys.stderr = stdout, stderr
        os.chdir(cwd)
        try:
            code = main(list(args))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            os.chdir(previous)
            sys.stdin, sys.stdout, sys.stderr = saved
    stdout.flush()
    output = stdout.buffer.getvalue()  # type: ignore[attr-defined]
    return subprocess.CompletedProcess(list(args), code, output, stderr.getvalue().encode())


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    (tmp_path / "key").write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    (tmp_path / "plain").write_bytes(os.urandom(300_000))
    return tmp_path


def encrypt_sample(work: Path, file_id: str | None = None) -> str:
    file_id = file_id or str(uuid.uuid4())
    result = cli("encrypt", "--key-file", "key", "--file-id", file_id, "--key-reference", f"file-{file_id}/v1",
                 "--block-size", "4096", "plain", "enc", cwd=work)
    assert result.returncode == 0, result.stderr
    return file_id


def assert_one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode != 0
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_encrypt_decrypt_round_trip(work: Path) -> None:
    encrypt_sample(work)
    assert cli("decrypt", "--key-file", "key", "enc", "out", cwd=work).returncode == 0
    assert (work / "out").read_bytes() == (work / "plain").read_bytes()
    assert (work / "plain").read_bytes()[:4096] not in (work / "enc").read_bytes()


def test_stdin_stdout(work: Path) -> None:
    plain = (work / "plain").read_bytes()
    sealed = cli("encrypt", "--key-file", "key", "--file-id", str(uuid.uuid4()), "-", "-", stdin=plain, cwd=work)
    opened = cli("decrypt", "--key-file", "key", "-", "-", stdin=sealed.stdout, cwd=work)
    assert opened.returncode == 0 and opened.stdout == plain


@pytest.mark.parametrize("offset,length", [(0, 1), (4095, 2), (4096, 4096), (123_456, 10_000), (299_999, None)])
@pytest.mark.parametrize("source", ["file", "pipe"])
def test_decrypt_range(work: Path, offset: int, length: int | None, source: str) -> None:
    encrypt_sample(work)
    plain = (work / "plain").read_bytes()
    extra = ["--offset", str(offset)] + (["--length", str(length)] if length else [])
    if source == "file":
        result = cli("decrypt", "--key-file", "key", *extra, "enc", "-", cwd=work)
    else:
        result = cli("decrypt", "--key-file", "key", *extra, "-", "-", stdin=(work / "enc").read_bytes(), cwd=work)
    assert result.returncode == 0, result.stderr
    assert result.stdout == plain[offset : offset + length if length else None]


@pytest.mark.parametrize("extra", [[], ["--offset", "5000", "--length", "100"]], ids=["whole", "range"])
def test_decrypt_with_file_id_refuses_another_files_blob(work: Path, extra: list[str]) -> None:
    file_id = encrypt_sample(work)  # the key opens it: only the header says whose file it is
    other = str(uuid.uuid4())
    refused = cli("decrypt", "--key-file", "key", "--file-id", other, *extra, "enc", "out", cwd=work)
    assert "file id in header does not match" in assert_one_line_error(refused)
    assert not (work / "out").exists()  # a refused decrypt leaves no output
    accepted = cli("decrypt", "--key-file", "key", "--file-id", file_id, *extra, "enc", "out", cwd=work)
    assert accepted.returncode == 0, accepted.stderr
    plain = (work / "plain").read_bytes()
    assert (work / "out").read_bytes() == (plain[5000:5100] if extra else plain)


def test_inspect_prints_header_and_sizes_without_key(work: Path) -> None:
    file_id = encrypt_sample(work)
    result = cli("inspect", "enc", cwd=work)
    info = json.loads(result.stdout)
    assert info["format_version"] == 1 and info["file_id"] == file_id and info["block_size"] == 4096
    assert info["plaintext_size"] == 300_000 and info["key_reference"] == f"file-{file_id}/v1"
    key_text = (work / "key").read_text().strip()
    assert key_text not in result.stdout.decode()
    piped = cli("inspect", "-", stdin=(work / "enc").read_bytes(), cwd=work)
    assert json.loads(piped.stdout) == info


def test_tampered_file_fails_and_leaves_no_output(work: Path) -> None:
    encrypt_sample(work)
    data = bytearray((work / "enc").read_bytes())
    data[200_000] ^= 1
    (work / "bad").write_bytes(data)
    result = cli("decrypt", "--key-file", "key", "bad", "out", cwd=work)
    assert "authentication failed" in assert_one_line_error(result)
    assert sorted(p.name for p in work.iterdir()) == ["bad", "enc", "key", "plain"]


def test_wrong_key_refused(work: Path) -> None:
    encrypt_sample(work)
    (work / "other").write_text(base64.b64encode(os.urandom(32)).decode())
    line = assert_one_line_error(cli("decrypt", "--key-file", "other", "enc", "out", cwd=work))
    assert "wrong key" in line and not (work / "out").exists()


@pytest.mark.parametrize("args,needle", [
    (["decrypt", "--key-file", "plain", "enc", "out"], "a key file holds one base64 key"),
    (["decrypt", "--key-file", "enc.txt", "enc", "out"], "not base64"),
    (["decrypt", "--key-file", "short", "enc", "out"], "32-byte key"),
    (["decrypt", "--key-file", "key", "missing", "out"], "No such file"),
    (["decrypt", "--key-file", "key", "plain", "out"], "not a blobseal file"),
    (["decrypt", "--key-file", "key", "--offset", "-1", "enc", "out"], "--offset"),
    (["decrypt", "--key-file", "key", "--offset", "300000", "enc", "out"], "beyond the end"),
    (["encrypt", "--key-file", "key", "--file-id", "nope", "plain", "out"], "not a UUID"),
    (["encrypt", "--key-file", "key", "--file-id", str(uuid.UUID(int=1)), "--block-size", "0", "plain", "out"],
     "block size"),
    (["inspect", "plain"], "not a blobseal file"),
    (["frobnicate"], "invalid choice"),
    (["rotate", "--due", "--limit", "-5"], "from 1 to 1,000,000, got '-5'"),
    (["rotate", "--due", "--limit", "0"], "from 1 to 1,000,000, got '0'"),  # not silently the default
    (["list", "--limit", "many"], "from 1 to 1,000, got 'many'"),
    (["audit", "--limit", "10001"], "from 1 to 10,000"),
    (["migrate-keys", "--to", "secret", "--batch", "0"], "--batch: must be a whole number"),
])
def test_bad_input_gives_one_line_and_nonzero(work: Path, args: list[str], needle: str) -> None:
    encrypt_sample(work)
    (work / "short").write_text(base64.b64encode(b"x" * 16).decode())
    (work / "enc.txt").write_text("not base64 at all!")
    line = assert_one_line_error(cli(*args, cwd=work))
    assert needle in line
    assert not (work / "out").exists()
    assert (work / "key").read_text().strip() not in line


def test_progress_is_shown_on_a_terminal_and_ends_at_100_percent(capsys: pytest.CaptureFixture[str]) -> None:
    shown = Progress(1000, "decrypt", enabled=True)
    shown.advance(400)
    shown.advance(570)  # 97% of the input: the rest is what the format adds (header, tags)
    shown.close()
    err = capsys.readouterr().err
    assert "decrypt" in err and "100%" in err and "97%" not in err.rsplit("\r", 1)[-1]
    hidden = Progress(1000, "decrypt", enabled=False)
    hidden.advance(500)
    hidden.close()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("make,needle", [
    (lambda d: str(d / "huge"), "a key file holds one base64 key"),
    (lambda d: "/dev/zero", "not a regular file"),
    (lambda d: str(d), "not a regular file"),
])
def test_key_files_that_are_not_key_files_are_refused_in_one_line(work: Path, make: Any, needle: str) -> None:
    (work / "huge").write_bytes(b"A" * 5000)
    line = assert_one_line_error(cli("decrypt", "--key-file", make(work), "plain", "out", cwd=work))
    assert needle in line


def test_a_fifo_given_by_name_is_refused(work: Path) -> None:
    os.mkfifo(work / "pipe")
    line = assert_one_line_error(cli("inspect", "pipe", cwd=work))
    assert "not a regular file" in line


def test_a_closed_pipe_is_quiet(work: Path) -> None:
    encrypt_sample(work)
    shell = f"{sys.executable} -m shared.cli decrypt --key-file key enc - | head -c 10 > /dev/null"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", shell], cwd=work, capture_output=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert result.stderr == b"" and result.returncode in (0, 141)


def test_errors_do_not_name_internal_operations(work: Path) -> None:
    line = assert_one_line_error(cli("inspect", "plain", cwd=work))
    assert line == "blobseal: error: not a blobseal file"


def test_no_progress_when_stderr_is_not_a_terminal(work: Path) -> None:
    result = subprocess_cli("encrypt", "--key-file", "key", "--file-id", str(uuid.uuid4()), "plain", "enc", cwd=work)
    assert result.returncode == 0 and result.stderr == b""


def test_a_real_process_round_trips_through_pipes(work: Path) -> None:
    plain = (work / "plain").read_bytes()
    sealed = subprocess_cli("encrypt", "--key-file", "key", "--file-id", str(uuid.uuid4()), "-", "-", stdin=plain,
                            cwd=work)
    opened = subprocess_cli("decrypt", "--key-file", "key", "-", "-", stdin=sealed.stdout, cwd=work)
    assert sealed.returncode == 0 and opened.returncode == 0 and opened.stdout == plain
    failed = subprocess_cli("inspect", "plain", cwd=work)
    assert failed.returncode == 1 and failed.stderr.decode().count("\n") == 1


def test_the_format_commands_load_no_azure_sdk_or_database_driver(work: Path) -> None:
    encrypt_sample(work)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "shared.cli", "inspect", "enc"],
                            capture_output=True, cwd=work, env=env, timeout=60, check=True)
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.decode().splitlines()]
    assert "shared.crypto.format" in imported
    heavy = [name for name in imported if name.split(".")[0] in ("azure", "asyncpg", "aiohttp", "cryptography")]
    assert heavy == []  # inspect needs no key: not even cryptography


def test_the_blobseal_command_is_installed_beside_the_interpreter(work: Path) -> None:
    command = Path(sys.executable).parent / "blobseal"  # `make install`: pip install -e .
    encrypt_sample(work)
    result = subprocess.run([str(command), "inspect", "enc"], cwd=work, capture_output=True, timeout=60, check=False)
    assert result.returncode == 0 and json.loads(result.stdout)["plaintext_size"] == 300_000
