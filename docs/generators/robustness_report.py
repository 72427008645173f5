"""Render the robustness log (``SER_ROBUSTNESS_LOG``, written by ``robustlog.record``) as
markdown: ``python docs/generators/robustness_report.py LOG.jsonl [--load SOAK.json]
[--abuse ABUSE.json ...] [--out FILE]``.

Each table of the log becomes a grid, rows (input cases, faults, ...) by columns (entry
points), each cell the outcome a test observed and asserted. The ``inputs`` table keeps
the catalogue's row order and the pipeline's column order; other tables keep the order
in which their rows and columns were first recorded. ``--load`` adds a load/soak result
(any JSON object: its scalar keys, and samples of ``rss_mb_over_time`` when present).
``--abuse`` (repeatable) adds the "load and abuse" table from the ``rows`` of each file
(``bench/abuse.py`` writes one; any bench may write more rows in the same shape: a
``scenario`` and any of the ``ABUSE_COLUMNS`` keys). Each of ``ABUSE_PLACES`` no file
fills keeps a marked row saying what will fill it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

# The catalogue of awkward inputs belongs to the tests that exercise it; the report only
# borrows its row order, so the project root goes on the path rather than the catalogue
# moving here.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.badinputs import ROWS, SCENARIOS  # noqa: E402

COMMAND = (
    "SER_ROBUSTNESS_LOG=/tmp/r.jsonl .venv/bin/pytest -q tests/test_robustness.py "
    "tests/test_robustness_entrypoints.py tests/test_faults.py tests/test_security.py "
    "tests/test_fuzz.py && .venv/bin/python docs/generators/robustness_report.py /tmp/r.jsonl "
    "--load bench/results/soak.json --abuse bench/results/abuse.json "
    "--abuse bench/results/session_guessing.json --out ROBUSTNESS.md"
)
# Known orders; anything else follows in the order it was first recorded.
ROW_ORDER = {"inputs": [*ROWS, *SCENARIOS]}
COLUMN_ORDER = {
    "inputs": [
        "reader",
        "extraction",
        "train.py",
        "evaluate.py",
        "ser predict",
        "ser data convert",
        "HTTP API",
        "WebSocket",
    ],
}
CELL_LIMIT = 90
EMPTY = "—"
# What counts as a crash in an outcome: a server error status, a traceback, a crash or
# an unhandled exception, in the words an outcome would use for them.
CRASH = re.compile(
    r"\b(?:HTTP|status) 5\d\d\b|internal server error|traceback|crash|unhandled", re.IGNORECASE
)
RSS_SAMPLES = 6
# The "load and abuse" table: column title -> key of a row in an --abuse file.
ABUSE_COLUMNS = {
    "scenario": "scenario",
    "sent": "sent",
    "outcome": "outcome",
    "peak RSS MB": "peak_rss_mb",
    "RSS added MB": "rss_added_mb",
    "p95 ms (answered 200)": "p95_ms",
    "/health meanwhile": "health",
    "notes": "note",
}
# Rows the table always has, filled by a bench yet to write them.
ABUSE_PLACES = {
    "session guessing": "not measured yet: the API-key and session bench adds this row "
    "(`--abuse` its JSON)",
}


def read_log(path: str | Path) -> tuple[list[dict[str, str]], int]:
    """The log's entries and the number of lines that were not valid entries."""
    entries, bad = [], 0
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            entries.append({k: str(entry[k]) for k in ("table", "row", "column", "outcome")})
        except (ValueError, KeyError, TypeError):
            bad += 1
    return entries, bad


def _ordered(seen: Sequence[str], known: Sequence[str]) -> list[str]:
    present = set(seen)
    return [k for k in known if k in present] + [k for k in dict.fromkeys(seen) if k not in known]


def cell_text(outcomes: Sequence[str]) -> str:
    """Distinct outcomes of one cell on one line, pipes escaped, at most ``CELL_LIMIT``."""
    text = " / ".join(dict.fromkeys(" ".join(o.split()) for o in outcomes)) or EMPTY
    if len(text) > CELL_LIMIT:
        text = text[: CELL_LIMIT - 1] + "…"
    return text.replace("|", "\\|")


def render_table(name: str, entries: Sequence[dict[str, str]]) -> list[str]:
    rows = _ordered([e["row"] for e in entries], ROW_ORDER.get(name, ()))
    columns = _ordered([e["column"] for e in entries], COLUMN_ORDER.get(name, ()))
    cells: dict[tuple[str, str], list[str]] = {}
    for e in entries:
        cells.setdefault((e["row"], e["column"]), []).append(e["outcome"])
    lines = [
        f"## {name}",
        "",
        "| " + " | ".join(cell_text([c]) for c in [name, *columns]) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for row in rows:
        values = [cell_text(cells.get((row, c), [])) for c in columns]
        lines.append("| " + " | ".join([cell_text([row]), *values]) + " |")
    crashes = [
        f"{row} × {column}"
        for (row, column), outcomes in cells.items()
        if any(CRASH.search(o) for o in outcomes)
    ]
    lines += [
        "",
        (
            f"{len(cells)} cells recorded ({len(rows)} rows × {len(columns)} columns, "
            f"{len(rows) * len(columns) - len(cells)} empty)."
        ),
        f"Crash, HTTP 5xx or traceback: {', '.join(crashes)}."
        if crashes
        else "No cell shows a crash, an HTTP 5xx or a traceback.",
        "",
    ]
    return lines


def render_load(path: str | Path) -> list[str]:
    """A load/soak result: its scalar top-level keys and a few RSS samples."""
    lines = ["## load and soak", ""]
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return lines + [f"No load/soak result yet: `{path}` does not exist.", ""]
    except ValueError as exc:
        return lines + [f"`{path}` is not valid JSON ({exc}).", ""]
    if not isinstance(result, dict):
        return lines + [f"`{path}` does not hold a JSON object.", ""]
    lines += [f"From `{path}`.", "", "| key | value |", "|---|---|"]
    for key, value in result.items():
        if value is None or isinstance(value, (str, int, float, bool)):
            text = value if isinstance(value, str) else json.dumps(value)
            lines.append(f"| {cell_text([key])} | {cell_text([text])} |")
    rss = result.get("rss_mb_over_time")
    if isinstance(rss, list) and rss:
        picks = sorted({round(i * (len(rss) - 1) / (RSS_SAMPLES - 1)) for i in range(RSS_SAMPLES)})
        lines += ["", "| seconds | RSS MB |", "|---:|---:|"]
        for i in picks:
            try:
                seconds, mb = (float(v) for v in rss[i])
            except (TypeError, ValueError):  # not a [seconds, MB] pair
                continue
            lines.append(f"| {seconds:g} | {mb:g} |")
    return lines + [""]


def _abuse_source(path: str | Path, result: dict) -> str:
    """One line on where a file's rows come from: its scalar facts and limits."""
    facts = [f"{k} {v}" for k, v in result.items() if isinstance(v, (str, int, float))]
    limits = result.get("limits")
    if isinstance(limits, dict):
        facts += [f"{k} {v}" for k, v in limits.items() if k.endswith(("_limit", "_size"))]
    cores = (result.get("machine") or {}).get("cores") if isinstance(result, dict) else None
    if cores:
        facts.append(f"{cores} cores")
    return f"From `{path}`" + (f": {', '.join(facts)}." if facts else ".")


def render_abuse(paths: Sequence[str | Path]) -> list[str]:
    """The "load and abuse" table: the rows of every file, then the places still empty."""
    lines, rows = ["## load and abuse", ""], []
    for path in paths:
        try:
            result = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            lines.append(f"No abuse result yet: `{path}` does not exist.")
            continue
        except ValueError as exc:
            lines.append(f"`{path}` is not valid JSON ({exc}).")
            continue
        found = result.get("rows") if isinstance(result, dict) else None
        if not isinstance(found, list):
            lines.append(f"`{path}` holds no list of rows.")
            continue
        lines.append(_abuse_source(path, result))
        rows += [r for r in found if isinstance(r, dict) and r.get("scenario")]
    for place, note in ABUSE_PLACES.items():
        if not any(str(r["scenario"]).startswith(place) for r in rows):
            rows.append({"scenario": f"{place} (place kept)", "note": note})
    lines += ["", "| " + " | ".join(ABUSE_COLUMNS) + " |", "|" + "---|" * len(ABUSE_COLUMNS)]
    for row in rows:
        values = [row.get(key) for key in ABUSE_COLUMNS.values()]
        texts = [[] if v is None else [v if isinstance(v, str) else json.dumps(v)] for v in values]
        lines.append("| " + " | ".join(cell_text(t) for t in texts) + " |")
    return lines + [""]


def render(
    entries: Sequence[dict[str, str]],
    load: str | Path | None = None,
    bad: int = 0,
    abuse: Sequence[str | Path] = (),
) -> str:
    tables = _ordered([e["table"] for e in entries], ["inputs"])
    lines = [
        "# Robustness",
        "",
        (
            "What each entry point did with awkward and broken input, as observed and asserted "
            f"by the robustness tests: each cell is one verified outcome, {EMPTY} where that "
            "entry point was not exercised. Regenerate with:"
        ),
        "",
        "```bash",
        COMMAND,
        "```",
        "",
    ]
    if bad:
        lines += [f"({bad} log line(s) were not valid entries and were left out.)", ""]
    if not entries:
        lines += ["The log holds no entries.", ""]
    for name in tables:
        lines += render_table(name, [e for e in entries if e["table"] == name])
    if load is not None:
        lines += render_load(load)
    if abuse:
        lines += render_abuse(abuse)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="JSON lines written with SER_ROBUSTNESS_LOG set")
    parser.add_argument("--load", metavar="JSON", help="a load/soak result to include")
    parser.add_argument(
        "--abuse",
        metavar="JSON",
        action="append",
        default=[],
        help="a load-and-abuse result with rows (bench/abuse.py's; repeatable)",
    )
    parser.add_argument("--out", metavar="MARKDOWN", help="write here instead of stdout")
    args = parser.parse_args(argv)
    try:
        entries, bad = read_log(args.log)
    except OSError as exc:
        print(f"error: {args.log}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    text = render(entries, args.load, bad, args.abuse)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
