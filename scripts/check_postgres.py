"""`make test` step: stop early, with the reason, when a DATABASE_URL that is set does not answer.

Unset, the tests use 127.0.0.1:5432 or start an embedded PostgreSQL (tests/conftest.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localinfra.postgres import postgres_problem
from shared.bootstrap import settings_mapping


def main() -> int:
    configured = settings_mapping().get("DATABASE_URL")
    problem = postgres_problem(configured) if configured else None
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
