"""NCRONTAB schedules (six fields: second minute hour day month day-of-week), as Azure Functions uses.

Fields accept ``*``, numbers, ranges ``a-b``, steps ``*/n`` and ``a-b/n``, and lists. Day of
week is 0-6 with Sunday 0 (7 also means Sunday). Pure: ``next_after(moment)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["Schedule"]

_BOUNDS = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def _field(text: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            first, last = low, high
        elif "-" in span:
            first, last = (int(x) for x in span.split("-", 1))
        else:
            first = last = int(span)
        if step < 1 or not low <= first <= last <= high:
            raise ValueError(f"field {text!r} is outside {low}-{high}")
        values.update(range(first, last + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Schedule:
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Schedule:
        fields = text.split()
        if len(fields) != 6:
            raise ValueError("an NCRONTAB schedule has six fields")
        seconds, minutes, hours, days, months, weekdays = (
            _field(f, low, high) for f, (low, high) in zip(fields, _BOUNDS, strict=True))
        return cls(seconds, minutes, hours, days, months, frozenset(d % 7 for d in weekdays))

    def next_after(self, moment: datetime) -> datetime:
        """The first matching second strictly after ``moment``."""
        t = moment.replace(microsecond=0) + timedelta(seconds=1)
        for _ in range(2_000_000):
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0, second=0) + timedelta(days=32)).replace(day=1)
            elif t.day not in self.days or (t.isoweekday() % 7) not in self.weekdays:
                t = t.replace(hour=0, minute=0, second=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0, second=0) + timedelta(hours=1)
            elif t.minute not in self.minutes:
                t = t.replace(second=0) + timedelta(minutes=1)
            elif t.second not in self.seconds:
                t += timedelta(seconds=1)
            else:
                return t
        raise ValueError("schedule never fires")
