"""``ser serve`` as a real process on a free loopback port, for the tests that need
HTTP and WebSocket traffic over a socket (the page in Chromium, the CLI server, its
worker processes), and a real ``redis-server`` for the shared session store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.load_http import redis_server_command
from tests.support import ROOT, free_port

STARTUP_SECONDS = 180  # a cold start compiles the model for every batch size


def ser_command(
    *args: str, timeout: float = 300, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``ser *args`` run to its end, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "ser.cli", *args],
        cwd=ROOT,
        env=dict(env or os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def serving(
    run_dir: Path, log: Path, *options: str, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Start ``ser serve run_dir --port P *options`` with its output in ``log``; yield
    ``http://127.0.0.1:P`` once ``/ready`` answers 200 (the model is warmed up), and stop
    the server afterwards."""
    with serving_process(run_dir, log, *options, env=env) as (url, _proc):
        yield url


@contextmanager
def serving_process(
    run_dir: Path, log: Path, *options: str, env: Mapping[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``serving``, yielding the server's process too (for its memory)."""
    port = free_port()
    cmd = [sys.executable, "-m", "ser.cli", "serve", str(run_dir), "--port", str(port), *options]
    with server_process(cmd, port, log, env=env) as running:
        yield running


@contextmanager
def server_process(
    command: list[str],
    port: int,
    log: Path,
    wait_for: str = "/ready",
    env: Mapping[str, str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``command`` (a server listening on 127.0.0.1:``port``) with its output in
    ``log``; yield its URL and process once ``wait_for`` answers 200, and stop it
    afterwards (SIGTERM: a graceful shut-down)."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=dict(env or os.environ), stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + STARTUP_SECONDS
        while True:
            assert proc.poll() is None, f"server exited: {log.read_text()}"
            assert time.time() < deadline, (
                f"no 200 from {wait_for} after {STARTUP_SECONDS} s: {log.read_text()}"
            )
            try:
                if httpx.get(f"{url}{wait_for}", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


class RedisServer:
    """A real ``redis-server`` on a free loopback port, without persistence (``--save ''``,
    no append-only file): ``start``, ``stop`` and ``start`` again on the same port, as an
    outage and its end look to a client."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        import redis

        cmd = redis_server_command(self.port)
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.time() + 30
        while True:
            assert self.proc.poll() is None, f"redis-server exited: {self.log.read_text()}"
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                assert time.time() < deadline, f"redis-server not up: {self.log.read_text()}"
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        """Stop the server (its data goes with it) and wait for it to exit."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
