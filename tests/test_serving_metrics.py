"""``GET /metrics`` and ``GET /ready``: the counts after a known set of requests, the API
key, worker processes adding up their counts, and readiness after the warm-up.

The in-process tests use TestClient on a fresh app; the worker test starts a real
``uvicorn --workers 2`` on a loopback port, the readiness test a real ``ser serve``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.parser import text_string_to_metric_families

from ser.serving.app import create_app
from ser.serving.auth import APIKeys
from ser.serving.metrics import MULTIPROCESS_ENV, prepare_multiprocess_metrics
from ser.serving.settings import ServingSettings
from tests.support import free_port
from tests.support.scrape import http, samples, value
from tests.support.servers import STARTUP_SECONDS, server_process
from tests.support.signals import gliding_tone
from tests.support.tiny_app import RUN_DIR_ENV
from tests.support.tiny_run import encode, silence

SETTINGS = ServingSettings(max_batch_windows=8, stream_window=1.0, stream_hop=0.5)
KEY = "metrics-test-key-0123456789"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
CREATED = (
    "ser_http_request_duration_seconds",
    "ser_http_requests",
    "ser_model_batch_windows",
    "ser_request_windows",
    "ser_no_speech_answers",
)


def clip_windows(prediction: dict) -> int:
    """Windows the model saw for one answered clip."""
    if prediction["type"] == "no_speech":
        return 0
    return len(prediction["timeline"]) if prediction["windowed"] else 1


def speech(seconds: float, seed: int) -> tuple[str, bytes, str]:
    return (f"speech{seed}.wav", encode(gliding_tone(seconds, seed=seed)), "audio/wav")


# ---------------------------------------------------------------------- in process
@pytest.fixture(scope="module")
def scraped(predictor):
    """The scrape after: 3 speech clips (one with ?session=new), 1 silent clip, 1 file
    that is not audio (415), 1 batch of 2 speech clips, 2 POST /sessions, 1 unknown
    path; plus the engine's counters, the predictions and a scrape taken with a stream
    open."""
    with TestClient(create_app(predictor, settings=SETTINGS)) as client:
        answers = [
            client.post("/predict", files={"file": speech(1.5, 1)}),
            client.post("/predict", files={"file": speech(2.5, 2)}),
            client.post("/predict?session=new", files={"file": speech(1.0, 3)}),
            client.post(
                "/predict", files={"file": ("quiet.wav", encode(silence(1.0)), "audio/wav")}
            ),
        ]
        refused = client.post(
            "/predict", files={"file": ("notes.wav", b"not audio" * 50, "audio/wav")}
        )
        batch = client.post(
            "/predict/batch", files=[("files", speech(1.2, 4)), ("files", speech(3.0, 5))]
        )
        sessions = [client.post("/sessions") for _ in range(2)]
        unknown = client.get("/no/such/page?x=1")
        with client.websocket_connect("/stream") as ws:
            assert ws.receive_json()["type"] == "ready"
            during_stream = samples(client.get("/metrics").text)
        health = client.get("/health").json()
        response = client.get("/metrics")
    assert [a.status_code for a in answers] == [200] * 4
    assert (refused.status_code, batch.status_code, unknown.status_code) == (415, 200, 404)
    assert [s.status_code for s in sessions] == [201, 201]
    predictions = [a.json() for a in answers] + [i["prediction"] for i in batch.json()["results"]]
    return {
        "response": response,
        "metrics": samples(response.text),
        "during_stream": during_stream,
        "health": health,
        "predictions": predictions,
    }


def test_metrics_are_prometheus_text_with_the_ser_names(scraped):
    response = scraped["response"]
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    families = {f.name for f in text_string_to_metric_families(response.text)}
    # One process also shows when each counter and histogram was created (workers do not).
    assert families == {f"{name}_created" for name in CREATED} | {
        "ser_http_request_duration_seconds",
        "ser_http_requests",
        "ser_model_batch_windows",
        "ser_request_windows",
        "ser_no_speech_answers",
        "ser_active_sessions",
        "ser_open_streams",
        "ser_model_info",
    }


def test_requests_are_counted_per_route_template_method_and_status(scraped):
    m = scraped["metrics"]
    expected = {
        ("/predict", "POST", 200): 4,  # ?session=new counted under the template
        ("/predict", "POST", 415): 1,
        ("/predict/batch", "POST", 200): 1,
        ("/sessions", "POST", 201): 2,
        ("unmatched", "GET", 404): 1,
        ("/metrics", "GET", 200): 1,  # the scrape during the stream; not this one
        ("/health", "GET", 200): 1,
    }
    for (route, method, status), count in expected.items():
        labels = http(route, method, status)
        assert value(m, "ser_http_requests_total", **labels) == count, labels
        assert value(m, "ser_http_request_duration_seconds_count", **labels) == count, labels
        inf = value(m, "ser_http_request_duration_seconds_bucket", **labels, le="+Inf")
        assert inf == count, labels
    counted = sum(v for (name, _), v in m.items() if name == "ser_http_requests_total")
    assert counted == sum(expected.values())  # and nothing else (no raw paths, no stream)


def test_no_speech_windows_and_model_batches(scraped):
    m, predictions, health = scraped["metrics"], scraped["predictions"], scraped["health"]
    assert [p["type"] for p in predictions].count("no_speech") == 1
    assert value(m, "ser_no_speech_answers_total") == 1
    per_clip = [clip_windows(p) for p in predictions]
    assert sum(per_clip) > len(predictions)  # some clips are several windows long
    # One observation per prediction request: 4 uploads and 1 batch (not the 415).
    assert value(m, "ser_request_windows_count") == 5
    assert value(m, "ser_request_windows_sum") == sum(per_clip)
    assert value(m, "ser_request_windows_bucket", le="0.0") == 1  # the silent clip
    # The model calls: as many as the engine made, holding every window.
    assert value(m, "ser_model_batch_windows_count") == health["inference_batches"] >= 4
    assert value(m, "ser_model_batch_windows_sum") == health["inference_windows"] == sum(per_clip)
    assert value(m, "ser_model_batch_windows_bucket", le="8.0") == health["inference_batches"]


def test_sessions_streams_and_model_info(scraped, predictor):
    m, during = scraped["metrics"], scraped["during_stream"]
    assert value(m, "ser_active_sessions") == 3  # ?session=new and two POST /sessions
    assert value(during, "ser_open_streams") == 1
    assert value(m, "ser_open_streams") == 0
    info = {
        "model_id": predictor.model_id,
        "model_type": "lstm",
        "runtime": predictor.runtime,
    }
    assert value(m, "ser_model_info", **info) == 1
    assert [name for name, _ in m if name == "ser_model_info"] == ["ser_model_info"]


def ready_after_warm_up(client: TestClient, seconds: float = 60.0) -> int:
    """``GET /ready`` repeated while it answers 503 (the inference thread may still be
    warming the model up on a busy machine); the first other status."""
    deadline = time.monotonic() + seconds
    while (status := client.get("/ready").status_code) == 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    return status


def test_metrics_need_the_api_key_when_keys_are_configured(predictor):
    with TestClient(create_app(predictor, settings=SETTINGS, api_keys=APIKeys([KEY]))) as c:
        refused = c.get("/metrics")
        assert refused.status_code == 401
        assert ready_after_warm_up(c) == 200  # probes carry no key
        answer = c.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
        assert answer.status_code == 200
        m = samples(answer.text)
        assert value(m, "ser_http_requests_total", **http("/metrics", "GET", 401)) == 1
        assert value(m, "ser_http_requests_total", **http("/ready", "GET", 200)) == 1
        schema = c.get("/openapi.json").json()
    assert schema["paths"]["/metrics"]["get"]["security"] == [{"APIKey": []}]
    assert "security" not in schema["paths"]["/ready"]["get"]


def test_ready_answers_200_with_the_warm_up_after_start_up(predictor):
    with TestClient(create_app(predictor, settings=SETTINGS)) as c:
        c.post("/predict", files={"file": speech(1.0, 7)})  # waits for the warm-up
        ready = c.get("/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready" and body["model_id"] == predictor.model_id
    assert body["warm_up_seconds"] >= 0 and body["detail"] is None


# ---------------------------------------------------------------------- real servers
def requests_per_worker(directory: Path, route: str) -> dict[str, float]:
    """{worker pid: 200 answers on ``route``} read from each worker's own counter file."""
    counts = {}
    for file in sorted(directory.glob("counter_*.db")):
        alone = directory.parent / f"alone-{file.stem}"
        alone.mkdir(exist_ok=True)
        shutil.copy(file, alone / file.name)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, str(alone))
        scraped = samples(generate_latest(registry).decode())
        counts[file.stem.split("_")[1]] = value(
            scraped, "ser_http_requests_total", **http(route, "POST", 200)
        )
        shutil.rmtree(alone)
    return counts


def requests_per_worker_once_counted(
    directory: Path, route: str, answered: int, seconds: float = 10.0
) -> dict[str, float]:
    """``requests_per_worker`` once the workers' counts add up to the ``answered``
    requests, or after ``seconds``: a worker counts a request as its response goes
    out, so the client may hold the last answers a moment before their counts land."""
    deadline = time.monotonic() + seconds
    while True:
        counts = requests_per_worker(directory, route)
        if sum(counts.values()) >= answered or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


@pytest.mark.slow
def test_two_worker_processes_add_up_their_counts(run_dir, tmp_path):
    env = {**ENV, RUN_DIR_ENV: str(run_dir)}
    directory = prepare_multiprocess_metrics(tmp_path / "metrics", env)
    assert env[MULTIPROCESS_ENV] == str(directory) and MULTIPROCESS_ENV not in os.environ
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "tests.support.tiny_app:tiny_app", "--factory"]
    command += ["--workers", "2", "--port", str(port), "--log-level", "warning"]
    sent = 0
    with server_process(command, port, tmp_path / "uvicorn.log", env=env) as (url, proc):
        body = encode(gliding_tone(1.0))

        def predict(_: int) -> int:  # a new connection each, for either worker to take
            files = {"file": ("a.wav", body, "audio/wav")}
            return httpx.post(f"{url}/predict", files=files, timeout=60).status_code

        with ThreadPoolExecutor(4) as pool:
            # Bounded: until both workers have answered some, at most 48 requests.
            while sent < 48:
                assert list(pool.map(predict, range(8))) == [200] * 8
                sent += 8
                served = requests_per_worker_once_counted(directory, "/predict", sent)
                if len(served) == 2 and min(served.values()) > 0:
                    break
        scraped = samples(httpx.get(f"{url}/metrics", timeout=30).text)
    assert proc.returncode == 0  # stopped gracefully: the workers ran their shut-down
    assert len(served) == 2 and min(served.values()) > 0, f"one worker took all: {served}"
    assert sum(served.values()) == sent
    assert value(scraped, "ser_http_requests_total", **http("/predict", "POST", 200)) == sent
    assert value(scraped, "ser_request_windows_count") == sent
    assert value(scraped, "ser_model_batch_windows_sum") == sent  # 1 s: one window each
    info = [labels for name, labels in scraped if name == "ser_model_info"]
    assert len(info) == 1 and dict(info[0])["model_id"].startswith("tiny-lstm@")
    # Stopped workers left the gauges' sums (mark_worker_dead); their counts stay.
    assert not list(directory.glob("gauge_live*.db"))
    assert len(list(directory.glob("counter_*.db"))) == 2


@pytest.mark.slow
def test_ready_is_503_while_keras_compiles_and_health_answers(run_dir, tmp_path):
    port, log = free_port(), tmp_path / "serve.log"
    command = [sys.executable, "-m", "ser.cli", "serve", str(run_dir), "--port", str(port)]
    command += ["--runtime", "keras", "--log-level", "warning"]
    seen = []
    with server_process(command, port, log, wait_for="/health", env=ENV) as (url, _):
        deadline = time.time() + STARTUP_SECONDS
        while time.time() < deadline:
            ready = httpx.get(f"{url}/ready", timeout=10)
            health = httpx.get(f"{url}/health", timeout=10)
            seen.append((health.status_code, ready.status_code, ready.json()["status"]))
            if ready.status_code == 200:
                break
            time.sleep(0.05)
        warmed = ready.json()
    assert (200, 503, "warming_up") in seen, seen
    assert seen[-1] == (200, 200, "ready"), seen
    assert warmed["runtime"] == "keras" and warmed["warm_up_seconds"] > 0
    assert log.read_text().count("(Keras); GET /ready answers 200 once it is warmed up") == 1
