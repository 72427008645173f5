"""``ser serve`` as a real process on a free loopback port, for the tests that need
HTTP and WebSocket traffic over a socket (the page in Chromium, the CLI server)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support import ROOT, free_port

STARTUP_SECONDS = 180  # a cold start compiles the model for every batch size


@contextmanager
def serving(
    run_dir: Path, log: Path, *options: str, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Start ``ser serve run_dir --port P *options`` with its output in ``log``; yield
    ``http://127.0.0.1:P`` once ``/health`` answers, and stop the server afterwards."""
    with serving_process(run_dir, log, *options, env=env) as (url, _proc):
        yield url


@contextmanager
def serving_process(
    run_dir: Path, log: Path, *options: str, env: Mapping[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``serving``, yielding the server's process too (for its memory)."""
    port = free_port()
    cmd = [sys.executable, "-m", "ser.cli", "serve", str(run_dir), "--port", str(port), *options]
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=dict(env or os.environ), stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + STARTUP_SECONDS
        while True:
            assert proc.poll() is None, f"server exited: {log.read_text()}"
            assert time.time() < deadline, (
                f"server not up after {STARTUP_SECONDS} s: {log.read_text()}"
            )
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
