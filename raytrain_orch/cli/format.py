"""How the plain commands lay out what they print: tables, and where they look for runs."""

from __future__ import annotations

import os
from typing import Sequence

#: Where run-reading commands look without --storage.
DEFAULT_STORAGE = os.environ.get("RTO_STORAGE", "./rto-runs")


def table(rows: Sequence[Sequence[str]]) -> None:
    """Print ``rows`` (the first is the header) as left-aligned columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
