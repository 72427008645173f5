"""Who may use the service and how much: bounded upload work (503), over-long clips
refused before decoding, live stream cap (1013) and idle timeout (1008), rate limits
(429), security headers and the Content-Security-Policy in real Chromium, and the
settings that refuse a wildcard CORS origin.

The flood test runs ``ser serve`` as a real process on a loopback port and reads its
memory from ``/proc``; the others use the app in-process (FastAPI's TestClient).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import yaml
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from bench.abuse import largest_wav
from bench.soak import PeakMemory
from ser.config import ConfigError
from ser.serving import settings as settings_module
from ser.serving.app import create_app
from ser.serving.limits import CONTENT_SECURITY_POLICY, Overloaded, RateLimiter, UploadGate
from ser.serving.settings import ServingSettings, default_active_uploads, load_settings
from tests.support import ROOT
from tests.support.livepage import CHROMIUM, launch, microphone_clip, open_offline, problems
from tests.support.servers import serving_process
from tests.support.tiny_run import encode, silence, tone

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the skip says why
    sync_playwright = None

RATE = 16000


def pcm(seconds: float) -> bytes:
    return (tone(seconds) * 32767).astype("<i2").tobytes()


# ------------------------------------------------------------------ settings
def test_a_wildcard_cors_origin_is_refused_naming_the_setting():
    with pytest.raises(ConfigError, match=r"cors_origins: '\*' would let any web site"):
        load_settings(None, cors_origins=["*"])
    with pytest.raises(ConfigError, match=r"cors_origins: 'https://\*\.example' would let"):
        load_settings(None, cors_origins=["https://*.example"])
    with pytest.raises(ConfigError, match=r"cors_origins: 'app\.example' is not an origin"):
        load_settings(None, cors_origins=["app.example"])
    with pytest.raises(ConfigError, match=r"'https://app\.example/api' is not an origin"):
        load_settings(None, cors_origins=["https://app.example/api"])
    named = ["https://app.example", "http://127.0.0.1:3000"]
    assert load_settings(None, cors_origins=named).cors_origins == named


def test_uploads_at_once_default_to_two_per_core_fewer_when_memory_is_short(monkeypatch):
    by_cores = 2 * (os.cpu_count() or 1)
    per_upload = settings_module.UPLOAD_MEMORY_MB / settings_module.UPLOAD_MEMORY_SHARE
    monkeypatch.setattr(settings_module, "available_memory_mb", lambda: 1000 * per_upload)
    assert default_active_uploads() == by_cores
    monkeypatch.setattr(settings_module, "available_memory_mb", lambda: 3.5 * per_upload)
    assert default_active_uploads() == min(by_cores, 3)
    monkeypatch.setattr(settings_module, "available_memory_mb", lambda: 0.2 * per_upload)
    assert default_active_uploads() == 1  # never zero: one upload at a time still works
    monkeypatch.setattr(settings_module, "available_memory_mb", lambda: None)
    assert default_active_uploads() == by_cores
    assert ServingSettings().max_active_uploads == by_cores  # the factory is the default


def test_the_memory_this_machine_has_left_is_read():
    available = settings_module.available_memory_mb()
    assert available is not None and available > 0


# ------------------------------------------------------------------ the gate itself
def test_the_upload_gate_admits_in_order_queues_and_refuses_beyond_the_queue():
    async def scenario():
        gate = UploadGate(capacity=1, queue_size=2)
        order = []
        first = await gate.acquire()

        async def queued(name):
            admitted = await gate.acquire()
            order.append(name)
            gate.release(admitted)

        waiting = [asyncio.create_task(queued(n)) for n in ("second", "third")]
        await asyncio.sleep(0)
        assert (gate.active, gate.waiting) == (1, 2)
        with pytest.raises(Overloaded, match="max_active_uploads, upload_queue") as refused:
            await gate.acquire()
        assert refused.value.wait_seconds > 0 and gate.refused == 1
        gate.release(first)
        await asyncio.gather(*waiting)
        return order, gate

    order, gate = asyncio.run(scenario())
    assert order == ["second", "third"]  # first come, first served
    assert (gate.active, gate.waiting, gate.peak_active) == (0, 0, 1)


def test_a_client_leaving_the_queue_gives_up_its_place_and_any_slot_it_was_handed():
    async def scenario():
        gate = UploadGate(capacity=1, queue_size=1)
        first = await gate.acquire()
        leaver = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        leaver.cancel()  # left while queued
        await asyncio.gather(leaver, return_exceptions=True)
        assert gate.waiting == 0
        handed = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        gate.release(first)  # the slot goes to ``handed`` ...
        handed.cancel()  # ... which leaves before it runs: the slot must not leak
        await asyncio.gather(handed, return_exceptions=True)
        return gate

    gate = asyncio.run(scenario())
    assert (gate.active, gate.waiting) == (0, 0)


def test_the_rate_limiter_refills_evenly_and_keeps_clients_apart():
    now = [0.0]
    limiter = RateLimiter(per_minute=6, clock=lambda: now[0])  # one every 10 s
    assert [limiter.wait_seconds("key a") for _ in range(6)] == [0.0] * 6
    assert limiter.wait_seconds("key a") == pytest.approx(10.0)
    assert limiter.wait_seconds("key b") == 0.0  # another client's bucket is full
    now[0] = 4.0
    assert limiter.wait_seconds("key a") == pytest.approx(6.0)
    now[0] = 10.0
    assert limiter.wait_seconds("key a") == 0.0
    assert limiter.refused == 2


def test_the_rate_limiter_forgets_the_least_recently_seen_clients_first():
    limiter = RateLimiter(per_minute=1, max_clients=2, clock=lambda: 0.0)
    for client in ("a", "b", "c"):
        assert limiter.wait_seconds(client) == 0.0
    assert limiter.wait_seconds("c") > 0  # still tracked: empty
    assert limiter.wait_seconds("a") == 0.0  # forgotten, so a full bucket again


# ------------------------------------------------------------------ in-process app
@pytest.fixture(scope="module")
def limited(predictor):
    """The app with a small rate limit, two streams at most and a short idle timeout."""
    settings = ServingSettings(
        max_batch_windows=1,
        rate_limit_per_minute=5,
        max_streams=2,
        stream_idle_seconds=1.0,
        stream_window=1.0,
        stream_hop=0.5,
        max_clip_seconds=120,
    )
    app = create_app(predictor, settings=settings)

    class KeyFromHeader:
        """Stands where an API-key middleware will: it names the key on the request."""

        def __init__(self, app) -> None:
            self.app = app

        async def __call__(self, scope, receive, send):
            key = dict(scope.get("headers") or []).get(b"x-test-key")
            if scope["type"] == "http" and key:
                scope.setdefault("state", {})["api_key_id"] = key.decode()
            await self.app(scope, receive, send)

    app.add_middleware(KeyFromHeader)
    with TestClient(app) as client:
        yield client


def test_requests_beyond_the_rate_get_429_with_retry_after_per_key_or_address(limited):
    for key in ("0a1b2c3d", "4e5f6a7b"):
        answers = [limited.get("/model", headers={"x-test-key": key}) for _ in range(6)]
        assert [r.status_code for r in answers] == [200] * 5 + [429]
        refused = answers[-1]
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json() == {
            "detail": f"too many requests from key {key}: at most 5 a minute (setting "
            f"rate_limit_per_minute); retry in {refused.headers['retry-after']} s",
            "field": None,
        }
    # Without a key the client's address is counted: the keys' requests were not.
    answers = [limited.get("/model") for _ in range(6)]
    assert [r.status_code for r in answers] == [200] * 5 + [429]
    assert "from address testclient" in answers[-1].json()["detail"]
    # Liveness probes and the page's files are never limited.
    for path in ["/health"] * 10 + ["/static/app.js", "/favicon.ico"]:
        assert limited.get(path).status_code == 200, path
    assert limited.get("/health").json()["load"]["rate_limited"] == 3


def test_every_answer_carries_nosniff_and_the_content_security_policy(limited):
    key = {"x-test-key": "5ec0e7a1"}
    answers = {
        path: limited.get(path, headers=key)
        for path in ("/", "/docs", "/redoc", "/health", "/static/app.js", "/static/docs.js")
    }
    answers["404"] = limited.get("/nothing-here", headers=key)
    answers["429"] = limited.get("/model", headers=key)
    while answers["429"].status_code != 429:  # the key's five a minute run out
        answers["429"] = limited.get("/model", headers=key)
    for name, r in answers.items():
        assert r.headers["x-content-type-options"] == "nosniff", name
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, name
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    # No page carries an inline script or style: everything is a file from this server.
    for page in ("/", "/docs", "/redoc"):
        html = answers[page].text
        assert "<script>" not in html and "<style" not in html and " style=" not in html, page


def test_streams_beyond_max_streams_are_closed_with_1013(limited):
    with limited.websocket_connect("/stream") as one, limited.websocket_connect("/stream") as two:
        assert one.receive_json()["type"] == two.receive_json()["type"] == "ready"
        with limited.websocket_connect("/stream") as third:
            error = third.receive_json()
            assert error == {
                "type": "error",
                "message": "server busy: 2 live streams are open (setting max_streams); "
                "try again later",
            }
            with pytest.raises(WebSocketDisconnect) as closed:
                third.receive_json()
            assert closed.value.code == 1013
        load = limited.get("/health").json()["load"]
        assert (load["streams_open"], load["streams_refused"]) == (2, 1)
    # Once they close, their places are free again.
    with limited.websocket_connect("/stream") as again:
        assert again.receive_json()["type"] == "ready"


def test_a_silent_stream_is_closed_with_1008_and_a_talking_one_is_not(limited):
    with limited.websocket_connect("/stream") as talking:
        assert talking.receive_json()["type"] == "ready"
        for _ in range(6):  # 1.8 s in all, never 1 s without a message
            talking.send_bytes(pcm(0.3))
            time.sleep(0.3)
        talking.send_json({"type": "end"})
        kinds = []
        while not kinds or kinds[-1] != "end":
            kinds.append(talking.receive_json()["type"])
        assert "error" not in kinds
    with limited.websocket_connect("/stream") as silent:
        assert silent.receive_json()["type"] == "ready"
        started = time.monotonic()
        error = silent.receive_json()
        waited = time.monotonic() - started
        assert error["type"] == "error"
        assert error["message"] == (
            "no message for 1 s (setting stream_idle_seconds); closing the idle stream"
        )
        with pytest.raises(WebSocketDisconnect) as closed:
            silent.receive_json()
        assert closed.value.code == 1008
    assert waited >= 1.0  # not before its time


# ------------------------------------------------------------------ refused before decoding
def long_clip(seconds: float, format: str) -> bytes:
    """``seconds`` of silence in ``format``, written a minute at a time (small files:
    silence compresses to almost nothing)."""
    buf = io.BytesIO()
    subtype = "VORBIS" if format == "OGG" else None
    with sf.SoundFile(buf, "w", RATE, 1, format=format, subtype=subtype) as out:
        for _ in range(int(seconds // 60)):
            out.write(silence(60.0))
    return buf.getvalue()


def traced_peak_bytes(client: TestClient, data: bytes, key: str) -> tuple[int, int]:
    """POST ``data`` to /predict as API key ``key``: its status and the most memory
    Python code held at once while it was answered (numpy arrays included), above what
    was held before."""
    files = {"file": ("long", data, "application/octet-stream")}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        r = client.post("/predict", files=files, headers={"x-test-key": key})
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    return r.status_code, peak


@pytest.mark.parametrize("format", ["FLAC", "OGG"])
def test_over_long_clips_are_refused_from_their_header_without_decoding(limited, format):
    # Decoding a clip of one minute holds at least its samples as float32: the
    # measurement sees decoding when it happens ...
    minute = long_clip(60, format)
    status, decoded_peak = traced_peak_bytes(limited, minute, format)
    assert status == 200 and decoded_peak >= 60 * RATE * 4, decoded_peak
    # ... and refusing a clip of an hour (max_clip_seconds is 120) holds less than the
    # minute did, though its samples would take 60 times as much.
    hour = long_clip(3600, format)
    assert len(hour) < 10 * 2**20 and len(hour) < 60 * RATE * 4
    status, refused_peak = traced_peak_bytes(limited, hour, format)
    assert status == 422
    assert refused_peak < decoded_peak, (refused_peak, decoded_peak)


# ------------------------------------------------------------------ a real server flooded
ACTIVE, QUEUE, FLOOD = 2, 2, 8


@pytest.fixture(scope="module")
def flooded_server(run_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("flood")
    settings = folder / "limits.yaml"
    settings.write_text(
        yaml.safe_dump(
            {"max_active_uploads": ACTIVE, "upload_queue": QUEUE, "rate_limit_per_minute": 0}
        )
    )
    log = folder / "serve.log"
    with serving_process(run_dir, log, "--settings", str(settings), "--log-level", "warning") as (
        url,
        proc,
    ):
        yield url, proc


def poll_health(url: str, stop: threading.Event, seen: list[int]) -> None:
    while not stop.is_set():
        try:
            seen.append(httpx.get(f"{url}/health", timeout=10).status_code)
        except httpx.HTTPError:
            seen.append(0)
        stop.wait(0.1)


@pytest.mark.slow
def test_a_flood_of_large_uploads_is_decoded_k_at_a_time_in_bounded_memory(flooded_server):
    url, proc = flooded_server
    defaults = ServingSettings()
    _, body = largest_wav(defaults.max_upload_mb, defaults.max_clip_seconds)
    assert len(body) > 9 * 2**20

    def post(_: int) -> httpx.Response:
        files = {"file": ("large.wav", body, "audio/wav")}
        return httpx.post(f"{url}/predict", files=files, timeout=300)

    assert post(0).status_code == 200  # first-use allocations, not measured
    alone = []
    for _ in range(2):
        with PeakMemory(proc.pid) as memory:
            assert post(0).status_code == 200
        alone.append(memory.added_mb)
    per_upload = max(alone)
    assert per_upload > 20  # a 10 MiB WAV decodes to tens of MB: the figure means something

    stop, health = threading.Event(), []
    watcher = threading.Thread(target=poll_health, args=(url, stop, health))
    with PeakMemory(proc.pid) as flood, ThreadPoolExecutor(FLOOD) as pool:
        watcher.start()
        answers = list(pool.map(post, range(FLOOD)))
    stop.set()
    watcher.join()

    statuses = [r.status_code for r in answers]
    load = httpx.get(f"{url}/health").json()["load"]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= ACTIVE and statuses.count(503) >= 1, statuses
    assert statuses.count(503) == load["uploads_refused"]
    for r in answers:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            assert "max_active_uploads" in r.json()["detail"]
    # At most ACTIVE decoded at once, as the decoder itself counted.
    assert load["decoding_peak"] <= ACTIVE and load["uploads_active_peak"] <= ACTIVE
    # /health answered all along.
    assert len(health) >= 3 and set(health) == {200}, health
    # Memory grew by about ACTIVE uploads' worth, not FLOOD's.
    assert flood.added_mb <= (ACTIVE + 1) * per_upload, (flood.added_mb, per_upload)


# ------------------------------------------------------------------ the pages in Chromium
VIOLATIONS = """() => {
    window.cspViolations = [];
    document.addEventListener('securitypolicyviolation', e =>
        window.cspViolations.push(`${e.effectiveDirective} ${e.blockedURI}`));
}"""


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")
@pytest.mark.skipif(sync_playwright is None, reason="playwright not installed")
def test_the_pages_work_in_chromium_under_their_content_security_policy(run_dir, tmp_path):
    settings = tmp_path / "page.yaml"
    settings.write_text(yaml.safe_dump({"stream_window": 1.0, "stream_hop": 0.5}))
    log = tmp_path / "serve.log"
    with (
        serving_process(run_dir, log, "--settings", str(settings)) as (url, _),
        sync_playwright() as p,
    ):
        chromium = launch(p, microphone_clip(tmp_path / "microphone.wav"))
        try:
            seen = {}
            for path, ready in [
                ("/", "body[data-ready='1']"),
                ("/docs", ".opblock-summary-path[data-path='/predict']"),
                ("/redoc", "[data-section-id^='operation/']"),
            ]:
                page = open_offline(chromium, f"{url}{path}", wait_for_ready=False)
                page.add_init_script(f"({VIOLATIONS})()")
                page.reload()
                page.wait_for_selector(ready, timeout=60_000)
                if path == "/":  # the live stream connects and answers under the policy
                    page.click("#start")
                    page.wait_for_function(
                        "() => Number(document.body.dataset.silences || 0) >= 1", timeout=60_000
                    )
                    page.click("#stop")
                seen[path] = page.evaluate("window.cspViolations")
                # ReDoc asks a CDN for the vendor's logo: blocked, and nothing else is.
                left = [p for p in problems(page) if "cdn.redoc.ly" not in p]
                assert left == [], (path, left)
        finally:
            chromium.close()
    assert seen["/"] == [] and seen["/docs"] == []
    assert all(v.startswith("img-src https://cdn.redoc.ly/") for v in seen["/redoc"]), seen


def test_refusals_keep_their_json_shape_under_the_limits(predictor):
    """A too-large upload still gets its 413 (inside the admission limit), with the
    headers every answer has."""
    settings = ServingSettings(max_batch_windows=1, max_upload_mb=0.01)
    with TestClient(create_app(predictor, settings=settings)) as client:
        big = encode(np.zeros(RATE, np.float32))  # 32 kB > 10 kB
        r = client.post("/predict", files={"file": ("big.wav", big, "audio/wav")})
    assert r.status_code == 413 and "max_upload_mb" in r.json()["detail"]
    assert r.headers["x-content-type-options"] == "nosniff"


# ------------------------------------------------------------------ the report
def test_the_abuse_table_is_generated_with_a_place_kept_for_session_guessing(tmp_path):
    generator = ROOT / "docs" / "generators" / "robustness_report.py"
    log = tmp_path / "r.jsonl"
    log.write_text('{"table": "inputs", "row": "stereo", "column": "HTTP API", "outcome": "200"}')
    ours = tmp_path / "abuse.json"
    flood = {"scenario": "80 uploads at once", "sent": 80, "outcome": "200 ×36, 503 ×44"}
    flood |= {"peak_rss_mb": 1504.2, "p95_ms": 12463.8, "health": "answered 9/9"}
    ours.write_text(
        json.dumps({"model_id": "m@1", "limits": {"uploads_limit": 4}, "rows": [flood]})
    )
    theirs = tmp_path / "sessions.json"
    guessing = {"scenario": "session guessing: 10,000 ids", "outcome": "401 ×10000"}
    theirs.write_text(json.dumps({"rows": [guessing]}))

    def table(*abuse: Path) -> list[str]:
        out = tmp_path / "ROBUSTNESS.md"
        options = [a for path in abuse for a in ("--abuse", str(path))]
        command = [sys.executable, str(generator), str(log), *options, "--out", str(out)]
        subprocess.run(command, check=True, capture_output=True, timeout=60)
        text = out.read_text(encoding="utf-8")
        return text[text.index("## load and abuse") :].splitlines()

    alone = table(ours)
    assert f"From `{ours}`: model_id m@1, uploads_limit 4." in alone
    header = next(i for i, row in enumerate(alone) if row.startswith("| scenario"))
    assert alone[header + 2 :] == [
        "| 80 uploads at once | 80 | 200 ×36, 503 ×44 | 1504.2 | — | 12463.8 | answered 9/9 | — |",
        (
            "| session guessing (place kept) | — | — | — | — | — | — | not measured yet: the "
            "API-key and session bench adds this row (`--abuse` its JSON) |"
        ),
    ]
    both = table(ours, theirs)
    assert "| session guessing: 10,000 ids | — | 401 ×10000 | — | — | — | — | — |" in both
    assert not any("place kept" in row for row in both)
    missing = tmp_path / "nowhere.json"
    assert f"No abuse result yet: `{missing}` does not exist." in table(missing)


@pytest.mark.slow
def test_the_abuse_bench_floods_a_real_server_and_its_rows_render(run_dir, tmp_path):
    out = tmp_path / "abuse.json"
    options = ["--multiples", "1,3", "--rounds", "1", "--repeat", "1", "--max-active-uploads"]
    options += ["1", "--upload-queue", "1", "--max-streams", "2", "--stream-idle-seconds", "1"]
    command = [sys.executable, "-m", "bench.abuse", str(run_dir), *options, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    rows = {row["scenario"].split(" (")[0].split(":")[0]: row for row in result["rows"]}
    assert rows["1 uploads at once"]["statuses"] == {"200": 1}
    flood = rows["3 uploads at once"]  # one served, one queued, one refused
    assert flood["statuses"] == {"200": 2, "503": 1} and flood["decoding_peak"] == 1
    assert rows["4 live streams at once"]["statuses"] == {"closed 1000": 2, "closed 1013": 2}
    assert rows["2 live streams sending nothing"]["statuses"] == {"closed 1008": 2}
    alone = [r for r in result["rows"] if r["scenario"].startswith("one upload at a time")]
    assert len(alone) == 2 and all(r["statuses"] == {"200": 1} for r in alone)
    assert result["per_upload_mb"] == max(r["rss_added_mb"] for r in alone) > 0
