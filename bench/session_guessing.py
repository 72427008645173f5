"""Session guessing against a real ``ser serve``: can a client reach a speaker session
it was not given?

Starts ``ser serve RUN_DIR --api-key-file`` with two generated keys, A and B (never
printed or saved), on a free loopback port; opens ``--sessions`` real sessions with
each key; then sends ``--tries`` requests ``POST /predict?session=<guess>`` with key
A, the guesses taken in turn from four kinds:

- names a client might choose (``caller-17``, ``speaker_3``, ``test``, uuids, ...);
- random tokens of the real tokens' shape (22 URL-safe characters, 128 bits);
- near misses: one of key A's real tokens with one character changed;
- key B's real tokens, sent with key A.

Every guess should get 404 naming the field ``session``, all with one identical body
(nothing to tell the kinds apart), and key A's real sessions should still answer 200
afterwards. Prints and writes (``--out``, default ``bench/results/session_guessing.json``)
the counts by kind and status; its ``rows`` are the "session guessing" row of the
"load and abuse" table of ROBUSTNESS.md
(``docs/generators/robustness_report.py LOG --abuse bench/results/session_guessing.json``).

    python bench/session_guessing.py checkpoints/best [--tries 2000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import string
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from itertools import cycle, islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import RESULTS, write
from bench.load_http import (
    free_port,
    start_server,
    stop_server,
    voiced_clip,
    wait_healthy,
    wav_bytes,
)

TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_"
KINDS = ("names a client might choose", "random tokens", "near misses", "another key's tokens")


def chosen_names() -> Iterator[str]:
    """Session names a client might pick: words, numbered names, uuids (never ``new``,
    which asks for a session rather than guessing one)."""
    words = ("caller", "speaker", "session", "user", "client", "test", "demo", "admin")
    yield from ("default", "0", "1", "x", "a" * 22, "null", "undefined", "NEW", "../etc")
    n = 0
    while True:
        for word in words:
            for sep in ("-", "_", ""):
                yield f"{word}{sep}{n}"
        yield str(uuid.UUID(int=n))
        yield str(uuid.uuid4())
        n += 1


def random_tokens() -> Iterator[str]:
    while True:
        yield secrets.token_urlsafe(16)


def near_misses(tokens: list[str]) -> Iterator[str]:
    """Each real token with one character (in turn) changed to another."""
    for position in cycle(range(22)):
        for token in tokens:
            changed = secrets.choice(TOKEN_ALPHABET.replace(token[position], ""))
            yield token[:position] + changed + token[position + 1 :]


def guesses(tries: int, own: list[str], others: list[str]) -> list[tuple[str, str]]:
    """``tries`` (kind, guess) pairs, the kinds taken in turn."""
    sources = [chosen_names(), random_tokens(), near_misses(own), cycle(others)]
    turns = cycle(zip(KINDS, sources, strict=True))
    return [(kind, next(source)) for kind, source in islice(turns, tries)]


async def open_sessions(client, key: str, count: int) -> list[str]:
    tokens = []
    for _ in range(count):
        r = await client.post("/sessions", headers={"Authorization": f"Bearer {key}"})
        r.raise_for_status()
        tokens.append(r.json()["session"])
    return tokens


async def try_guesses(client, key: str, tries, body: bytes, concurrency: int):
    """Each guess sent once; ``(kind, status, body)`` per guess."""
    queue = list(reversed(tries))
    answers: list[tuple[str, int, str]] = []

    async def worker() -> None:
        while queue:
            kind, guess = queue.pop()
            r = await client.post(
                "/predict",
                params={"session": guess},
                files={"file": ("clip.wav", body, "audio/wav")},
                headers={"Authorization": f"Bearer {key}"},
            )
            answers.append((kind, r.status_code, r.text))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


async def still_answer(client, key: str, tokens: list[str], body: bytes) -> int:
    """How many of ``tokens`` still answer 200 with ``key``."""
    ok = 0
    for token in tokens:
        r = await client.post(
            "/predict",
            params={"session": token},
            files={"file": ("clip.wav", body, "audio/wav")},
            headers={"Authorization": f"Bearer {key}"},
        )
        ok += r.status_code == 200
    return ok


async def attack(url: str, keys: tuple[str, str], args) -> dict:
    import httpx

    body = wav_bytes(voiced_clip(0.5), 16000)
    key_a, key_b = keys
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        own = await open_sessions(client, key_a, args.sessions)
        others = await open_sessions(client, key_b, args.sessions)
        started = time.perf_counter()
        answers = await try_guesses(
            client, key_a, guesses(args.tries, own, others), body, args.concurrency
        )
        seconds = time.perf_counter() - started
        kept = await still_answer(client, key_a, own, body)
    return summarise(answers, seconds, kept, len(own))


def summarise(answers, seconds: float, kept: int, sessions: int) -> dict:
    by_status = Counter(str(status) for _, status, _ in answers)
    by_kind = {kind: dict(Counter(str(s) for k, s, _ in answers if k == kind)) for kind in KINDS}
    bodies = len({text for _, status, text in answers if status == 404})
    statuses = ", ".join(f"{s} ×{n}" for s, n in sorted(by_status.items()))
    outcome = f"{statuses}; {bodies} distinct 404 body(ies); real sessions kept {kept}/{sessions}"
    # A row of ROBUSTNESS.md's "load and abuse" table (robustness_report.py --abuse).
    row = {
        "scenario": f"session guessing: {len(answers)} guesses ({', '.join(KINDS)})",
        "sent": len(answers),
        "statuses": dict(sorted(by_status.items())),
        "outcome": outcome,
    }
    return {
        "tries": len(answers),
        "seconds": round(seconds, 2),
        "guesses_per_second": round(len(answers) / seconds, 1) if seconds else None,
        "by_status": dict(sorted(by_status.items())),
        "by_kind": by_kind,
        "distinct_404_bodies": bodies,
        "real_sessions_still_answer": f"{kept}/{sessions}",
        "rows": [row],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", nargs="?", default="checkpoints/best", help="run to serve")
    p.add_argument("--tries", type=int, default=2000, help="guesses to send (default 2000)")
    p.add_argument("--sessions", type=int, default=20, help="real sessions per key (default 20)")
    p.add_argument("--concurrency", type=int, default=8, help="requests at once (default 8)")
    p.add_argument(
        "--serve-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="pass a flag to ser serve, e.g. --serve-flag=--rate-limit-per-minute=0 (repeatable)",
    )
    p.add_argument("--out", default=str(RESULTS / "session_guessing.json"))
    args = p.parse_args(argv)
    if not 1 <= args.tries <= 20000 or not 1 <= args.sessions <= 200:
        p.error("--tries must be 1..20000 and --sessions 1..200")
    if not 1 <= args.concurrency <= 64:
        p.error("--concurrency must be 1..64")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keys = (secrets.token_urlsafe(32), secrets.token_urlsafe(32))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(args.out).with_suffix(".server.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        key_file = Path(work) / "keys.txt"
        key_file.write_text("\n".join(keys) + "\n", encoding="utf-8")
        os.chmod(key_file, 0o600)
        flags = ["--api-key-file", str(key_file), *args.serve_flag]
        proc = start_server(args.run_dir, port, log, *flags)
        try:
            health = wait_healthy(url, proc)
            result = asyncio.run(attack(url, keys, args))
        finally:
            stop_server(proc)
    result = {"model_id": health["model_id"], "server_flags": args.serve_flag, **result}
    for kind, counts in result["by_kind"].items():
        print(f"{kind:28s} {counts}")
    print(f"{result['rows'][0]['scenario']}: {result['rows'][0]['outcome']}")
    write(args.out, "session_guessing", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
