"""``python -m devhost.metadata``: the functions as Microsoft's Python runtime reports them, as JSON.

Sends the runtime what the host sends at start (worker init, function metadata, function load) and
prints, per function, its name, id and bindings exactly as the ``FunctionMetadataResponse`` carries
them (``raw_bindings``), plus the worker capabilities (``HttpUri`` when the runtime started its HTTP
server). The settings come from the environment, as for the host; nothing is invoked. Tests read this
to check function_app.py against infra/ (tests/infra/test_runtime_metadata.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

from devhost.host import end_runtime_server_quietly, start_worker

__all__ = ["describe_app"]


async def describe_app() -> dict[str, Any]:
    worker = await start_worker()
    try:
        functions = [{"name": f.name, "function_id": f.function_id, "bindings": list(f.bindings)}
                     for f in worker.functions]
        return {"capabilities": worker.capabilities, "functions": functions}
    finally:
        worker.stop()
        end_runtime_server_quietly()


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(asyncio.run(describe_app()), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
