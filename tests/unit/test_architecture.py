"""The layering, checked on the source: which module may import or call what.

Each rule would fail on the code it guards against (an HTTP import in a use case, a second
composition root, the Azure SDK in the format CLI, a product metric written by the local host).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Every module ``path`` imports (absolute names); with ``top_level_only``, not those inside functions."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def roots(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("module", ["download", "service", "rotation", "ingest", "keys", "transfer"])
def test_use_cases_know_no_http(module: str) -> None:
    found = imports(ROOT / "shared" / f"{module}.py")
    http = {name for name in found if name.split(".")[0] in ("fastapi", "starlette", "azure")
            and not name.startswith("azure.storage")} | (found & {"shared.http_api", "azure.functions"})
    assert http == set(), f"shared/{module}.py imports HTTP: {http}"


def test_only_function_app_asks_the_bootstrap_for_the_services() -> None:
    callers = [str(p.relative_to(ROOT)) for p in [ROOT / "function_app.py", *python_files("shared", "devhost", "bench")]
               if "bootstrap.services()" in p.read_text() and p.name != "bootstrap.py"]
    assert callers == ["function_app.py"]


def test_the_crypto_core_is_pure() -> None:
    for path in python_files("shared/crypto"):
        allowed = {name for name in imports(path) if name.startswith(("shared.crypto", "shared.errors"))}
        outside = roots(imports(path) - allowed) - STDLIB - {"cryptography"}
        assert outside == set(), f"{path.name} imports {outside}"


def test_the_format_cli_loads_only_the_crypto_core_and_the_standard_library() -> None:
    for name in ("main.py", "format_commands.py", "io.py", "ops_commands.py", "__init__.py", "__main__.py"):
        found = imports(ROOT / "shared" / "cli" / name, top_level_only=True)
        ours = {n for n in found if n.startswith(("shared.crypto", "shared.errors", "shared.cli"))}
        assert roots(found - ours) - STDLIB == set(), name
        assert "shared.cli.operations" not in found  # the operator commands' code comes in on use only


def test_product_metrics_are_written_by_product_code_only() -> None:
    for path in python_files("devhost", "localinfra"):
        assert "shared.metrics" not in imports(path), path.name


def test_no_code_path_invokes_a_function_without_the_runtime() -> None:
    """Only azure_functions_runtime calls the functions: nothing else imports function_app (the one unit
    test that checks its import does no I/O aside) or reaches a user function through the SDK."""
    checked = [ROOT / "function_app.py", *python_files("shared", "devhost", "localinfra", "bench", "scripts", "tests")]
    for path in checked:
        text = path.read_text()
        assert "get_user_function" not in text or path.name == "test_architecture.py", path
        if path.name not in ("test_function_app.py", "test_architecture.py"):
            assert "function_app" not in imports(path), path
    callers = {p.relative_to(ROOT).as_posix() for p in python_files("devhost")
               if "azure_functions_runtime" in roots(imports(p))}
    assert callers == {"devhost/worker.py"}  # the one place that speaks to the runtime


def test_the_protocol_modules_are_what_protoc_makes_of_the_vendored_proto_files(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from gen_protocol import generate  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    for generated in generate(tmp_path):
        committed = ROOT / "devhost" / "protocol" / generated.relative_to(tmp_path)
        assert committed.read_text() == generated.read_text(), f"{committed} is stale: run scripts/gen_protocol.py"


def test_all_sql_is_in_shared_db() -> None:
    """Every statement lives in a repository of ``shared/db/`` (the reconciler, the uploader and the audit log
    call repositories): no module elsewhere runs a statement on a connection or holds SQL text."""
    statements = {"execute", "executemany", "fetch", "fetchrow", "fetchval"}
    sql = re.compile(r"\s*(SELECT\s|INSERT INTO\s|UPDATE \w+ SET\s|DELETE FROM\s|CREATE (TABLE|INDEX|UNIQUE)|"
                     r"ALTER TABLE|DROP TABLE)")
    found = []
    for path in python_files("shared"):
        if path.parent.name == "db" and path.parent.parent.name == "shared":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in statements:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} runs a statement")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and sql.match(node.value):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} holds SQL")
    assert found == []
