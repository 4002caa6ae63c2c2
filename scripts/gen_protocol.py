"""Generates ``devhost/protocol/*_pb2.py`` from the vendored .proto files of the worker protocol.

``python scripts/gen_protocol.py [OUT]`` runs protoc (from ``grpcio-tools``) over
``devhost/protocol/proto`` and writes the modules into OUT (default ``devhost/protocol``). protoc writes
imports from the proto root (``from shared import NullableTypes_pb2``), which would name this project's
own ``shared`` package: they are rewritten to ``devhost.protocol.<folder>``. A unit test regenerates into
a temporary folder and compares, so the committed modules cannot drift from the .proto files.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "devhost" / "protocol" / "proto"
FILES = ("FunctionRpc.proto", "identity/ClaimsIdentityRpc.proto", "shared/NullableTypes.proto")
_IMPORT = re.compile(r"^from (identity|shared) import (\w+_pb2)", re.MULTILINE)


def generate(out: Path) -> list[Path]:
    """The generated modules, written into ``out`` (folders included); raises if protoc fails."""
    for folder in ("identity", "shared"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/duration.proto and friends
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}", *FILES]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on devhost/protocol/proto")
    written = sorted(out.rglob("*_pb2.py"))
    for path in written:
        path.write_text(_IMPORT.sub(r"from devhost.protocol.\1 import \2", path.read_text()))
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "devhost" / "protocol"
    for module in generate(target):
        print(module.relative_to(target))
