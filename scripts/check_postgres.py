"""`make test` step: stop early, with instructions, when PostgreSQL does not answer."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localinfra.postgres import postgres_problem
from shared.bootstrap import load_settings


def main() -> int:
    problem = postgres_problem(load_settings().database_url)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
