"""The functions as the runtime reports them (``RpcFunctionMetadata``), read the way the host reads them.

Each function's ``raw_bindings`` are JSON objects (type, direction, name, path, connection, route,
methods, authLevel, schedule ...); the trigger is the binding whose type ends in ``Trigger``.
``%SETTING%`` binding expressions are resolved from the app settings, as the host resolves them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

__all__ = ["Function", "from_metadata", "resolve"]

_SETTING = re.compile(r"%([A-Za-z0-9_]+)%")


@dataclass(frozen=True)
class Function:
    name: str
    function_id: str
    bindings: tuple[dict[str, Any], ...]

    @cached_property
    def trigger(self) -> dict[str, Any]:
        return next(b for b in self.bindings if str(b.get("type", "")).endswith("Trigger"))

    @property
    def trigger_type(self) -> str:
        return str(self.trigger["type"])

    @cached_property
    def methods(self) -> tuple[str, ...]:
        return tuple(str(m).upper() for m in self.trigger.get("methods") or ("GET", "POST"))

    @property
    def route(self) -> str:
        return str(self.trigger.get("route") or self.name)

    @property
    def anonymous(self) -> bool:
        return str(self.trigger.get("authLevel", "function")).lower() == "anonymous"


def from_metadata(metadata: Any) -> Function:
    """A ``Function`` from one ``RpcFunctionMetadata`` of the runtime's ``FunctionMetadataResponse``."""
    return Function(metadata.name, metadata.function_id, tuple(json.loads(raw) for raw in metadata.raw_bindings))


def resolve(expression: str, settings: Mapping[str, str]) -> str:
    """Replace ``%NAME%`` with the app setting NAME (an unknown name is an error, as in the host)."""
    def lookup(match: re.Match[str]) -> str:
        if match.group(1) not in settings:
            raise KeyError(f"binding expression {match.group(0)} names no app setting")
        return settings[match.group(1)]

    return _SETTING.sub(lookup, expression)
