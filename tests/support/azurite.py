"""The tests use the same Azurite runner as `make dev` (free ports, temporary data)."""

from devhost.azurite import Azurite, free_port, running_azurite

__all__ = ["Azurite", "free_port", "running_azurite"]
