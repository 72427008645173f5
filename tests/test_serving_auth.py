"""Who may use the service: API keys on HTTP and the live stream, and speaker sessions
that only the key that started them can touch.

The routes run in-process (FastAPI's TestClient) with real keys; key files go through
``ser serve`` itself; the logs, the page and ``/docs`` are checked against a real
``ser serve --api-key-file`` on loopback, the page and the docs in headless Chromium.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import subprocess
import sys
import time

import httpx
import pytest
import soundfile as sf
from fastapi import Request
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from ser.config import ConfigError
from ser.serving import auth
from ser.serving.app import create_app
from ser.serving.auth import APIKeys, is_open, key_id, load_api_keys
from ser.serving.sessions import MemorySessionStore
from ser.serving.settings import ServingSettings
from tests.support import ROOT, free_port
from tests.support.fakes import EMOTION_HZ
from tests.support.livepage import CHROMIUM, DURING_SPEECH, launch, microphone_clip, open_offline
from tests.support.servers import serving
from tests.support.signals import gliding_tone, speech_like
from tests.support.tiny_run import encode

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the skip says why
    sync_playwright = None

ALPHA, BRAVO = "alpha-key-0123456789abcdef", "bravo-key-0123456789abcdef"
SETTINGS = ServingSettings(stream_window=1.0, stream_hop=0.5, max_sessions=3)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or sync_playwright is None,
    reason="Chromium and playwright needed (apt-get install chromium; pip install '.[test]')",
)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def clip_files(seconds: float = 1.0) -> dict:
    return {"file": ("clip.wav", encode(speech_like(seconds)), "audio/wav")}


@pytest.fixture(scope="module")
def app(predictor):
    return create_app(predictor, settings=SETTINGS, api_keys=APIKeys([ALPHA, BRAVO]))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


# ---------------------------------------------------------------------- HTTP keys
def test_a_missing_or_wrong_key_is_401_and_the_right_one_passes(client):
    missing = client.get("/model")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["field"] == "Authorization" and "missing" in missing.json()["detail"]
    wrong = client.get("/model", headers=bearer("not-a-key-of-this-server"))
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert "not an API key this server accepts" in wrong.json()["detail"]
    basic = client.get("/model", headers={"Authorization": f"Basic {ALPHA}"})
    assert basic.status_code == 401 and "Bearer" in basic.json()["detail"]
    for key in (ALPHA, BRAVO):
        assert client.get("/model", headers=bearer(key)).status_code == 200
    assert client.get("/model", headers={"authorization": f"bearer  {ALPHA} "}).status_code == 200
    assert client.post("/predict", files=clip_files(), headers=bearer(ALPHA)).status_code == 200


def test_uploads_without_a_key_are_refused_before_they_are_read(client):
    r = client.post("/predict", files=clip_files())
    assert r.status_code == 401 and r.json()["field"] == "Authorization"
    batch = client.post("/predict/batch", files=[("files", ("a.wav", b"x", "audio/wav"))])
    assert batch.status_code == 401
    assert client.post("/sessions").status_code == 401


def test_health_the_page_its_files_and_the_docs_stay_open(client):
    for path in ("/health", "/", "/static/app.js", "/static/style.css", "/favicon.ico"):
        assert client.get(path).status_code == 200, path
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_every_api_route_needs_a_key(app, client):
    api = [r for r in app.routes if isinstance(r, APIRoute) and not is_open(r.path)]
    assert {r.path for r in api} >= {"/model", "/predict", "/predict/batch", "/sessions"}
    for route in api:
        for method in route.methods:
            r = client.request(method, route.path)
            assert r.status_code == 401, f"{method} {route.path}: {r.status_code}"
    assert client.get("/no-such-route").status_code == 401  # closed by default


def test_the_key_id_names_the_key_without_it(predictor):
    app = create_app(predictor, settings=SETTINGS, api_keys=APIKeys([ALPHA, BRAVO]))

    @app.get("/whoami")
    async def whoami(request: Request) -> dict:
        return {"api_key_id": request.state.api_key_id}

    with TestClient(app) as c:
        seen = c.get("/whoami", headers=bearer(BRAVO)).json()["api_key_id"]
    assert seen == hashlib.sha256(BRAVO.encode()).hexdigest()[:8] == key_id(BRAVO)
    assert len(seen) == 8 and seen not in BRAVO


def test_keys_are_compared_in_constant_time_with_every_known_key(client, monkeypatch):
    calls = []

    def observed(a, b):
        calls.append((len(a), len(b)))
        return hmac_compare_digest(a, b)

    hmac_compare_digest = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", observed)
    assert client.get("/model", headers=bearer(ALPHA)).status_code == 200
    # Both keys compared, though the first matched; digests of equal length.
    assert calls == [(32, 32), (32, 32)]
    calls.clear()
    assert client.get("/model", headers=bearer("a-wrong-key-of-any-length")).status_code == 401
    assert calls == [(32, 32), (32, 32)]


def test_keys_never_reach_the_logs_of_the_app(predictor, caplog):
    app = create_app(predictor, settings=SETTINGS, api_keys=APIKeys([ALPHA, BRAVO]))
    wrong = "wrong-key-that-must-not-be-logged"
    with caplog.at_level(logging.DEBUG), TestClient(app) as c:
        c.get("/model", headers=bearer(ALPHA))
        c.get("/model", headers=bearer(wrong))
        c.post("/predict", files=clip_files(), headers=bearer(BRAVO))
        with c.websocket_connect("/stream") as ws:
            ws.send_text(json.dumps({"type": "auth", "key": wrong}))
            ws.receive_json()
    text = caplog.text
    assert "401 GET /model" in text and "1008 WS /stream" in text  # refusals are logged
    for secret in (ALPHA, BRAVO, wrong):
        assert secret not in text


def test_the_openapi_document_declares_the_bearer_scheme(client):
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["APIKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key of this deployment (--api-key-file, SER_API_KEYS)",
    }
    for path in ("/model", "/predict", "/predict/batch", "/sessions"):
        for operation in schema["paths"][path].values():
            assert operation["security"] == [{"APIKey": []}], path
            assert "401" in operation["responses"]
    assert "security" not in schema["paths"]["/health"]["get"]


def test_without_keys_there_is_no_scheme_and_everything_is_open(predictor):
    with TestClient(create_app(predictor, settings=SETTINGS)) as c:
        assert "securitySchemes" not in c.get("/openapi.json").json().get("components", {})
        assert c.get("/model").status_code == 200


# ---------------------------------------------------------------------- key files
def test_key_files_and_the_environment(tmp_path):
    file = tmp_path / "keys.txt"
    file.write_text(f"# deployment keys\n\n  {ALPHA}  \n{BRAVO}\n")
    keys = load_api_keys(file, env={})
    assert keys.ids == [key_id(ALPHA), key_id(BRAVO)]
    assert load_api_keys(None, env={}) is None  # an open service
    both = load_api_keys(file, env={"SER_API_KEYS": "gamma-key-0123456789, delta-key-0123456789"})
    assert len(both.ids) == 4


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "API key file not found"),
        ("", "API key file holds no keys"),
        ("# only a comment\n\n", "API key file holds no keys"),
        (f"{ALPHA}\nshort\n", "line 2 is 5 characters long; use at least 16"),
        ("a key with spaces in it\n", "line 1: a key may hold only visible ASCII"),
        (b"\xff\xfe-not-utf8", "not UTF-8"),
    ],
)
def test_a_bad_key_file_is_an_error_naming_the_file_and_never_the_key(tmp_path, content, words):
    file = tmp_path / "keys.txt"
    if isinstance(content, bytes):
        file.write_bytes(content)
    elif content is not None:
        file.write_text(content)
    with pytest.raises(ConfigError) as error:
        load_api_keys(file, env={})
    assert str(error.value).startswith(f"{file}: ") and words in str(error.value)
    assert ALPHA not in str(error.value) and "short\n" not in str(error.value)


def test_an_empty_environment_variable_is_an_error_not_an_open_service():
    with pytest.raises(ConfigError, match="SER_API_KEYS is set but holds no keys"):
        load_api_keys(None, env={"SER_API_KEYS": " , "})
    with pytest.raises(ConfigError, match="SER_API_KEYS: key 2 is 3 characters long"):
        load_api_keys(None, env={"SER_API_KEYS": f"{ALPHA},abc"})


@pytest.mark.parametrize("content", [None, "\n# no keys yet\n"])
def test_serve_with_a_bad_key_file_exits_2_before_loading_the_model(tmp_path, content):
    file = tmp_path / "keys.txt"
    if content is not None:
        file.write_text(content)
    # The run directory does not exist either: the key file's error comes first.
    proc = subprocess.run(
        [sys.executable, "-m", "ser.cli", "serve", str(tmp_path / "no-run")]
        + ["--api-key-file", str(file), "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: {file}: API key file")
    assert "not a run directory" not in proc.stderr


# ---------------------------------------------------------------------- stream keys
def test_the_stream_takes_the_key_in_the_header(client):
    with client.websocket_connect("/stream", headers=bearer(BRAVO)) as ws:
        assert ws.receive_json()["type"] == "ready"


def test_the_stream_takes_the_key_in_a_first_message_and_then_streams(client):
    pcm = (gliding_tone(1.0, EMOTION_HZ["angry"]) * 32767).astype("<i2").tobytes()
    with client.websocket_connect("/stream") as ws:
        ws.send_text(json.dumps({"type": "auth", "key": ALPHA}))
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes(pcm)
        ws.send_text(json.dumps({"type": "end"}))
        replies = [ws.receive_json()]
        while replies[-1]["type"] != "end":
            replies.append(ws.receive_json())
    assert replies[0]["type"] in ("prediction", "no_speech") and replies[-1]["windows"] >= 1


@pytest.mark.parametrize(
    ("headers", "first", "words"),
    [
        (bearer("wrong-key-0123456789"), None, "Authorization: not an API key"),
        ({"Authorization": "Token abc"}, None, "Authorization: expected 'Bearer <API key>'"),
        ({}, {"type": "auth", "key": "wrong-key-0123456789"}, "auth.key: not an API key"),
        ({}, {"type": "auth"}, "auth.key: missing"),
        ({}, {"type": "config", "sample_rate": 16000}, "this server needs an API key"),
        ({}, b"\x00\x01" * 800, "this server needs an API key"),
    ],
)
def test_the_stream_closes_1008_without_the_right_key(client, headers, first, words):
    with client.websocket_connect("/stream", headers=headers) as ws:
        if isinstance(first, bytes):
            ws.send_bytes(first)
        elif first is not None:
            ws.send_text(json.dumps(first))
        error = ws.receive_json()
        assert error["type"] == "error" and words in error["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1008
    assert ALPHA not in error["message"] and BRAVO not in error["message"]


def test_a_silent_stream_client_is_closed_after_the_auth_wait(client, monkeypatch):
    monkeypatch.setattr(auth, "AUTH_MESSAGE_SECONDS", 0.3)
    with client.websocket_connect("/stream") as ws:
        error = ws.receive_json()
        assert "no auth message within 0.3 s" in error["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1008


# ---------------------------------------------------------------------- sessions
def predict_in(client, session: str, key: str = ALPHA):
    return client.post(
        "/predict", params={"session": session}, files=clip_files(), headers=bearer(key)
    )


def test_session_tokens_are_issued_by_the_server(client):
    made = client.post("/sessions", headers=bearer(ALPHA))
    assert made.status_code == 201
    token = made.json()["session"]
    assert len(token) == 22 and made.json()["idle_seconds"] == SETTINGS.session_idle_seconds
    assert predict_in(client, token).json()["session"] == token
    first = predict_in(client, "new").json()["session"]
    assert first not in (None, token, "new") and len(first) == 22
    assert predict_in(client, first).status_code == 200


def test_a_name_the_client_chose_is_no_session_and_makes_none(app, client):
    store = app.state.service.sessions
    before = len(store)
    answers = [predict_in(client, name) for name in ("caller-17", "speaker-1", "a" * 22, "NEW")]
    assert [a.status_code for a in answers] == [404] * 4
    assert {a.json()["field"] for a in answers} == {"session"}
    assert len({a.json()["detail"] for a in answers}) == 1  # one answer for every token
    assert len(store) == before


def test_another_keys_session_is_answered_like_an_unknown_one(client):
    token = client.post("/sessions", headers=bearer(ALPHA)).json()["session"]
    theirs = predict_in(client, token, key=BRAVO)
    unknown = predict_in(client, "x" * 22, key=BRAVO)
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json() == unknown.json()
    assert predict_in(client, token, key=ALPHA).status_code == 200  # still the owner's


def test_sessions_end_after_the_idle_time(predictor):
    settings = SETTINGS.model_copy(update={"session_idle_seconds": 0.5})
    app = create_app(predictor, settings=settings, api_keys=APIKeys([ALPHA]))
    with TestClient(app) as c:
        kept, left = (c.post("/sessions", headers=bearer(ALPHA)).json()["session"] for _ in "ab")
        for _ in range(3):  # used every 0.3 s: never idle for 0.5 s
            time.sleep(0.3)
            assert predict_in(c, kept).status_code == 200
        assert predict_in(c, left).status_code == 404
        time.sleep(0.6)
        assert predict_in(c, kept).status_code == 404


def test_the_least_recently_used_session_goes_when_there_are_too_many(client):
    tokens = [client.post("/sessions", headers=bearer(ALPHA)).json()["session"] for _ in "abc"]
    assert predict_in(client, tokens[0]).status_code == 200  # now the most recent
    newest = client.post("/sessions", headers=bearer(ALPHA)).json()["session"]  # 4 > 3
    assert predict_in(client, tokens[1]).status_code == 404
    assert all(predict_in(client, t).status_code == 200 for t in (tokens[0], tokens[2], newest))


def test_the_memory_store_by_its_clock():
    now = [0]
    store = MemorySessionStore(lambda: None, limit=2, idle_seconds=10, clock=lambda: now[0])
    a = store.create("k1")
    now[0] = 9
    assert store.find(a.token, "k1") is a and store.find(a.token, "k2") is None
    b = store.create(None)
    now[0] = 18  # a used at 9, b made at 9: both idle 9 s
    assert store.find(b.token, None) is b and store.find(b.token, "k1") is None
    now[0] = 19  # a idle for 10 s: ended; b, used at 18, lives
    assert store.find(a.token, "k1") is None and len(store) == 1
    store.create(None), store.create(None)  # two newer: b, the least recently used, goes
    assert store.find(b.token, None) is None and len(store) == 2


# ---------------------------------------------------------------------- a real server
@pytest.fixture(scope="module")
def keyed_server(run_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("keyed")
    keys = work / "keys.txt"
    keys.write_text(f"{ALPHA}\n{BRAVO}\n")
    log = work / "serve.log"
    options = ["--api-key-file", str(keys), "--stream-window", "1", "--stream-hop", "0.5"]
    with serving(run_dir, log, *options, "--log-level", "debug") as url:
        yield url, log


def test_keys_and_session_tokens_never_reach_the_server_log(keyed_server):
    import websockets

    url, log = keyed_server
    wrong = "wrong-key-that-must-not-be-logged"
    assert httpx.get(f"{url}/model", headers=bearer(ALPHA)).status_code == 200
    assert httpx.get(f"{url}/model", headers=bearer(wrong)).status_code == 401
    token = httpx.post(f"{url}/sessions", headers=bearer(BRAVO)).json()["session"]
    predicted = httpx.post(
        f"{url}/predict", params={"session": token}, files=clip_files(), headers=bearer(BRAVO)
    )
    assert predicted.status_code == 200

    async def streams() -> list[str]:
        ws_url = url.replace("http", "ws") + "/stream"
        async with websockets.connect(ws_url, additional_headers=bearer(ALPHA)) as ws:
            by_header = json.loads(await ws.recv())["type"]
        async with websockets.connect(ws_url) as ws:
            await ws.send(json.dumps({"type": "auth", "key": BRAVO}))
            by_message = json.loads(await ws.recv())["type"]
        async with websockets.connect(ws_url) as ws:
            await ws.send(json.dumps({"type": "auth", "key": wrong}))
            await ws.recv()
            await ws.wait_closed()
            refused = ws.close_code
        return [by_header, by_message, refused]

    assert asyncio.run(streams()) == ["ready", "ready", 1008]
    time.sleep(0.5)  # the last lines reach the log
    text = log.read_text()
    assert f"ids {key_id(ALPHA)}, {key_id(BRAVO)}" in text  # ids name the keys
    assert "401 GET /model" in text and "1008 WS /stream" in text
    assert "/predict?session=[redacted]" in text and "authorization: [redacted]" in text
    for secret in (ALPHA, BRAVO, wrong, token):
        assert secret not in text


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = launch(p)
        yield chromium
        chromium.close()


def page_problems(page) -> list[str]:
    """What went wrong on the page, but the 401s that made it ask for a key."""
    return [
        *(f"error: {e}" for e in page.errors),
        *(f"console: {e}" for e in page.console_errors if "401" not in e),
        *(f"blocked: {u}" for u in page.blocked),
        *(f"response: {r}" for r in page.bad_responses if not r.startswith("401 ")),
    ]


def enter_key(page, key: str) -> None:
    page.wait_for_selector("#key:not([hidden])", timeout=30_000)
    page.fill("#key-input", key)
    page.click("#key-button")


@needs_chromium
@pytest.mark.slow
def test_the_page_asks_for_the_key_keeps_it_in_memory_and_predicts(keyed_server, tmp_path):
    url, _ = keyed_server
    microphone = microphone_clip(tmp_path / "microphone.wav")
    clip = tmp_path / "clip.wav"
    sf.write(clip, gliding_tone(1.5, EMOTION_HZ["sad"]), 16000)
    with sync_playwright() as p:
        chromium = launch(p, microphone)
        try:
            page = open_offline(chromium, url, wait_for_ready=False)
            enter_key(page, "a-wrong-key-0123456789")
            page.wait_for_function(
                "() => document.getElementById('key-status').textContent.includes('refused')"
            )
            enter_key(page, ALPHA)
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            stored = page.evaluate(
                "() => [localStorage.length, sessionStorage.length, document.cookie,"
                " document.getElementById('key-input').value, document.body.innerHTML]"
            )
            assert stored[:4] == [0, 0, "", ""] and ALPHA not in stored[4]
            page.set_input_files("#file", str(clip))
            page.click("#upload-button")
            page.wait_for_selector("#upload-result:not([hidden])", timeout=30_000)
            assert page.text_content("#upload-detail").endswith("2 windows")
            page.click("#start")
            page.wait_for_function(DURING_SPEECH, timeout=60_000)
            page.click("#stop")
            assert page_problems(page) == []
        finally:
            chromium.close()


def executed_status(page) -> str:
    """Press *Execute* on the open operation of Swagger UI; the status it got."""
    page.click(".execute")
    status = page.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for(timeout=30_000)
    return status.text_content().strip()


@needs_chromium
@pytest.mark.slow
def test_docs_authorize_sends_the_key(keyed_server, browser):
    url, _ = keyed_server
    page = open_offline(browser, f"{url}/docs", wait_for_ready=False)
    page.click(".opblock-summary-path[data-path='/model']", timeout=30_000)
    page.click(".try-out__btn")
    assert executed_status(page).startswith("401")
    page.click(".auth-wrapper button.authorize")
    page.fill(".auth-container input", BRAVO)
    page.click(".auth-btn-wrapper button.authorize")
    page.click(".auth-btn-wrapper button.btn-done")
    page.click(".btn-clear")
    assert executed_status(page) == "200"
    assert f"Authorization: Bearer {BRAVO}" in page.text_content(".curl-command")
    assert page_problems(page) == []


# ---------------------------------------------------------------------- the benchmark
def test_the_session_guessing_benchmark_and_its_report_row(run_dir, tmp_path):
    out = tmp_path / "session_guessing.json"
    command = [sys.executable, "bench/session_guessing.py", str(run_dir), "--out", str(out)]
    bench = subprocess.run(
        [*command, "--tries", "40", "--sessions", "3", "--concurrency", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert bench.returncode == 0, bench.stdout + bench.stderr
    result = json.loads(out.read_text())
    assert result["by_status"] == {"404": 40} and result["distinct_404_bodies"] == 1
    assert all(counts == {"404": 10} for counts in result["by_kind"].values())
    assert result["real_sessions_still_answer"] == "3/3"
    log = tmp_path / "robustness.jsonl"
    log.write_text("")
    report = subprocess.run(
        [sys.executable, "docs/generators/robustness_report.py", str(log), "--abuse", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert report.returncode == 0, report.stderr
    assert "## load and abuse" in report.stdout
    assert "| session guessing: 40 guesses (" in report.stdout
    assert "| 404 ×40; 1 distinct 404 body(ies); real sessions kept 3/3 |" in report.stdout
    assert "(place kept)" not in report.stdout
