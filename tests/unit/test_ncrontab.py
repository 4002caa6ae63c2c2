"""The local host's NCRONTAB schedules."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from devhost.ncrontab import Schedule

T0 = datetime(2026, 11, 28, 13, 45, 30, 500, tzinfo=UTC)  # a Saturday


@pytest.mark.parametrize("schedule,expected", [
    ("0 0 * * * *", datetime(2026, 11, 28, 14, 0, 0, tzinfo=UTC)),
    ("*/10 * * * * *", datetime(2026, 11, 28, 13, 45, 40, tzinfo=UTC)),
    ("0 */5 * * * *", datetime(2026, 11, 28, 13, 50, 0, tzinfo=UTC)),
    ("0 30 9 * * 1-5", datetime(2026, 11, 30, 9, 30, 0, tzinfo=UTC)),
    ("0 0 0 1 1 *", datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC)),
    ("15,45 * * * * *", datetime(2026, 11, 28, 13, 45, 45, tzinfo=UTC)),
    ("0 0 12 * * 0", datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)),
    ("0 0 12 * * 7", datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)),
])
def test_next_after(schedule: str, expected: datetime) -> None:
    assert Schedule.parse(schedule).next_after(T0) == expected


@pytest.mark.parametrize("schedule", ["* * * * *", "60 * * * * *", "0 0 25 * * *", "*/0 * * * * *", "a * * * * *"])
def test_invalid(schedule: str) -> None:
    with pytest.raises(ValueError):
        Schedule.parse(schedule)
