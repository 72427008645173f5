"""``ser serve`` as users run it: a real uvicorn process on a loopback port.

Checks what the in-process TestClient cannot: the command line (bad run directory,
bad settings), the WebSocket over a real socket with a real client, a 413 answered
before an oversized body is read, and that ``bench/load_http.py`` runs against it
(its figures are not asserted: speed is measured by the script, not by tests).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest

from tests.support import ROOT, free_port
from tests.support.servers import ser_command, serving
from tests.support.signals import gliding_tone
from tests.support.tiny_run import encode, tone

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def ser(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return ser_command(*args, timeout=timeout, env=ENV)


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    options = ["--max-upload-mb", "0.5", "--stream-window", "1", "--stream-hop", "0.5"]
    with serving(run_dir, log, *options, "--log-level", "warning", env=ENV) as url:
        yield url, log


def test_serve_announces_the_model_and_answers(server):
    url, log = server
    assert "serving tiny-lstm@" in log.read_text()
    r = httpx.post(
        f"{url}/predict", files={"file": ("a.wav", encode(gliding_tone(1.5)), "audio/wav")}
    )
    assert r.status_code == 200 and r.json()["windowed"] is True


def test_oversized_upload_is_refused_over_a_real_socket(server):
    url, _ = server
    body = encode(tone(30))  # ~960 kB > 0.5 MB
    r = httpx.post(f"{url}/predict", files={"file": ("big.wav", body, "audio/wav")}, timeout=30)
    assert r.status_code == 413 and "max_upload_mb" in r.json()["detail"]
    assert httpx.get(f"{url}/health").status_code == 200  # still serving


def test_websocket_stream_with_a_real_client(server):
    import websockets

    url, _ = server
    speech = gliding_tone(1.5)
    pcm = (np.concatenate([speech, np.zeros(16000, np.float32)]) * 32767).astype("<i2").tobytes()

    async def talk() -> list[dict]:
        async with websockets.connect(url.replace("http", "ws") + "/stream") as ws:
            replies = [json.loads(await ws.recv())]
            for i in range(0, len(pcm), 3200):
                await ws.send(pcm[i : i + 3200])
            await ws.send(json.dumps({"type": "end"}))
            async for message in ws:
                replies.append(json.loads(message))
            return replies

    replies = asyncio.run(talk())
    kinds = [r["type"] for r in replies]
    assert kinds[0] == "ready" and kinds[-1] == "end"
    assert kinds[1:-1] == ["prediction", "prediction", "prediction", "no_speech"]


def load_benchmark(*args: str) -> None:
    """``bench/load_http.py`` with ``args`` (two unmeasured warm-up requests), which must
    exit 0."""
    proc = subprocess.run(
        [sys.executable, "bench/load_http.py", *args, "--warmup", "2"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_load_benchmark_script_runs_against_the_server(server, tmp_path):
    url, _ = server
    out = tmp_path / "load.json"
    load_benchmark("--url", url, "--requests", "8", "--concurrency", "1,2", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["model_id"].startswith("tiny-lstm@")
    assert [level["concurrency"] for level in report["levels"]] == [1, 2]
    # The seed's app, started and stopped by the script, measured at the same levels.
    for level in report["levels"] + report["seed_app"]:
        assert level["requests"] == 8 and level["errors"] == 0
        assert 0 < level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"]
    assert [row["concurrency"] for row in report["against_seed"]] == [1, 2]
    assert all(row["requests_per_second_x_seed"] > 0 for row in report["against_seed"])


@pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is not installed (Debian: apt-get install redis-server)",
)
def test_load_benchmark_measures_each_worker_count(run_dir, tmp_path):
    out = tmp_path / "workers.json"
    load_benchmark(
        str(run_dir),
        "--workers",
        "1,2",
        "--no-seed",
        "--requests",
        "6",
        "--concurrency",
        "2",
        "--out",
        str(out),
    )
    report = json.loads(out.read_text())
    assert [(level["workers"], level["concurrency"]) for level in report["levels"]] == [
        (1, 2),
        (2, 2),
    ]
    assert all(level["requests"] == 6 and level["errors"] == 0 for level in report["levels"])
    # The two-worker server shared its sessions through the benchmark's own redis-server.
    log = out.with_suffix(".server-2w.log").read_text()
    assert "redis://127.0.0.1:" in log


def test_load_benchmark_refuses_other_hosts(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "bench/load_http.py",
            "--url",
            "http://example.org",
            "--out",
            str(tmp_path / "x.json"),
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "loopback" in proc.stderr


def test_serve_on_a_folder_that_is_not_a_run_exits_2(tmp_path):
    proc = ser("serve", str(tmp_path), "--port", str(free_port()))
    assert proc.returncode == 2
    assert "not a run directory (missing run.yaml" in proc.stderr


def test_serve_with_bad_settings_exits_2_naming_the_key(tmp_path):
    settings = tmp_path / "serve.yaml"
    settings.write_text("max_upload_mb: -1\nmystery: 3\n")
    proc = ser("serve", str(tmp_path), "--settings", str(settings))
    assert proc.returncode == 2
    assert "max_upload_mb" in proc.stderr and "mystery: unknown setting" in proc.stderr
