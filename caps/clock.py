"""Times and durations as people write them: `1h30m`, `2025-01-01T12:00:00Z`, unix seconds."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?\Z")
_UNITS = (86400, 3600, 60, 1)


def parse_duration(text: str) -> int:
    """Seconds in `90s`, `10m`, `1h30m`, `2d`; a bare number is seconds. Raises ValueError."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    m = _DURATION.match(text)
    if not text or m is None:
        raise ValueError(f"`{text}` is not a duration (try `10m`, `1h` or `1h30m`)")
    return sum(int(v) * unit for v, unit in zip(m.groups(), _UNITS, strict=True) if v)


def parse_time(text: str) -> float:
    """Unix seconds from `1735732800` or an ISO 8601 time (`2025-01-01T12:00:00Z`). Raises ValueError."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"`{text}` is not a time (use unix seconds or `2025-01-01T12:00:00Z`)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def format_time(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{int(seconds)} (unix seconds)"


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 0:
        return "-" + format_duration(-seconds)
    parts = []
    for unit, name in zip(_UNITS, "dhms", strict=True):
        if seconds >= unit or (unit == 1 and not parts):
            parts.append(f"{seconds // unit}{name}")
            seconds %= unit
    return "".join(parts[:2])
