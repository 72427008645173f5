"""WS /stream: window predictions for speech, ``no_speech`` for silence, noise and tones,
protocol errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from ser.serving.app import create_app
from ser.serving.settings import ServingSettings
from ser.serving.stream import StreamError, StreamSession
from tests.support.fakes import EMOTION_HZ
from tests.support.signals import non_speech, speech_like
from tests.support.tiny_run import silence, tone

SETTINGS = ServingSettings(
    stream_window=1.0,
    stream_hop=0.5,
    max_batch_windows=2,
    stream_max_chunk_seconds=2.0,
    stream_max_seconds=30,
)


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor, settings=SETTINGS)) as c:
        yield c


def s16(wave: np.ndarray) -> bytes:
    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


def stream(client, wave_bytes: bytes, chunk: int, config: dict | None = None) -> list[dict]:
    """Send ``wave_bytes`` in ``chunk``-byte messages, then ``end``; all replies in order."""
    with client.websocket_connect("/stream") as ws:
        replies = [ws.receive_json()]
        if config is not None:
            ws.send_text(json.dumps(config))
        for i in range(0, len(wave_bytes), chunk):
            ws.send_bytes(wave_bytes[i : i + chunk])
        ws.send_text(json.dumps({"type": "end"}))
        while replies[-1]["type"] != "end":
            replies.append(ws.receive_json())
    return replies


def test_stream_of_speech_and_silence(client, predictor):
    # speech 0-2 s, silence 2-4 s, speech 4-5 s; windows of 1 s every 0.5 s.
    wave = np.concatenate(
        [speech_like(2.0), silence(2.0), speech_like(1.0, EMOTION_HZ["sad"], seed=3)]
    )
    replies = stream(client, s16(wave), chunk=3200)  # 0.1 s per message
    ready, windows, end = replies[0], replies[1:-1], replies[-1]
    assert ready["type"] == "ready" and ready["labels"] == predictor.labels
    assert ready["sample_rate"] == 16000 and ready["window"] == 1.0 and ready["hop"] == 0.5
    assert end == {"type": "end", "windows": len(windows)}
    spans = [(w["start"], w["end"]) for w in windows]
    assert spans == [(0.5 * i, 0.5 * i + 1.0) for i in range(9)]  # 0-1, 0.5-1.5, ..., 4-5
    kinds = {span: w["type"] for span, w in zip(spans, windows)}
    for span in [(0.0, 1.0), (0.5, 1.5), (1.0, 2.0), (4.0, 5.0)]:
        assert kinds[span] == "prediction", span
    for span in [(2.0, 3.0), (2.5, 3.5), (3.0, 4.0)]:
        assert kinds[span] == "no_speech", span
    for w in windows:
        if w["type"] == "prediction":
            assert list(w["probabilities"]) == predictor.labels
            assert sum(w["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
            assert w["emotion"] == max(w["probabilities"], key=w["probabilities"].get)
            assert w["voiced"] >= SETTINGS.speech_min_voiced
        else:
            assert w["emotion"] is None and w["probabilities"] is None
            assert w["confidence"] is None and w["voiced"] < SETTINGS.speech_min_voiced
    # A window's answer is the model's answer for that second of audio.
    first = windows[0]
    pcm = np.frombuffer(s16(wave), "<i2").astype(np.float32) / 32768
    expected = predictor.predict_clip(pcm[:16000])
    for label, p in expected.distribution().items():
        assert first["probabilities"][label] == pytest.approx(p, abs=1e-4)


def test_silence_only_gives_no_speech(client):
    replies = stream(client, s16(silence(2.0) + 1e-4), chunk=8000)
    kinds = [r["type"] for r in replies[1:-1]]
    assert kinds == ["no_speech"] * 3


@pytest.mark.parametrize("kind", sorted(non_speech()))
def test_noise_and_tones_give_no_speech(client, kind):
    replies = stream(client, s16(non_speech(2.0)[kind]), chunk=8000)
    windows = replies[1:-1]
    assert [w["type"] for w in windows] == ["no_speech"] * 3
    assert all(w["emotion"] is None and w["session_clips"] is None for w in windows)


def test_short_stream_is_answered_at_the_end(client):
    replies = stream(client, s16(speech_like(0.7)), chunk=4000)
    assert [r["type"] for r in replies] == ["ready", "prediction", "end"]
    assert replies[1]["start"] == 0.0 and replies[1]["end"] == pytest.approx(0.7)


def test_float_pcm_at_another_rate_is_resampled(client):
    wave = speech_like(2.0, sr=44100)
    replies = stream(
        client,
        wave.astype("<f4").tobytes(),
        chunk=4410 * 4,
        config={"type": "config", "encoding": "pcm_f32le", "sample_rate": 44100},
    )
    windows = replies[1:-1]
    assert [w["type"] for w in windows] == ["prediction"] * 3
    assert [w["end"] for w in windows] == [1.0, 1.5, 2.0]


@pytest.mark.parametrize(
    ("messages", "code", "words"),
    [
        ([b"\x00\x01\x02"], 1007, "not whole pcm_s16le samples"),
        (['{"type": "config", "encoding": "mp3"}'], 1003, "config.encoding"),
        (['{"type": "config", "sample_rate": 1000}'], 1003, "config.sample_rate"),
        (['{"type": "config", "rate": 16000}'], 1003, "unknown key"),
        (["hello"], 1003, "not JSON"),
        (['{"type": "start"}'], 1003, "not 'config' or 'end'"),
        ([b"\x00\x00" * 100, '{"type": "config"}'], 1003, "before any audio"),
        ([b"\x00\x00" * 16000 * 3], 1009, "at most 2 s"),
    ],
)
def test_protocol_errors_close_with_a_reason(client, messages, code, words):
    with client.websocket_connect("/stream") as ws:
        assert ws.receive_json()["type"] == "ready"
        for m in messages:
            if isinstance(m, bytes):
                ws.send_bytes(m)
            else:
                ws.send_text(m)
        error = ws.receive_json()
        assert error["type"] == "error" and words in error["message"], error
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == code


def test_stream_length_limit(client):
    with client.websocket_connect("/stream") as ws:
        ws.receive_json()
        chunk = s16(silence(2.0))
        for _ in range(15):
            ws.send_bytes(chunk)
        ws.send_bytes(s16(silence(0.5)))
        replies = []
        while True:
            reply = ws.receive_json()
            replies.append(reply)
            if reply["type"] == "error":
                break
        assert "stream_max_seconds" in replies[-1]["message"]
        assert all(r["type"] == "no_speech" for r in replies[:-1])


# ------------------------------------------------------------ pure parts, no server
def test_session_windows_and_flush():
    session = StreamSession(ServingSettings(stream_window=1.0, stream_hop=0.25), sample_rate=8000)
    due = session.feed(s16(tone(1.6, sr=8000)))
    assert [(w.start, w.end) for w in due] == [(0.0, 1.0), (0.25, 1.25), (0.5, 1.5)]
    assert all(w.wave.shape == (8000,) for w in due)
    assert session.flush() == []  # 0.1 s since the last window: too little to answer

    session = StreamSession(ServingSettings(stream_window=1.0, stream_hop=0.5), sample_rate=8000)
    wave = tone(1.4, sr=8000)
    assert [(w.start, w.end) for w in session.feed(s16(wave))] == [(0.0, 1.0)]
    (tail,) = session.flush()  # the last full window, ending at the last sample
    assert (tail.start, tail.end) == (0.4, 1.4)
    expected = np.frombuffer(s16(wave), "<i2")[3200:].astype(np.float32) / 32768
    np.testing.assert_array_equal(tail.wave, expected)
    assert session.flush() == []  # nothing new since


def test_session_rejects_nan_float_audio():
    session = StreamSession(ServingSettings())
    session.configure({"type": "config", "encoding": "pcm_f32le"})
    with pytest.raises(StreamError, match="NaN"):
        session.feed(np.array([0.0, np.nan], "<f4").tobytes())
