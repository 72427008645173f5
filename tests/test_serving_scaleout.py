"""``ser serve --workers N --session-store redis://...``: worker processes sharing
speaker sessions through a real ``redis-server``.

The store is checked alone (``RedisSessionStore`` against the server: tokens never
stored, owners, statistics equal to an in-memory session's, concurrent counting, idle
expiry, ``max_sessions``, an outage), then through real ``ser serve --workers 2``
processes: one session's clips answered by both workers, normalised exactly as one
process's in-memory session normalises them; clips sent at once from several
connections all counted; Redis stopped and started again; a session surviving a
restart of the whole server and then ending when idle.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from ser.inference import Predictor
from ser.serving.sessions import MemorySessionStore, SessionEnded, SessionStoreUnavailable
from ser.serving.shared_sessions import RedisSessionStore
from tests.support.scrape import http, samples, value
from tests.support.servers import RedisServer, ser_command, serving
from tests.support.signals import speech_like
from tests.support.tiny_run import encode, train_speaker_normalised

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is not installed (Debian package redis-server; .ci/run installs it)",
)
redis = pytest.importorskip("redis", reason="the Python package 'redis' (ser[redis])")

CLIPS = 8


def clip(seed: int) -> bytes:
    """A 1 s speech-like clip (one window of the model), different for every seed."""
    return encode(speech_like(1.0, hz=120.0 + 10 * seed, seed=seed))


@pytest.fixture(scope="module")
def speaker_run(tmp_path_factory) -> Path:
    """A tiny dense run normalised per speaker, so sessions carry statistics."""
    work = tmp_path_factory.mktemp("speaker-run")
    return Path(train_speaker_normalised(work, **{"train.run_name": "tiny-speaker"})[1]["run_dir"])


@pytest.fixture(scope="module")
def speaker_predictor(speaker_run) -> Predictor:
    return Predictor.load(speaker_run)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis") / "redis.log").start()
    try:
        yield server
    finally:
        server.stop()


def redis_store(url: str, predictor: Predictor, namespace: str, **kw) -> RedisSessionStore:
    options = {"limit": 100, "idle_seconds": 60.0, **kw}
    return RedisSessionStore(url, predictor.new_session, namespace=namespace, **options)


def count_clip(store, session, predictor: Predictor, wave: np.ndarray) -> int:
    """Count one clip into ``session`` through ``store``; the session's count after it."""
    return store.update_speaker(session, lambda s: predictor.prepare_speech(wave, session=s))[1]


# ---------------------------------------------------------------------- the store
def test_redis_sessions_keep_no_token_and_answer_only_their_owner(redis_server, speaker_predictor):
    store = redis_store(redis_server.url, speaker_predictor, "owners")
    session = store.create("alpha")
    assert session.speaker is not None and session.speaker.count == 0
    assert store.find(session.token, "alpha").token == session.token
    assert store.find(session.token, "bravo") is None  # another key's: like unknown
    assert store.find(session.token, None) is None
    assert store.find("x" * 22, "alpha") is None
    client = redis.Redis.from_url(redis_server.url)
    stored = [k for k in client.keys("ser:owners:*")]
    values = [client.hgetall(k) for k in stored if client.type(k) == b"hash"]
    assert stored and not any(session.token.encode() in k for k in stored)
    assert not any(session.token.encode() in v for h in values for v in h.values())
    assert len(store) == 1


def test_redis_sessions_of_a_model_without_speaker_normalisation_hold_no_statistics(
    redis_server,
):
    store = RedisSessionStore(
        redis_server.url, lambda: None, limit=10, idle_seconds=60, namespace="plain"
    )
    session = store.create(None)
    assert session.speaker is None and store.find(session.token, None).speaker is None
    fields = redis.Redis.from_url(redis_server.url).hgetall(_keys(redis_server, "plain:session")[0])
    assert set(fields) == {b"owner", b"count"}


def test_a_session_store_setting_must_be_a_redis_url():
    from ser.config import ConfigError
    from ser.serving.settings import load_settings

    assert load_settings(session_store="redis://:pw@127.0.0.1:6390/2").session_store
    for url, reason in [
        ("http://127.0.0.1:6379", "not a Redis URL"),
        ("redis://", "not a Redis URL"),
        ("redis://:secret@127.0.0.1:6379/zero", "must be a number"),
        ("redis://:secret@127.0.0.1:63x9/0", "port must be a number"),
    ]:
        with pytest.raises(ConfigError, match=reason) as caught:
            load_settings(session_store=url)
        assert "secret" not in str(caught.value)


def test_redis_statistics_equal_an_in_memory_session(redis_server, speaker_predictor):
    memory = MemorySessionStore(speaker_predictor.new_session, 10, 60)
    shared = redis_store(redis_server.url, speaker_predictor, "equal")
    remote, local = shared.create(None), memory.create(None)
    for seed in range(5):
        wave = speech_like(1.0, hz=120.0 + 10 * seed, seed=seed)
        # A fresh lookup each time, as each request makes (another worker could answer).
        counts = [
            count_clip(shared, shared.find(remote.token, None), speaker_predictor, wave),
            count_clip(memory, memory.find(local.token, None), speaker_predictor, wave),
        ]
        assert counts == [seed + 1, seed + 1]
    mine = memory.find(local.token, None).speaker.normaliser()
    theirs = shared.find(remote.token, None).speaker.normaliser()
    np.testing.assert_array_equal(theirs.mean, mine.mean)
    np.testing.assert_array_equal(theirs.std, mine.std)


def test_two_stores_counting_into_one_session_at_once_lose_no_clip(redis_server, speaker_predictor):
    # Two stores: two workers' clients of one Redis.
    stores = [redis_store(redis_server.url, speaker_predictor, "race") for _ in range(2)]
    token = stores[0].create(None).token
    waves = [speech_like(1.0, seed=seed) for seed in range(12)]

    def add(i: int) -> int:
        store = stores[i % 2]
        return count_clip(store, store.find(token, None), speaker_predictor, waves[i])

    with ThreadPoolExecutor(6) as pool:
        counts = list(pool.map(add, range(len(waves))))
    assert sorted(counts) == list(range(1, len(waves) + 1))  # each count once: none lost
    assert stores[1].find(token, None).speaker.count == len(waves)


def test_redis_sessions_end_when_idle_and_beyond_max_sessions(redis_server, speaker_predictor):
    predictor = speaker_predictor
    idle = redis_store(redis_server.url, predictor, "idle", idle_seconds=0.3)
    token = idle.create(None).token
    time.sleep(0.6)
    assert idle.find(token, None) is None and len(idle) == 0
    few = redis_store(redis_server.url, predictor, "few", limit=2)
    first, second = few.create(None).token, few.create(None).token
    time.sleep(0.01)  # Redis's clock orders the uses by the millisecond
    assert few.find(first, None) is not None  # used: second is now the oldest
    time.sleep(0.01)
    third = few.create(None).token
    assert few.find(second, None) is None
    assert few.find(first, None) is not None and few.find(third, None) is not None
    assert len(few) == 2


def test_a_session_that_ended_while_in_use_is_reported(redis_server, speaker_predictor):
    store = redis_store(redis_server.url, speaker_predictor, "ended")
    session = store.create(None)
    redis.Redis.from_url(redis_server.url).delete(*[k for k in _keys(redis_server, "ended")])
    with pytest.raises(SessionEnded):
        count_clip(store, session, speaker_predictor, speech_like(1.0))


def test_an_unreachable_store_says_which_and_why(tmp_path, speaker_predictor):
    predictor = speaker_predictor
    down = RedisServer(tmp_path / "redis.log")  # never started: nothing listens there
    store = redis_store(down.url, predictor, "down")
    with pytest.raises(SessionStoreUnavailable) as caught:
        store.create(None)
    message = str(caught.value)
    assert f"session store redis://127.0.0.1:{down.port}/0 unavailable" in message
    assert "requests without ?session= are served as usual" in message


def test_a_redis_that_hangs_fails_a_session_call_instead_of_holding_it(tmp_path, speaker_predictor):
    hung = RedisServer(tmp_path / "redis.log").start()
    try:
        store = redis_store(hung.url, speaker_predictor, "hung")
        token = store.create(None).token
        hung.proc.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
        try:
            with pytest.raises(SessionStoreUnavailable, match="[Tt]imeout"):
                store.find(token, None)
        finally:
            hung.proc.send_signal(signal.SIGCONT)
        assert store.find(token, None) is not None  # answering again
    finally:
        hung.stop()


def test_a_serving_process_warms_the_model_up_once(speaker_run, monkeypatch):
    from fastapi.testclient import TestClient

    from ser.serving.app import create_app
    from ser.serving.settings import ServingSettings
    from ser.serving.workers import loaded_predictor

    warmed = []
    real = Predictor.warm_up
    monkeypatch.setattr(Predictor, "warm_up", lambda self, *a: warmed.append(real(self, *a)))
    predictor = loaded_predictor(str(speaker_run), ServingSettings(), "auto", say=lambda _: None)
    assert warmed == []  # loading does not warm up: the app's inference thread does
    with TestClient(create_app(predictor, tuned=True)) as client:
        files = {"file": ("a.wav", clip(0), "audio/wav")}
        assert client.post("/predict", files=files).status_code == 200  # after the warm-up
        assert client.get("/ready").json()["status"] == "ready"
    assert len(warmed) == 1


def _keys(server: RedisServer, namespace: str) -> list[bytes]:
    return redis.Redis.from_url(server.url).keys(f"ser:{namespace}:*")


# ---------------------------------------------------------------------- ser serve
def test_several_workers_need_a_shared_session_store(speaker_run):
    proc = ser_command("serve", str(speaker_run), "--workers", "2", timeout=120)
    assert proc.returncode == 2
    assert "speaker sessions would be split across the workers" in proc.stderr
    assert "--session-store" in proc.stderr


def test_a_redis_session_store_without_the_package_is_a_clear_error(speaker_run, tmp_path):
    # A 'redis' package that cannot be imported, first on the path.
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / "__init__.py").write_text("raise ImportError('no redis here')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    store = "redis://:secret@127.0.0.1:1/0"
    proc = ser_command("serve", str(speaker_run), "--session-store", store, env=env)
    assert proc.returncode == 2
    assert "error: session_store redis://127.0.0.1:1/0: needs the Python package 'redis'" in (
        proc.stderr
    )
    assert "secret" not in proc.stderr + proc.stdout


@pytest.fixture(scope="module")
def workers(speaker_run, redis_server, tmp_path_factory):
    log = tmp_path_factory.mktemp("workers") / "serve.log"
    options = ["--workers", "2", "--session-store", redis_server.url, "--log-level", "warning"]
    with serving(speaker_run, log, *options) as url:
        yield url, log


def worker_connections(url: str, tries: int = 60) -> dict[int, httpx.Client]:
    """One open keep-alive connection to each of the two workers: new connections are
    opened until both worker pids have answered /health (the pid is the process's)."""
    found: dict[int, httpx.Client] = {}
    for _ in range(tries):
        client = httpx.Client(base_url=url, limits=httpx.Limits(max_connections=1), timeout=30)
        pid = client.get("/health").json()["worker_pid"]
        if pid in found:
            client.close()
        else:
            found[pid] = client
        if len(found) == 2:
            return found
    pytest.fail(f"{tries} new connections all reached worker(s) {sorted(found)}")


def answered_by(client: httpx.Client) -> int:
    """The pid of the worker at the other end of ``client``'s one connection."""
    return client.get("/health").json()["worker_pid"]


def test_one_session_across_workers_is_normalised_as_in_one_process(workers, speaker_run):
    from fastapi.testclient import TestClient

    from ser.serving.app import create_app

    url, log = workers
    text = log.read_text()
    assert "speaker sessions: shared in Redis at redis://127.0.0.1:" in text
    assert text.count("(ONNX Runtime); GET /ready answers") == 2  # each worker loaded it once
    connections = worker_connections(url)
    pids, clients = list(connections), list(connections.values())
    token = clients[0].post("/sessions").json()["session"]
    served, by = [], []
    for i in range(CLIPS):
        client = clients[i % 2]
        files = {"file": (f"{i}.wav", clip(i), "audio/wav")}
        r = client.post("/predict", params={"session": token}, files=files)
        assert r.status_code == 200, r.text
        served.append(r.json())
        by.append(answered_by(client))  # the same connection: the same worker
    assert set(by) == set(pids)
    with TestClient(create_app(Predictor.load(speaker_run))) as alone:
        own = alone.post("/sessions").json()["session"]
        expected = [
            alone.post(
                "/predict",
                params={"session": own},
                files={"file": (f"{i}.wav", clip(i), "audio/wav")},
            ).json()
            for i in range(CLIPS)
        ]
    assert [p["session_clips"] for p in served] == list(range(1, CLIPS + 1))
    for got, want in zip(served, expected, strict=True):
        assert got["session_clips"] == want["session_clips"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)
        assert got["emotion"] == want["emotion"]
    for client in clients:
        client.close()


def test_metrics_add_up_the_requests_both_workers_answered(workers):
    url, _ = workers
    predicted = http("/predict", "POST", 200)
    before = value(
        samples(httpx.get(f"{url}/metrics").text), "ser_http_requests_total", **predicted
    )
    connections = worker_connections(url)
    for client in connections.values():  # two requests answered by each worker
        for i in range(2):
            files = {"file": (f"{i}.wav", clip(i), "audio/wav")}
            assert client.post("/predict", files=files).status_code == 200
    assert httpx.post(f"{url}/sessions").status_code == 201
    scraped = samples(httpx.get(f"{url}/metrics").text)
    for client in connections.values():
        client.close()
    assert value(scraped, "ser_http_requests_total", **predicted) == before + 4
    assert value(scraped, "ser_active_sessions") >= 1  # the shared store, all workers' sessions
    info = [dict(labels) for name, labels in scraped if name == "ser_model_info"]
    assert len(info) == 1 and info[0]["runtime"] == "onnx"


def test_a_batch_counts_each_file_into_the_shared_session(workers):
    url, _ = workers
    files = [("files", (f"{i}.wav", clip(i), "audio/wav")) for i in range(3)]
    r = httpx.post(f"{url}/predict/batch", params={"session": "new"}, files=files, timeout=60)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [item["prediction"]["session_clips"] for item in results] == [1, 2, 3]


def test_the_default_upload_slots_are_shared_among_the_workers(workers):
    url, _ = workers
    limit = httpx.get(f"{url}/health").json()["load"]["uploads_limit"]
    assert 1 <= limit <= max(1, 2 * (os.cpu_count() or 1) // 2)  # two per core, halved


def test_clips_sent_at_once_from_many_connections_are_all_counted(workers):
    url, _ = workers
    token = httpx.post(f"{url}/sessions").json()["session"]

    def send(i: int) -> int:
        files = {"file": (f"{i}.wav", clip(i), "audio/wav")}
        with httpx.Client(base_url=url, timeout=60) as fresh:  # a new connection each
            r = fresh.post("/predict", params={"session": token}, files=files)
        assert r.status_code == 200, r.text
        return r.json()["session_clips"]

    sent = 12
    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(send, range(sent)))
    assert sorted(counts) == list(range(1, sent + 1))


def test_a_redis_outage_fails_only_session_requests_and_ends(workers, redis_server):
    url, _ = workers
    token = httpx.post(f"{url}/sessions").json()["session"]
    files = {"file": ("a.wav", clip(0), "audio/wav")}
    redis_server.stop()
    try:
        made = httpx.post(f"{url}/sessions", timeout=30)
        used = httpx.post(f"{url}/predict", params={"session": token}, files=files, timeout=30)
        alone = httpx.post(f"{url}/predict", files=files, timeout=30)
    finally:
        redis_server.start()  # the same port: an outage that ends
    for r in (made, used):
        assert r.status_code == 503, r.text
        assert r.json()["field"] == "session"
        assert "session store redis://127.0.0.1:" in r.json()["detail"]
        assert "unavailable" in r.json()["detail"]
    assert alone.status_code == 200 and alone.json()["type"] == "prediction"
    # Back: new sessions work; the old one's data went with the server (no persistence).
    again = httpx.post(f"{url}/sessions")
    assert again.status_code == 201
    new = again.json()["session"]
    r = httpx.post(f"{url}/predict", params={"session": new}, files=files)
    assert r.status_code == 200 and r.json()["session_clips"] == 1
    lost = httpx.post(f"{url}/predict", params={"session": token}, files=files)
    assert lost.status_code == 404


def test_a_session_outlives_a_server_restart_then_ends_when_idle(
    speaker_run, redis_server, tmp_path
):
    files = {"file": ("a.wav", clip(3), "audio/wav")}
    first = ["--workers", "2", "--session-store", redis_server.url, "--log-level", "warning"]
    with serving(speaker_run, tmp_path / "first.log", *first) as url:
        token = httpx.post(f"{url}/sessions").json()["session"]
        for _ in range(2):
            httpx.post(f"{url}/predict", params={"session": token}, files=files)
    # A new server on the same Redis, whose sessions end after 2 s idle: the session goes
    # on where it was, and its next idle time is the new server's.
    settings = tmp_path / "serving.yaml"
    settings.write_text(json.dumps({"session_store": redis_server.url, "session_idle_seconds": 2}))
    second = ["--workers", "2", "--settings", str(settings), "--log-level", "warning"]
    with serving(speaker_run, tmp_path / "second.log", *second) as url:
        r = httpx.post(f"{url}/predict", params={"session": token}, files=files)
        assert r.status_code == 200 and r.json()["session_clips"] == 3
        time.sleep(2.5)
        r = httpx.post(f"{url}/predict", params={"session": token}, files=files)
        assert r.status_code == 404 and "2 s idle" in r.json()["detail"]
