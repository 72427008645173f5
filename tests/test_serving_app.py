"""HTTP routes of the service with FastAPI's TestClient: every route and every client error."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ser.serving.app import create_app
from ser.serving.settings import ServingSettings, load_settings
from tests.support.fakes import EMOTION_HZ
from tests.support.signals import non_speech, speech_like
from tests.support.tiny_run import WINDOW_SECONDS, encode, silence

SETTINGS = ServingSettings(
    max_upload_mb=0.5,
    max_clip_seconds=20,
    max_batch_files=3,
    max_batch_windows=4,
    stream_window=1.0,
    stream_hop=0.5,
)


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor, settings=SETTINGS)) as c:
        yield c


def post_clip(client, data: bytes, name: str = "clip.wav", field: str = "file", mime="audio/wav"):
    return client.post("/predict", files={field: (name, data, mime)})


# ---------------------------------------------------------------------- info routes
def test_health_names_the_model(client, predictor):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["model_id"] == predictor.model_id
    assert body["model_id"].startswith("tiny-lstm@") and body["uptime_seconds"] >= 0


def test_model_card_has_labels_features_config_and_metrics(client, run_dir):
    r = client.get("/model")
    assert r.status_code == 200
    info = r.json()
    assert info["labels"] == json.loads((run_dir / "labels.json").read_text())
    assert info["model_type"] == "lstm" and info["parameters"] > 0
    assert info["window_seconds"] == WINDOW_SECONDS
    assert info["input"] == {
        "mode": "sequence",
        "dim": 13,
        "max_frames": 101,
        "sample_rate": 16000,
        "hop_seconds": 0.01,
    }
    assert info["features"]["extractors"] == ["mfcc"] and info["features"]["mfcc"]["n_mfcc"] == 13
    assert "chroma" not in info["features"]  # only the extractors the run uses
    assert info["config"]["corpora"] == ["emodb"] and info["config"]["model"]["units"] == [8]
    summary = json.loads((run_dir / "summary.json").read_text())
    training = info["metrics"]["training"]
    assert training["speaker_independent"] is True
    assert training["test"]["n"] == summary["test"]["n"]
    ua = summary["test"]["ua"]
    assert training["test"]["ua"] == (ua if np.isfinite(ua) else None)
    assert info["stream"]["window_seconds"] == 1.0 and info["stream"]["sample_rate"] == 16000
    assert info["stream"]["speech_check"] is True
    assert info["stream"]["speech_min_voiced"] == SETTINGS.speech_min_voiced


def test_model_card_lists_only_the_models_own_emotions(client, predictor):
    # The base config names every emotion of every corpus (boredom, calm, ...); the
    # tiny run's model knows only the labels it was trained on.
    info = client.get("/model").json()
    assert predictor.cfg.data.emotions != predictor.labels
    assert info["config"]["emotions"] == predictor.labels


def test_docs_and_openapi_describe_every_route(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/predict/batch", "/health", "/model"} <= set(spec["paths"])
    predict = spec["paths"]["/predict"]["post"]
    assert {"200", "413", "415", "422"} <= set(predict["responses"])
    assert "multipart/form-data" in predict["requestBody"]["content"]
    assert {"PredictionOut", "BatchOut", "ModelInfoOut", "ErrorOut"} <= set(
        spec["components"]["schemas"]
    )
    prediction = spec["components"]["schemas"]["PredictionOut"]["properties"]
    assert prediction["type"]["enum"] == ["prediction", "no_speech"]
    assert {"voiced", "flat", "rms_db"} <= set(prediction)


def test_docs_pages_load_their_scripts_from_this_server(client):
    # Offline, a docs page that loads Swagger UI or ReDoc from a CDN is blank.
    for page, script in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = client.get(page).text
        sources = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert any(s.endswith(script) for s in sources), page
        for source in sources:
            assert source.startswith("/"), f"{page} loads {source} from elsewhere"
            assert client.get(source).status_code == 200, f"{page}: {source}"


def test_page_and_its_scripts_are_served_with_a_strict_policy(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "/static/app.js" in r.text and 'id="timeline"' in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    for name in ("app.js", "pcm-worklet.js", "style.css", "favicon.svg"):
        assert client.get(f"/static/{name}").status_code == 200, name
    assert client.get("/static/../app.py").status_code == 404


# ------------------------------------------------------------------------- predict
def test_predict_short_clip_matches_the_library(client, predictor, tmp_path):
    wave = speech_like(0.6, EMOTION_HZ["sad"])
    data = encode(wave)
    r = post_clip(client, data, "sad.wav")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["filename"] == "sad.wav" and body["model_id"] == predictor.model_id
    assert list(body["probabilities"]) == predictor.labels
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert all(p == round(p, 4) for p in body["probabilities"].values())  # 4 decimals
    assert body["type"] == "prediction" and body["voiced"] > 0 and body["rms_db"] < 0
    assert body["emotion"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["confidence"] == pytest.approx(body["probabilities"][body["emotion"]])
    assert body["duration"] == pytest.approx(0.6, abs=1e-3)
    assert body["windowed"] is False and body["timeline"] is None
    (tmp_path / "sad.wav").write_bytes(data)
    expected = predictor.predict_file(tmp_path / "sad.wav")
    for label, p in expected["probabilities"].items():
        assert body["probabilities"][label] == pytest.approx(p, abs=1e-5)


def test_long_clip_gets_sliding_windows_timeline_and_overall_label(client):
    wave = np.concatenate(
        [speech_like(1.5, EMOTION_HZ["angry"]), speech_like(1.5, EMOTION_HZ["sad"], seed=1)]
    )
    r = post_clip(client, encode(wave), "long.wav")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["windowed"] is True and body["window_seconds"] == WINDOW_SECONDS
    timeline = body["timeline"]
    # 3 s, window 1.01 s (101 frames), hop half a window; the last window ends at the end.
    starts = [w["start"] for w in timeline]
    assert starts[0] == 0.0 and starts == sorted(starts) and len(timeline) == 5
    assert timeline[-1]["end"] == pytest.approx(3.0)
    assert all(w["end"] - w["start"] == pytest.approx(1.01, abs=0.011) for w in timeline)
    for w in timeline:
        assert w["emotion"] == max(w["probabilities"], key=w["probabilities"].get)
    mean = {k: np.mean([w["probabilities"][k] for w in timeline]) for k in body["probabilities"]}
    for label, p in body["probabilities"].items():
        assert p == pytest.approx(mean[label], abs=2e-4)  # both rounded to 4 decimals
    assert body["emotion"] == max(mean, key=mean.get)


@pytest.mark.parametrize("kind", sorted(non_speech()))
def test_clip_without_speech_gets_no_speech_and_never_an_emotion(client, kind):
    r = post_clip(client, encode(non_speech(3.0)[kind]), f"{kind}.wav")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "no_speech", body
    assert body["emotion"] is None and body["confidence"] is None
    assert body["probabilities"] is None and body["timeline"] is None
    assert body["duration"] == pytest.approx(3.0)
    # Silence and noise are hardly voiced; tones are voiced but flat-pitched.
    assert body["voiced"] < SETTINGS.speech_min_voiced or body["flat"] > SETTINGS.speech_max_flat


def test_speech_30_db_quieter_is_still_predicted(client):
    quiet = speech_like(1.5, EMOTION_HZ["happy"], seed=4) * 10 ** (-30 / 20)
    body = post_clip(client, encode(quiet, subtype="FLOAT"), "quiet.wav").json()
    assert body["type"] == "prediction" and body["emotion"] in body["probabilities"]
    assert body["rms_db"] < -50


def test_speech_check_can_be_turned_off(predictor):
    settings = ServingSettings(speech_check=False, max_batch_windows=1)
    with TestClient(create_app(predictor, settings=settings)) as c:
        body = post_clip(c, encode(non_speech(1.0)["silence"]), "silence.wav").json()
    assert body["type"] == "prediction" and body["emotion"] in predictor.labels
    assert body["voiced"] is None and body["rms_db"] is None


@pytest.mark.parametrize(
    ("name", "fmt", "subtype", "sr", "channels"),
    [
        ("clip.flac", "FLAC", None, 16000, 1),
        ("clip.ogg", "OGG", "VORBIS", 22050, 1),
        ("clip.mp3", "MP3", None, 44100, 2),
        ("clip.aiff", "AIFF", None, 8000, 1),
        ("stereo.wav", "WAV", "FLOAT", 48000, 2),
    ],
)
def test_any_soundfile_format_rate_and_channel_count(client, name, fmt, subtype, sr, channels):
    wave = speech_like(0.8, sr=sr)
    if channels == 2:
        wave = np.stack([wave, wave], axis=1)
    r = post_clip(client, encode(wave, sr, fmt, subtype), name, mime="application/octet-stream")
    assert r.status_code == 200, r.text
    assert r.json()["duration"] == pytest.approx(0.8, abs=0.06)  # MP3 adds encoder padding


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_browser_webm_opus_is_decoded_through_ffmpeg(client):
    wave = speech_like(1.2)
    webm = subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-f",
            "f32le",
            "-ar",
            "16000",
            "-ac",
            "1",
            "-i",
            "pipe:0",
            "-c:a",
            "libopus",
            "-f",
            "webm",
            "pipe:1",
        ],
        input=wave.tobytes(),
        capture_output=True,
        check=True,
    ).stdout
    r = post_clip(client, webm, "recording.webm", mime="audio/webm")
    assert r.status_code == 200, r.text
    assert r.json()["duration"] == pytest.approx(1.2, abs=0.05)


# -------------------------------------------------------------------------- errors
def assert_problem(r, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["detail"], str)
    for word in words:
        assert word in body["detail"], (word, body["detail"])
    return body


def test_empty_upload_is_422(client):
    body = assert_problem(post_clip(client, b"", "empty.wav"), 422, "empty.wav", "empty upload")
    assert body["field"] == "file"


def test_wav_header_without_samples_is_422(client):
    assert_problem(post_clip(client, encode(silence(0)), "nothing.wav"), 422, "no samples")


def test_non_audio_upload_is_415_naming_the_file(client):
    r = post_clip(client, b"name,emotion\nx,angry\n" * 20, "notes.csv", mime="text/csv")
    assert_problem(r, 415, "notes.csv", "not readable as audio")


def test_corrupt_audio_is_a_4xx_naming_the_file(client):
    data = bytearray(encode(speech_like(1.0)))
    data[8:40] = b"\xff" * 32  # clobber the RIFF/fmt header
    r = post_clip(client, bytes(data), "broken.wav")
    assert r.status_code in (415, 422), r.text
    assert "broken.wav" in r.json()["detail"]


def test_truncated_mp3_and_random_bytes_never_500(client):
    mp3 = encode(speech_like(1.0), 16000, "MP3")
    rng = np.random.default_rng(0)
    for name, data in [("cut.mp3", mp3[: len(mp3) // 3]), ("noise.bin", rng.bytes(5000))]:
        r = post_clip(client, data, name, mime="application/octet-stream")
        assert r.status_code < 500, (name, r.text)
        if r.status_code != 200:
            assert name in r.json()["detail"]


def test_nan_samples_are_422(client):
    wave = speech_like(0.5)
    wave[100] = np.nan
    assert_problem(post_clip(client, encode(wave, subtype="FLOAT"), "nan.wav"), 422, "NaN")


def test_too_short_clip_is_422(client):
    assert_problem(
        post_clip(client, encode(speech_like(0.02)), "blip.wav"), 422, "blip.wav", "at least"
    )


def test_too_long_clip_is_422_naming_the_limit(client):
    # 25 s of 8 kHz 8-bit audio: under the 0.5 MB size limit, over the 20 s limit.
    data = encode(speech_like(25, sr=8000), 8000, "WAV", "PCM_U8")
    assert len(data) < SETTINGS.max_upload_bytes
    assert_problem(post_clip(client, data, "speech.wav"), 422, "25.0 s", "max_clip_seconds")


def test_too_large_upload_is_413(client):
    data = encode(speech_like(20), subtype="PCM_16")  # 640 kB > 0.5 MB
    body = assert_problem(post_clip(client, data, "big.wav"), 413, "max_upload_mb")
    assert "0.5 MiB" in body["detail"]  # max_upload_mb counts binary megabytes


def test_declared_oversized_body_is_refused_before_reading(client):
    r = client.post(
        "/predict",
        content=b"x" * 10,
        headers={"content-type": "multipart/form-data; boundary=b", "content-length": str(10**9)},
    )
    assert_problem(r, 413, "max_upload_mb")


def test_missing_or_misnamed_field_is_422_naming_it(client):
    assert_problem(client.post("/predict"), 422, "file", "multipart/form-data")
    r = post_clip(client, encode(speech_like(0.5)), field="audio")
    assert_problem(r, 422, "file: missing")
    assert_problem(client.post("/predict", json={"file": "clip.wav"}), 422, "file")
    r = client.post("/predict", data={"file": "not a file"})
    assert r.status_code == 422 and "file" in r.json()["detail"]


def test_client_file_name_is_never_used_as_a_path(client):
    marker = "ser-upload-probe-7c1d"
    names = [f"../../../../tmp/{marker}.wav", f"/tmp/{marker}-abs.wav", f"..\\..\\{marker}.wav"]
    before = {p.name for p in Path(tempfile.gettempdir()).iterdir()}
    for name in names:
        r = post_clip(client, encode(speech_like(0.4)), name)
        assert r.status_code == 200, r.text
        assert r.json()["filename"] == name  # echoed as text only
    after = {p.name for p in Path(tempfile.gettempdir()).iterdir()}
    assert not {n for n in after - before if marker in n}
    assert not list(Path.cwd().rglob(f"*{marker}*"))


# --------------------------------------------------------------------------- batch
def test_batch_reports_each_file(client):
    files = [
        ("files", ("a.wav", encode(speech_like(0.5)), "audio/wav")),
        (
            "files",
            ("b.flac", encode(speech_like(2.5, EMOTION_HZ["sad"]), 16000, "FLAC"), "audio/flac"),
        ),
        ("files", ("c.txt", b"plain text, not audio", "text/plain")),
    ]
    r = client.post("/predict/batch", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == ["a.wav", "b.flac", "c.txt"]
    assert [x["status"] for x in results] == [200, 200, 415]
    assert results[0]["prediction"]["windowed"] is False
    assert (
        results[1]["prediction"]["windowed"] is True
        and len(results[1]["prediction"]["timeline"]) >= 3
    )
    assert "c.txt" in results[2]["error"] and results[2]["prediction"] is None


def test_batch_answers_no_speech_per_file(client):
    quiet = non_speech(2.0)
    files = [
        ("files", ("speech.wav", encode(speech_like(1.5)), "audio/wav")),
        ("files", ("silence.wav", encode(quiet["silence"]), "audio/wav")),
        ("files", ("noise.wav", encode(quiet["loud_white_noise"]), "audio/wav")),
    ]
    results = client.post("/predict/batch", files=files).json()["results"]
    assert [x["status"] for x in results] == [200, 200, 200]
    kinds = [x["prediction"]["type"] for x in results]
    assert kinds == ["prediction", "no_speech", "no_speech"]
    assert [x["prediction"]["emotion"] is None for x in results] == [False, True, True]


def test_batch_oversized_file_gets_its_own_413(client):
    files = [
        ("files", ("ok.wav", encode(speech_like(0.5)), "audio/wav")),
        ("files", ("huge.wav", encode(speech_like(20)), "audio/wav")),
    ]
    results = client.post("/predict/batch", files=files).json()["results"]
    assert [x["status"] for x in results] == [200, 413]
    assert "max_upload_mb" in results[1]["error"]


def test_batch_limits_are_422(client):
    assert_problem(client.post("/predict/batch"), 422, "files")
    many = [("files", (f"{i}.wav", encode(speech_like(0.2)), "audio/wav")) for i in range(4)]
    assert_problem(client.post("/predict/batch", files=many), 422, "at most 3", "max_batch_files")


# --------------------------------------------------------------------- concurrency
def test_concurrent_requests_each_get_their_own_answer(client):
    clips = {
        f"{emotion}-{seconds}.wav": encode(speech_like(seconds, hz, seed=i))
        for i, (emotion, hz) in enumerate(EMOTION_HZ.items())
        for seconds in (0.5, 2.5)
    }
    serial = {name: post_clip(client, data, name).json() for name, data in clips.items()}
    jobs = list(clips.items()) * 3
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda job: post_clip(client, job[1], job[0]), jobs))
    for (name, _), r in zip(jobs, answers):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["filename"] == name
        for label, p in serial[name]["probabilities"].items():
            assert body["probabilities"][label] == pytest.approx(p, abs=1e-5), name
    health = client.get("/health").json()
    assert health["inference_windows"] >= len(jobs)


# ---------------------------------------------------------------------------- CORS
def test_cors_is_off_by_default(client):
    r = client.options(
        "/predict",
        headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in r.headers
    r = client.get("/health", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_allows_only_configured_origins(predictor):
    settings = ServingSettings(cors_origins=["https://app.example"], max_batch_windows=1)
    with TestClient(create_app(predictor, settings=settings)) as c:
        ok = c.get("/health", headers={"Origin": "https://app.example"})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        other = c.get("/health", headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers


# ------------------------------------------------------------------------ settings
def test_settings_are_strict_and_name_the_key(tmp_path):
    from ser.config import ConfigError

    good = tmp_path / "serve.yaml"
    good.write_text("max_upload_mb: 2\ncors_origins: [https://a.example]\n")
    s = load_settings(good, max_clip_seconds=30)
    assert s.max_upload_bytes == 2 * 1024 * 1024 and s.max_clip_seconds == 30
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_upload: 2\n")
    with pytest.raises(ConfigError, match="max_upload: unknown setting"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="stream_hop"):
        load_settings(None, stream_window=1.0, stream_hop=2.0)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="speech_min_voiced"):
        load_settings(None, speech_min_voiced=0)
    with pytest.raises(ConfigError, match="vad_threshold_db: unknown setting"):
        load_settings(None, vad_threshold_db=-45)  # the energy check it replaced
    quiet = tmp_path / "quiet.yaml"
    quiet.write_text("speech_check: false\nspeech_max_flat: 0.5\n")
    thresholds = load_settings(quiet).speech_thresholds
    assert load_settings(quiet).speech_check is False and thresholds.max_flat == 0.5


def test_model_card_metrics_are_json_safe_and_include_the_evaluation(tmp_path):
    from ser.serving.app import run_metrics

    (tmp_path / "summary.json").write_text(
        '{"protocol": "speaker-independent", "speaker_independent": true, "best_epoch": 3,'
        ' "test": {"ua": NaN, "wa": 0.5, "macro_f1": 0.4, "n": 10, "per_class": {}}}'
    )
    ranking = [
        {"rank": 1, "name": "lstm", "kind": "keras", "ua": 0.6, "wa": 0.62, "macro_f1": 0.58}
    ]
    (tmp_path / "report.json").write_text(
        json.dumps({"created": "2026-11-24", "protocol": {"test_speakers": 7}, "ranking": ranking})
    )
    metrics = run_metrics(tmp_path)
    assert metrics["training"]["test"] == {"ua": None, "wa": 0.5, "macro_f1": 0.4, "n": 10}
    assert metrics["evaluation"]["ranking"] == ranking
    json.dumps(metrics, allow_nan=False)  # what the JSON response needs
    assert run_metrics(tmp_path / "nowhere") is None


def test_a_session_of_a_model_without_speaker_normalisation_counts_nothing(client):
    made = client.post("/sessions")
    assert made.status_code == 201 and made.json()["speaker_normalised"] is False
    token = made.json()["session"]
    r = client.post(
        "/predict",
        params={"session": token},
        files={"file": ("clip.wav", encode(speech_like(1.0)), "audio/wav")},
    )
    assert r.status_code == 200
    assert r.json()["session"] == token and r.json()["session_clips"] is None
    r = client.post(
        "/predict",
        params={"session": "x" * 65},
        files={"file": ("clip.wav", encode(speech_like(1.0)), "audio/wav")},
    )
    assert r.status_code == 422 and r.json()["field"] == "session"
