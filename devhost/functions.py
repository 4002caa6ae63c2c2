"""Reads the functions of ``function_app.py`` the way the Python worker indexes them.

``app.get_functions()`` lists each function with its bindings; ``get_user_function()`` is the
plain coroutine. ``%SETTING%`` binding expressions are resolved from the settings mapping, as
the Functions host resolves them from app settings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FunctionSpec", "discover", "resolve"]

_SETTING = re.compile(r"%([A-Za-z0-9_]+)%")


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    trigger: str  # httpTrigger | blobTrigger | timerTrigger
    binding: dict[str, Any]
    handler: Callable[..., Any]

    def value(self, key: str) -> Any:
        raw = self.binding.get(key)
        return getattr(raw, "value", raw)


def resolve(expression: str, settings: Mapping[str, str]) -> str:
    """Replace ``%NAME%`` with the app setting NAME (an unknown name is an error, as in the host)."""
    def lookup(match: re.Match[str]) -> str:
        if match.group(1) not in settings:
            raise KeyError(f"binding expression {match.group(0)} names no app setting")
        return settings[match.group(1)]

    return _SETTING.sub(lookup, expression)


def discover(app: Any) -> list[FunctionSpec]:
    specs = []
    for function in app.get_functions():
        trigger = next(b for b in function.get_bindings() if b.type.endswith("Trigger"))
        specs.append(FunctionSpec(function.get_function_name(), trigger.type, trigger.get_dict_repr(),
                                  function.get_user_function()))
    return specs
