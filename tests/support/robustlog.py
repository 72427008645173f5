"""Records what robustness tests observed, so ROBUSTNESS.md is generated from a real run.

A test calls ``record(table, row, column, outcome)`` after it has asserted the
behaviour; with ``SER_ROBUSTNESS_LOG`` set to a file path, each call appends one
JSON line there (nothing is written otherwise). ``docs/generators/robustness_report.py``
renders the lines into tables: one per ``table``, rows by ``row`` (an input case
or fault), columns by ``column`` (an entry point), cells holding ``outcome``
(a short observed behaviour such as ``skipped: not audio (…)`` or ``HTTP 415``).
"""

from __future__ import annotations

import json
import os
import threading

_LOCK = threading.Lock()


def record(table: str, row: str, column: str, outcome: str) -> None:
    path = os.environ.get("SER_ROBUSTNESS_LOG")
    if not path:
        return
    line = json.dumps({"table": table, "row": row, "column": column, "outcome": outcome})
    with _LOCK, open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
