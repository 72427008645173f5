"""Generated input: the HTTP API from its own OpenAPI schema, the decoder and the extractors.

Every part is bounded (``max_examples``, no deadline) and derandomised, so a run in
CI sees the same examples as a run here; each records how many examples it ran, in
how long, and what they came to. The contracts:

- API (schemathesis): no 5xx; status codes, content types and bodies as the schema
  documents them, for the schema's own generated requests (positive and negative)
  and for the same requests carrying generated audio.
- ``ser.audio.decode``: a finite float32 mono wave, or ``AudioError`` with a message.
- ``extract_features``: a finite float32 [frames, feature_dims] array, or a
  ``ValueError`` with a message; never another exception, never NaN or infinity.
"""

from __future__ import annotations

import io
import struct
import time
import warnings
from collections import Counter

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, checks

from ser.audio import AudioError, decode
from ser.config import FeaturesConfig
from ser.features.extractors import extract_features, feature_dims
from ser.serving.app import create_app
from ser.serving.settings import ServingSettings
from tests.support.robustlog import record
from tests.support.tiny_run import tiny_run


def bounded(examples: int):
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


# ------------------------------------------------------------------ audio bytes
def _chunk(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("<I", len(body)) + body + b"\0" * (len(body) % 2)


FORMAT_TAGS = [1, 3, 6, 7, 2, 0x11, 0xFFFE, 0x55]  # PCM, float, A/mu-law, ADPCMs, extensible, MP3
SAMPLES = st.sampled_from(
    [0.0, 0.3, -1.0, 1.0, 1e30, -3e38, float("nan"), float("inf"), -float("inf"), 1e-45, 1e300]
) | st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def wav_files(draw) -> bytes:
    """A RIFF/WAVE file built field by field: any format tag, channel count, rate, bit
    depth and block size, sizes that agree or lie, samples as raw bytes or as floats
    (NaN, infinities, huge, subnormal), an extra chunk, a truncated end."""
    tag = draw(st.sampled_from(FORMAT_TAGS) | st.integers(0, 0xFFFF))
    channels = draw(st.integers(1, 8) | st.integers(0, 0xFFFF))
    rate = draw(st.sampled_from([8000, 16000, 22050, 44100, 48000]) | st.integers(0, 2**32 - 1))
    bits = draw(st.sampled_from([8, 16, 24, 32, 64]) | st.integers(0, 0xFFFF))
    block = draw(st.just(max(1, channels * bits // 8) % 0x10000) | st.integers(0, 0xFFFF))
    byte_rate = draw(st.just(rate * block % 2**32) | st.integers(0, 2**32 - 1))
    fmt = struct.pack("<HHIIHH", tag, channels, rate, byte_rate, block, bits)
    if tag == 0xFFFE or draw(st.booleans()):
        fmt += struct.pack("<HHI", 22, bits, 0) + draw(st.binary(min_size=16, max_size=16))
    kind = draw(st.sampled_from(["bytes", "float32", "float64"]))
    if kind == "bytes":
        data = draw(st.binary(max_size=3000))
    else:
        with np.errstate(over="ignore"):  # float64 values beyond float32 become inf
            data = np.array(draw(st.lists(SAMPLES, max_size=600)), dtype=kind).tobytes()
    body = b"WAVE" + _chunk(b"fmt ", fmt)
    if draw(st.booleans()):
        body += _chunk(b"LIST", draw(st.binary(max_size=40)))
    declared = draw(st.just(len(data)) | st.integers(0, 2**32 - 1))
    body += b"data" + struct.pack("<I", declared) + data
    riff = draw(st.just(len(body)) | st.integers(0, 2**32 - 1))
    raw = b"RIFF" + struct.pack("<I", riff) + body
    return raw[: draw(st.integers(0, len(raw)))] if draw(st.booleans()) else raw


@st.composite
def playable_wavs(draw) -> bytes:
    """A well-formed WAV that decodes: 16-bit or float samples, 1-4 channels, any rate
    from 100 Hz to 192 kHz, 1 frame to 1.5 s of tones, noise, silence or extremes."""
    rate = draw(st.sampled_from([8000, 16000, 44100]) | st.integers(100, 192_000))
    channels = draw(st.integers(1, 4))
    frames = (
        draw(st.integers(1, 8) | st.integers(1, 4000))
        if draw(st.booleans())
        else (max(1, int(draw(st.floats(0.05, 1.5)) * rate)))
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = draw(st.sampled_from(["noise", "tone", "silence", "full scale", "huge", "denormal"]))
    t = np.arange(frames)[:, None] / rate
    wave = {
        "noise": lambda: rng.uniform(-1, 1, (frames, channels)),
        "tone": lambda: 0.5 * np.sin(2 * np.pi * rng.uniform(50, 4000) * t) + 0 * t,
        "silence": lambda: np.zeros((frames, channels)),
        "full scale": lambda: np.sign(rng.standard_normal((frames, channels))),
        "huge": lambda: rng.standard_normal((frames, channels)) * 10.0 ** rng.uniform(3, 38),
        "denormal": lambda: rng.standard_normal((frames, channels)) * 1e-40,
    }[shape]()
    return wav_bytes(np.broadcast_to(wave, (frames, channels)), rate, draw(st.booleans()))


def wav_bytes(wave: np.ndarray, rate: int, float32: bool) -> bytes:
    """[frames, channels] as a WAV of float32 samples, or of 16-bit ones clipped to [-1, 1]."""
    if float32:
        tag, bits, data = 3, 32, wave.astype("<f4").tobytes()
    else:
        tag, bits, data = 1, 16, (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()
    block = wave.shape[1] * bits // 8
    fmt = struct.pack("<HHIIHH", tag, wave.shape[1], rate, rate * block, block, bits)
    body = b"WAVE" + _chunk(b"fmt ", fmt) + _chunk(b"data", data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


# Found by these tests: float samples near the float32 limit decoded to NaN once mixed
# to mono and resampled, and extracted to NaN features (served as null probabilities).
NEAR_FLOAT32_MAX = wav_bytes(
    np.full((2000, 2), 3e38) * [1, -1] ** np.arange(2000)[:, None], 44100, True
)
HUGE_NOISE = wav_bytes(np.random.default_rng(0).standard_normal((8000, 1)) * 1e30, 16000, True)


MAGIC = [
    b"",
    b"RIFF",
    b"RIFX",
    b"fLaC",
    b"OggS",
    b"ID3\x03\x00\x00\x00\x00\x00\x00",
    b"\xff\xfb",
    b"FORM\x00\x00\x00\x20AIFF",
    b".snd",
    b"caff",
    b"wvpk",
    b"\x1aE\xdf\xa3",
]
junk = st.builds(lambda magic, rest: magic + rest, st.sampled_from(MAGIC), st.binary(max_size=4000))
audio_bytes = st.one_of(playable_wavs(), wav_files(), junk)


# --------------------------------------------------------- decoder + extractors
MFCC = FeaturesConfig.model_validate({"extractors": ["mfcc"]})


def outcome_of_features(wave: np.ndarray, sample_rate: int, cfg: FeaturesConfig) -> str:
    """'features' or 'ValueError'; fails the test on anything else."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa's hints on tiny or silent input
            features = extract_features(wave, sample_rate, cfg)
    except ValueError as exc:
        assert str(exc).strip(), "a ValueError without a message"
        return "ValueError"
    assert features.dtype == np.float32 and features.ndim == 2, (features.dtype, features.shape)
    assert features.shape[0] >= 1 and features.shape[1] == feature_dims(cfg), features.shape
    assert np.isfinite(features).all(), "non-finite features"
    return "features"


def test_decoder_and_extractor_on_generated_audio_files():
    seen: Counter[str] = Counter()

    @bounded(600)
    @given(audio_bytes, st.sampled_from([16000, 8000]))
    @example(NEAR_FLOAT32_MAX, 16000)
    @example(HUGE_NOISE, 16000)
    def run(data: bytes, sample_rate: int):
        try:
            wave = decode(io.BytesIO(data), sample_rate)
        except AudioError as exc:
            assert str(exc).strip()
            seen["decode: AudioError"] += 1
            return
        assert wave.dtype == np.float32 and wave.ndim == 1 and wave.size >= 1
        assert np.isfinite(wave).all()
        seen["decode: wave"] += 1
        seen[f"then extract_features: {outcome_of_features(wave, sample_rate, MFCC)}"] += 1

    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    assert seen["decode: wave"] and seen["decode: AudioError"]
    assert seen["then extract_features: features"] and seen["then extract_features: ValueError"]
    record(
        "fuzz",
        "audio files: built WAV headers, playable WAVs, random bytes after 12 magics",
        "ser.audio.decode + extract_features",
        f"{sum(v for k, v in seen.items() if k.startswith('decode'))} examples in {seconds:.0f} s: "
        + ", ".join(f"{k} {v}" for k, v in sorted(seen.items()))
        + "; no other exception, no NaN",
    )


EXTRACTOR_SETS = [
    ["mfcc"],
    ["chroma"],
    ["mel"],
    ["contrast"],
    ["tonnetz"],
    ["prosody"],
    ["mfcc", "chroma", "contrast"],
]
CONFIGS = [FeaturesConfig.model_validate({"extractors": names}) for names in EXTRACTOR_SETS]


@st.composite
def waves(draw) -> np.ndarray:
    """Mono (sometimes not) arrays: empty to 6000 samples of noise, silence, DC, full
    scale, float32 maximum, huge or subnormal values, with NaN or infinity dropped in."""
    n = draw(st.integers(0, 6000) | st.integers(0, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(
        st.sampled_from(
            [
                "noise",
                "zeros",
                "dc",
                "full scale",
                "float32 max",
                "huge",
                "subnormal",
                "nan",
                "inf",
                "float64 beyond float32",
                "stereo",
            ]
        )
    )
    wave = (0.3 * rng.standard_normal(n)).astype(np.float32)
    if kind == "zeros":
        wave[:] = 0
    elif kind == "dc":
        wave[:] = 1
    elif kind == "full scale":
        wave = np.sign(wave)
    elif kind == "float32 max":
        wave[:] = np.finfo(np.float32).max
    elif kind == "huge":
        wave *= np.float32(10.0 ** draw(st.integers(4, 37)))
    elif kind == "subnormal":
        wave *= np.float32(1e-41)
    elif kind in ("nan", "inf") and n:
        wave[rng.integers(0, n, size=draw(st.integers(1, 3)))] = np.nan if kind == "nan" else np.inf
    elif kind == "float64 beyond float32":
        return wave.astype(np.float64) * 1e300
    elif kind == "stereo":
        return np.stack([wave, wave], axis=1)
    return wave


def test_extractors_on_generated_arrays():
    seen: Counter[str] = Counter()

    @bounded(300)
    @given(waves(), st.sampled_from([8000, 16000, 22050, 44100]), st.sampled_from(CONFIGS))
    def run(wave: np.ndarray, sample_rate: int, cfg: FeaturesConfig):
        seen[outcome_of_features(wave, sample_rate, cfg)] += 1

    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    assert seen["features"] and seen["ValueError"]
    record(
        "fuzz",
        "arrays: empty to 6000 samples, NaN/inf, huge, float32 max, subnormal, stereo",
        "extract_features (mfcc, chroma, mel, contrast, tonnetz, prosody, a mix; 8-44.1 kHz)",
        f"{sum(seen.values())} examples in {seconds:.0f} s: finite features {seen['features']}, "
        f"ValueError with a message {seen['ValueError']}; no other exception, no NaN",
    )


# ------------------------------------------------------------------ HTTP API
@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    settings_ = ServingSettings(max_upload_mb=1, max_clip_seconds=20, max_batch_files=4)
    app = create_app(run_dir=tiny_run(tmp_path_factory), settings=settings_)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


API_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]
OPERATIONS = [
    ("POST", "/predict", GenerationMode.POSITIVE),
    ("POST", "/predict", GenerationMode.NEGATIVE),
    ("POST", "/predict/batch", GenerationMode.POSITIVE),
    ("POST", "/predict/batch", GenerationMode.NEGATIVE),
    ("GET", "/health", GenerationMode.POSITIVE),  # no parameters: nothing to make invalid
    ("GET", "/model", GenerationMode.POSITIVE),
]


@pytest.mark.parametrize("method, path, mode", OPERATIONS, ids=lambda v: getattr(v, "value", v))
def test_api_answers_generated_requests_as_its_schema_says(api_schema, method, path, mode):
    operation = api_schema[path][method]
    statuses: Counter[int] = Counter()
    # Invalid data must be refused with a 4xx, except that a batch answers 200 with a
    # status per file: a generated "boolean" part is, on the wire, a file holding "true".
    extra = (
        [checks.negative_data_rejection]
        if (mode, path) == (GenerationMode.NEGATIVE, "/predict")
        else []
    )

    audio = st.none() | st.lists(playable_wavs() | audio_bytes, min_size=1, max_size=3)

    @bounded(40)
    @given(case=operation.as_strategy(generation_mode=mode), audio=audio)
    def run(case, audio):
        if audio and isinstance(case.body, dict) and mode == GenerationMode.POSITIVE:
            field = "file" if path == "/predict" else "files"
            case.body[field] = audio[0] if field == "file" else audio
        response = case.call()
        statuses[response.status_code] += 1
        case.validate_response(response, checks=API_CHECKS + extra)

    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    assert not [s for s in statuses if s >= 500]
    record(
        "fuzz",
        f"{method} {path}, {mode.value} cases from the OpenAPI schema"
        + (
            " (half carrying generated audio)"
            if method == "POST" and mode == GenerationMode.POSITIVE
            else ""
        ),
        "schemathesis: no 5xx, documented status, content type and body",
        f"{sum(statuses.values())} requests in {seconds:.0f} s: "
        + ", ".join(f"{s} x{n}" for s, n in sorted(statuses.items())),
    )


def test_api_refuses_audio_whose_features_overflow(api_schema):
    from fastapi.testclient import TestClient

    with TestClient(api_schema.app) as client:
        r = client.post("/predict", files={"file": ("loud.wav", HUGE_NOISE, "audio/wav")})
    assert r.status_code == 422 and "not finite" in r.json()["detail"], r.text
    record(
        "fuzz",
        "float WAV of noise scaled to 1e30 (found by the extractor fuzz)",
        "POST /predict",
        f"422 {r.json()['detail'][:110]!r} (was 200 with null probabilities)",
    )
