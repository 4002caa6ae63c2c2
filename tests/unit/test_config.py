"""Settings: defaults, parsing, one error naming every problem, secrets kept out of repr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.config import Settings, redact_url, render_default, specs
from shared.errors import ConfigError


def test_defaults_match_the_spec() -> None:
    s = Settings.from_env({})
    assert (s.encryption_enabled, s.encryption_algorithm, s.key_rotation_days, s.chunk_size_mb) == (
        True, "AES-256-GCM", 30, 5)
    assert (s.key_vault_enabled, s.key_vault_mode, s.key_vault_cache_enabled, s.key_vault_cache_minutes) == (
        True, "local", True, 60)
    assert s.key_vault_local_path == Path("secrets")
    assert s.chunk_size == 5 * 1024 * 1024 and s.block_size == 64 * 1024
    assert (s.ingest_container, s.protected_container, s.keep_plaintext) == ("ingest", "protected", False)


def test_values_are_parsed() -> None:
    s = Settings.from_env({
        "ENCRYPTION_ENABLED": "false", "KEY_VAULT_ENABLED": "no", "ENCRYPTION_KEY_ROTATION_DAYS": " 7 ",
        "ENCRYPTION_CHUNK_SIZE_MB": "8", "KEY_VAULT_CACHE_ENABLED": "0", "KEY_VAULT_LOCAL_PATH": "/tmp/v",
        "DATABASE_URL": "postgresql://u:p@db:5432/x", "KEEP_PLAINTEXT": "true",
    })
    assert (s.encryption_enabled, s.key_vault_enabled, s.key_rotation_days, s.chunk_size_mb) == (False, False, 7, 8)
    assert (s.key_vault_cache_enabled, s.key_vault_local_path, s.keep_plaintext) == (False, Path("/tmp/v"), True)


def test_one_error_names_every_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({
            "ENCRYPTION_ALGORITHM": "AES-128-CBC", "ENCRYPTION_KEY_ROTATION_DAYS": "soon",
            "ENCRYPTION_CHUNK_SIZE_MB": "0", "KEY_VAULT_MODE": "cloud", "KEY_VAULT_CACHE_ENABLED": "maybe",
            "DATABASE_URL": "mysql://root:hunter2@db/x", "INGEST_CONTAINER": "Bad_Name",
        })
    problems = caught.value.problems
    for name in ("ENCRYPTION_ALGORITHM", "ENCRYPTION_KEY_ROTATION_DAYS", "ENCRYPTION_CHUNK_SIZE_MB",
                 "KEY_VAULT_MODE", "KEY_VAULT_CACHE_ENABLED", "DATABASE_URL", "INGEST_CONTAINER"):
        assert any(p.startswith(name) for p in problems), name
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("env,needle", [
    ({"KEY_VAULT_ENABLED": "false"}, "ENCRYPTION_ENABLED=true needs KEY_VAULT_ENABLED=true"),
    ({"KEY_VAULT_MODE": "azure"}, "KEY_VAULT_URL is required"),
    ({"KEY_VAULT_MODE": "azure", "KEY_VAULT_URL": "http://vault"}, "https://"),
    ({"KEY_VAULT_MODE": "azure", "KEY_VAULT_URL": "https://v.vault.azure.net", "KEY_VAULT_CLIENT_SECRET": "s"},
     "KEY_VAULT_TENANT_ID is required"),
    ({"INGEST_CONTAINER": "same", "PROTECTED_CONTAINER": "same"}, "must differ"),
    ({"ROTATION_SCHEDULE": "hourly"}, "NCRONTAB"),
    ({"KEY_MODE": "kms"}, "KEY_MODE must be one of secret, envelope"),
    ({"KEY_VAULT_KEK_NAME": "kek/1"}, "KEY_VAULT_KEK_NAME must be 1-127 letters"),
    ({"ENVELOPE_INTERMEDIATE_MAX_FILES": "0"}, "ENVELOPE_INTERMEDIATE_MAX_FILES must be from 1"),
])
def test_contradictions_fail_at_start(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        Settings.from_env(env)


def test_azure_mode_with_managed_identity_is_valid() -> None:
    s = Settings.from_env({"KEY_VAULT_MODE": "azure", "KEY_VAULT_URL": "https://v.vault.azure.net/"})
    assert s.key_vault_client_secret == ""


def test_secrets_stay_out_of_repr() -> None:
    s = Settings.from_env({
        "KEY_VAULT_MODE": "azure", "KEY_VAULT_URL": "https://v.vault.azure.net", "KEY_VAULT_TENANT_ID": "t",
        "KEY_VAULT_CLIENT_ID": "c", "KEY_VAULT_CLIENT_SECRET": "topsecret", "DATABASE_URL": "postgresql://u:pw1@h/d",
        "DataStorage": "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=abc123==",
    })
    text = repr(s)
    for secret in ("topsecret", "pw1", "abc123"):
        assert secret not in text
    assert redact_url(s.database_url) == "postgresql://u:***@h/d"


def test_redact_url_leaves_passwordless_urls() -> None:
    assert redact_url("postgresql://postgres@127.0.0.1:5432/postgres") == "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.mark.parametrize("url", [
    "postgresql://u@h/d?password=hunter2", "postgresql://u@h/d?sslmode=require&PassWord=hunter2&x=1",
    "postgresql://u:hunter2@h/d?sslpassword=hunter2", "postgresql://u@[bad/d?password=hunter2",
])
def test_a_password_anywhere_in_the_url_is_redacted(url: str) -> None:
    assert "hunter2" not in redact_url(url)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"DATABASE_URL": url.replace("postgresql", "mysql")})
    assert "hunter2" not in str(caught.value)


def test_identity_based_storage_connection() -> None:
    s = Settings.from_env({"DataStorage__blobServiceUri": "https://acct.blob.core.windows.net"})
    assert (s.data_storage_connection, s.data_storage_blob_uri) == ("", "https://acct.blob.core.windows.net")


def test_readme_table_and_example_file_are_rendered_from_the_declarations() -> None:
    from scripts.settings_docs import EXAMPLE, README, example_file, readme_with_table

    assert README.read_text() == readme_with_table(README.read_text()), "README settings table: run `make docs`"
    assert EXAMPLE.read_text() == example_file(), "local.settings.json.example: run `make docs`"


def test_each_default_is_written_once_and_everything_follows_it() -> None:
    from scripts.settings_docs import EXAMPLE, readme_table

    defaults, table = Settings.from_env({}), readme_table()
    example = json.loads(EXAMPLE.read_text())["Values"]
    for f, spec in specs():
        assert getattr(defaults, f.name) == f.default, spec.env  # what the app uses when unset
        rendered = render_default(f.default)
        row = next(line for line in table.splitlines() if line.startswith(f"| `{spec.env}`"))
        cell = (f"`{rendered}`" if rendered else "") + (f" (example: `{spec.example}`)" if spec.example else "")
        assert row.split("|")[2].strip() == cell.strip(), spec.env
        if spec.in_example:
            assert example[spec.env] == (spec.example if spec.example is not None else rendered), spec.env
    assert Settings.from_env(example).local_function_key == "local-dev-key"  # the example is a valid setup


def test_every_setting_is_validated_by_its_declaration() -> None:
    bad = {spec.env: "not-a-number" for f, spec in specs() if f.type in ("int", int)}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(bad)
    assert sorted(p.split(" ", 1)[0] for p in caught.value.problems) == sorted(bad)


def test_a_relative_local_vault_path_is_taken_from_the_app_folder_not_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.bootstrap import APP_ROOT, local_vault_path

    monkeypatch.chdir(tmp_path)  # a CLI run from another directory
    assert local_vault_path(Settings.from_env({})) == APP_ROOT / "secrets"
    assert local_vault_path(Settings.from_env({"KEY_VAULT_LOCAL_PATH": "/srv/vault"})) == Path("/srv/vault")
    assert (APP_ROOT / "function_app.py").exists()


def test_a_broken_settings_file_is_reported_with_line_and_column(tmp_path: Path) -> None:
    from shared.bootstrap import load_settings

    broken = tmp_path / "local.settings.json"
    broken.write_text('{\n  "Values": {\n    "KEY_VAULT_MODE": "local",\n  }\n}\n')
    # Python 3.13's json points at the trailing comma itself (3.11 said line 4, column 3, the brace after it)
    with pytest.raises(ConfigError, match=r"line 3, column 30: Illegal trailing comma"):
        load_settings({}, broken)


def test_the_key_cache_is_bounded_by_key_cache_seconds() -> None:
    """The fail-closed bound (docs/RELIABILITY.md): 60 s by default, never more than 60 s, capping the spec's
    KEY_VAULT_CACHE_DURATION_MINUTES, and the Azure KEK's and signing key's current version with it."""
    azure = {"KEY_VAULT_MODE": "azure", "KEY_VAULT_URL": "https://v.vault.azure.net"}
    for given, expected in (({}, 60.0), ({"KEY_CACHE_SECONDS": "5"}, 5.0),
                            ({"KEY_VAULT_CACHE_DURATION_MINUTES": "0"}, 0.0),
                            ({"KEY_VAULT_CACHE_ENABLED": "false"}, 0.0)):
        settings = Settings.from_env({**azure, **given})
        assert settings.key_ttl_seconds == expected, given
    with pytest.raises(ConfigError, match="KEY_CACHE_SECONDS must be from 0 to 60"):
        Settings.from_env({"KEY_CACHE_SECONDS": "3600"})
