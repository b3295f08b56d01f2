"""How the project words an error, a duration and a size in bytes, everywhere: one helper each.

An error's *gist* is the one line a user reads of it — on the console, in ``state.json``, in
MLflow's ``rto.error`` tag and in ``rto status``. Which line is the caller's explicit choice:
``"first"`` for our own errors and a library's (the sentence leads), ``"last"`` for a step's
traceback text (Python ends it with the error raised). ``sentence=True`` keeps the first
sentence of that line only, for a library's long explanation.
"""

from __future__ import annotations

from typing import Literal

#: The longest gist; the whole text stays where it is kept (a traceback, ``events.jsonl``).
GIST_CHARS = 300


def gist(
    error: BaseException | str | None,
    *,
    line: Literal["first", "last"] = "first",
    sentence: bool = False,
    limit: int = GIST_CHARS,
) -> str:
    """One line of ``error``'s message: its first or last non-empty line, stripped and cut at
    ``limit``. An exception with no message gives its type's name; an empty text, ``""``."""
    text = str(error if error is not None else "")
    lines = [part.strip() for part in text.strip().splitlines() if part.strip()]
    if not lines:
        return type(error).__name__ if isinstance(error, BaseException) else ""
    chosen = lines[0] if line == "first" else lines[-1]
    if sentence:
        chosen = chosen.split(". ", 1)[0].rstrip(".")
    return chosen[:limit]


def duration(seconds: float | None) -> str:
    """``12.3 s`` under a minute, ``4 min 5 s`` under an hour, ``2 h 3 min`` beyond; ``-`` for none."""
    if seconds is None:
        return "-"
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 3600:
        minutes, secs = divmod(whole, 60)
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(whole // 60, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def byte_size(count: int) -> str:
    """``512 B``, ``1.5 KiB``, ``12.3 MiB``, ``2.0 GiB``: binary units, one decimal past bytes."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    value, unit = float(count), 0
    while abs(value) >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    return f"{count} B" if unit == 0 else f"{value:.1f} {units[unit]}"
