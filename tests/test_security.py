"""Abuse of the entry points: hostile upload names and sizes, path-like run names,
unsafe model files, pickles, and the address the server listens on.

Every file operation the server makes while answering uploads is watched with a
Python audit hook (``sys.addaudithook``): writes may only go to the system temp
area (Starlette spools a form part over 1 MB to an anonymous temporary file there)
and no path may carry the client's file name.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from ser.config import ConfigError, load_config
from ser.inference import Predictor
from ser.runs import RunDirError
from ser.serving.app import create_app
from ser.serving.settings import ServingSettings
from tests.support import ROOT
from tests.support.robustlog import record
from tests.support.tiny_run import encode, tiny_run, tone

SETTINGS = ServingSettings(max_upload_mb=2, max_clip_seconds=30, max_batch_files=3)
MARKER = "ser-probe-5e1f"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """The service of the tiny LSTM run, started."""
    with TestClient(create_app(run_dir=tiny_run(tmp_path_factory), settings=SETTINGS)) as service:
        yield service


@pytest.fixture(scope="module")
def predictor(client) -> Predictor:
    """The run the service loaded; ``predictor.run_dir`` is its folder."""
    return client.app.state.service.predictor


# ------------------------------------------------------------ file-system watch
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_MUTATING = {
    "os.rename",
    "os.remove",
    "os.rmdir",
    "os.mkdir",
    "os.symlink",
    "os.link",
    "os.truncate",
    "os.chmod",
    "shutil.copyfile",
    "shutil.move",
}
_watching: list[list[tuple[str, str]]] = []


def _audit(event: str, args: tuple) -> None:
    if not _watching:
        return
    if event == "open":
        path, mode, flags = args
        writes = (mode is not None and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS
        )
        if writes and not isinstance(path, int):
            _watching[-1].append((event, os.fsdecode(path)))
    elif event in _MUTATING:
        _watching[-1].append(
            (event, " ".join(os.fsdecode(a) for a in args if isinstance(a, (str, bytes))))
        )


sys.addaudithook(_audit)  # cannot be removed; does nothing unless a test is watching


@contextmanager
def file_writes():
    """Collects (event, path) of every file write or rename/remove/mkdir meanwhile."""
    seen: list[tuple[str, str]] = []
    _watching.append(seen)
    try:
        yield seen
    finally:
        _watching.remove(seen)


def assert_only_temp_area(writes: list[tuple[str, str]]) -> None:
    temp = os.path.realpath(tempfile.gettempdir())
    for event, path in writes:
        assert MARKER not in path, (event, path)
        assert event == "open" and os.path.realpath(path).startswith(temp), (event, path)


# ------------------------------------------------------------------- upload names
# Raw bytes inside the part's filename="..." (a browser or httpx would escape them).
HOSTILE_NAMES = {
    "parent traversal": f"../../../../etc/{MARKER}.wav".encode(),
    "absolute path": f"/etc/{MARKER}-abs.wav".encode(),
    "windows traversal": f"..\\..\\{MARKER}-win.wav".encode(),
    "percent-encoded traversal": f"..%2F..%2F{MARKER}-pct.wav".encode(),
    "NUL byte": f"{MARKER}\x00.wav/../../x".encode(),
    "not UTF-8": MARKER.encode() + b"\xff\xfe.wav",
    "1,000-character name": (MARKER + "a" * 1_000 + ".wav").encode(),
}
# Names that break the part's header: the body cannot be parsed at all.
UNPARSABLE_NAMES = {
    "CR LF inside the name": f"{MARKER}\r\nContent-Type: text/html\r\n.wav".encode(),
    "10,000-character name": (MARKER + "a" * 10_000 + ".wav").encode(),
}
BOUNDARY = "ser-boundary-7f3a"


def multipart(field: str, parts: list[tuple[bytes, bytes]]) -> dict:
    """A multipart/form-data request with every part's filename sent byte for byte."""
    body = b""
    for filename, data in parts:
        body += (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="'.encode()
            + filename
            + b'"\r\nContent-Type: audio/wav\r\n\r\n'
            + data
            + b"\r\n"
        )
    body += f"--{BOUNDARY}--\r\n".encode()
    return {
        "content": body,
        "headers": {"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    }


def big_clip() -> bytes:
    data = encode(tone(20.0), subtype="FLOAT")  # 1.28 MB: spooled to a temporary file
    assert 1 << 20 < len(data) < SETTINGS.max_upload_bytes
    return data


@pytest.mark.parametrize("case", sorted(HOSTILE_NAMES))
def test_upload_names_are_text_never_paths(client, case):
    name = HOSTILE_NAMES[case]
    small, big = encode(tone(0.5)), big_clip()
    with file_writes() as writes:
        single = client.post("/predict", **multipart("file", [(name, small)]))
        spooled = client.post("/predict", **multipart("file", [(name, big)]))
        batch = client.post("/predict/batch", **multipart("files", [(name, small), (name, big)]))
    responses = (single, spooled, batch)
    statuses = [r.status_code for r in responses]
    assert all(r.headers["content-type"] == "application/json" for r in responses)
    assert statuses == [200, 200, 200], [r.text[:300] for r in responses]
    echoed = {
        single.json()["filename"],
        spooled.json()["filename"],
        *(r["filename"] for r in batch.json()["results"]),
    }
    assert all(r["status"] == 200 for r in batch.json()["results"])
    assert len(echoed) == 1 and all(len(e) <= 255 for e in echoed)
    assert_only_temp_area(writes)
    assert writes, "the >1 MB part should have been spooled to a temporary file"
    for folder in (Path(tempfile.gettempdir()), Path("/etc"), ROOT, Path.cwd()):
        assert not [p for p in folder.iterdir() if MARKER in p.name], folder
    shown = echoed.pop()
    opened = sorted({path for _, path in writes})
    record(
        "security",
        f"upload file name: {case}",
        "POST /predict, /predict/batch",
        f"200; echoed as text {shown[:40]!r}{'...' if len(shown) > 40 else ''} "
        f"({len(shown)} chars); disk writes: {len(writes)} opens of {', '.join(opened)} "
        "(anonymous spooled parts), none named by the client",
    )


@pytest.mark.parametrize("case", sorted(UNPARSABLE_NAMES))
def test_upload_names_that_break_the_form_are_a_422_naming_the_problem(client, case):
    name = UNPARSABLE_NAMES[case]
    with file_writes() as writes:
        responses = [
            client.post("/predict", **multipart("file", [(name, encode(tone(0.5)))])),
            client.post("/predict", **multipart("file", [(name, big_clip())])),
            client.post("/predict/batch", **multipart("files", [(name, encode(tone(0.5)))])),
        ]
    for r in responses:
        assert r.status_code == 422 and r.headers["content-type"] == "application/json", r.text
        assert r.json() == {"detail": responses[0].json()["detail"], "field": None}
        assert "multipart/form-data body could not be parsed" in r.json()["detail"]
    assert_only_temp_area(writes)
    record(
        "security",
        f"upload file name: {case}",
        "POST /predict, /predict/batch",
        f"422 {responses[0].json()['detail']!r}; nothing written under the name",
    )


# --------------------------------------------------------------- size and length
def test_chunked_upload_over_the_limit_is_refused_while_streaming(client):
    chunk, chunks = b"x" * 65536, 64  # 4 MB, twice the limit, without a Content-Length
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    r = client.post("/predict", content=(chunk for _ in range(chunks)), headers=headers)
    assert r.status_code == 413 and "max_upload_mb" in r.json()["detail"], r.text

    # The same at the ASGI level, counting what the server read before answering.
    from ser.serving.app import UploadSizeLimit

    async def scenario() -> tuple[int, list[dict]]:
        received, sent = 0, []

        async def receive():
            nonlocal received
            received += 1
            return {"type": "http.request", "body": chunk, "more_body": received < chunks}

        async def send(message):
            sent.append(message)

        async def app(scope, receive, send):
            raise AssertionError("an oversized body must not reach the app")

        scope = {
            "type": "http",
            "path": "/predict",
            "headers": [(b"content-type", headers["content-type"].encode())],
        }
        await UploadSizeLimit(app, SETTINGS)(scope, receive, send)
        return received, sent

    received, sent = asyncio.run(scenario())
    assert sent[0]["status"] == 413
    limit = SETTINGS.max_upload_bytes + 64 * 1024  # one file plus the form's framing
    assert (received - 1) * len(chunk) <= limit < received * len(chunk)
    record(
        "security",
        "upload over max_upload_mb, chunked (no Content-Length)",
        "POST /predict",
        f"413 after reading {received * 64} kB of 4096 kB: {r.json()['detail'][:80]}",
    )


def flac_silence(seconds: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * 16000), np.float32), 16000, format="FLAC")
    return buf.getvalue()


def webm_silence(seconds: float, path: Path) -> bytes:
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "anullsrc=r=48000:cl=mono",
            "-t",
            str(seconds),
            "-c:a",
            "libopus",
            "-b:a",
            "6k",
            "-y",
            str(path),
        ],
        check=True,
        timeout=120,
    )
    return path.read_bytes()


def wav_claiming_more_than_it_holds() -> bytes:
    data = bytearray(encode(tone(1.0), subtype="PCM_16"))
    at = data.index(b"data")
    data[at + 4 : at + 8] = (0x7FFFFFF0).to_bytes(4, "little")  # ~1 GB declared, 32 kB sent
    return bytes(data)


@pytest.mark.parametrize(
    "case",
    [
        "FLAC, 1 h of silence",
        "WebM/Opus, 10 min of silence",
        "WAV header declaring 1 GB of samples",
    ],
)
def test_small_uploads_that_decode_to_long_audio_are_refused_quickly(client, case, tmp_path):
    if case.startswith("WebM") and not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg is not installed")
    data = {
        "FLAC, 1 h of silence": lambda: flac_silence(3600),
        "WebM/Opus, 10 min of silence": lambda: webm_silence(600, tmp_path / "long.webm"),
        "WAV header declaring 1 GB of samples": wav_claiming_more_than_it_holds,
    }[case]()
    assert len(data) < SETTINGS.max_upload_bytes
    started = time.perf_counter()
    r = client.post("/predict", files={"file": ("long", data, "application/octet-stream")})
    seconds = time.perf_counter() - started
    assert seconds < 10, seconds
    if case.startswith("WAV"):  # libsndfile reads the samples that are there
        assert r.status_code == 200 and r.json()["duration"] == pytest.approx(1.0), r.text
    else:
        assert r.status_code == 422 and "max_clip_seconds" in r.json()["detail"], r.text
    shown = r.json().get("detail") or f"duration {r.json()['duration']} s"
    record(
        "security",
        f"upload of {len(data) // 1024} kB: {case}",
        "POST /predict",
        f"{r.status_code} in {seconds:.2f} s: {shown[:100]}",
    )


# ------------------------------------------------------------------- run names
@pytest.mark.parametrize("key", ["train.run_name", "name"])
@pytest.mark.parametrize("value", ["../../x", "/tmp/x", "a/../../x", "..", "a\\..\\x"])
def test_run_names_cannot_leave_the_checkpoints_folder(key, value, tmp_path, capsys):
    from ser.cli import main

    sets = [
        f"{key}={value}",
        f"train.checkpoints_dir={tmp_path / 'ck'}",
        f"train.experiments_dir={tmp_path / 'ex'}",
    ]
    with pytest.raises(ConfigError, match=rf"{key}: must be a plain folder name"):
        load_config(ROOT / "configs" / "base.yaml", sets, env={})
    code = main(
        [
            "train",
            "--config",
            str(ROOT / "configs" / "base.yaml"),
            *[a for s in sets for a in ("--set", s)],
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"{key}: must be a plain folder name" in err
    assert not (tmp_path / "ck").exists() and not (tmp_path / "ex").exists()
    record(
        "security",
        f"run name {value!r} in the config",
        key,
        "ser train: exit 2 before any work, ConfigError 'must be a plain folder name'",
    )


def test_config_files_may_extend_and_point_to_any_path_of_their_owner(tmp_path):
    # A config is the user's own file: `extends: ../x.yaml` and data.root elsewhere are
    # theirs to choose, resolved relative to the file and to the working directory.
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "base.yaml").write_text(
        f"extends: {ROOT / 'configs' / 'base.yaml'}\nseed: 7\n"
    )
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "exp.yaml").write_text(
        "extends: ../shared/base.yaml\ndata: {root: ../../corpora}\n"
    )
    cfg = load_config(tmp_path / "mine" / "exp.yaml", env={})
    assert cfg.seed == 7 and cfg.data.root == "../../corpora"
    record(
        "security",
        "config extends: ../shared/base.yaml, data.root: ../../corpora",
        "load_config",
        "accepted: a config is the user's own file (extends resolved relative to it)",
    )


# ------------------------------------------------------------------ model files
def test_a_model_with_code_in_it_is_refused_by_predictor_load(predictor, tmp_path, capsys):
    import keras

    marker = str(tmp_path / "code-ran")
    unsafe = tmp_path / "run"
    shutil.copytree(predictor.run_dir, unsafe, symlinks=True)
    inputs = keras.Input(shape=(None, 13))
    # Keras stores a Python lambda as marshalled bytecode: loading it would run it.
    touched = keras.layers.Lambda(lambda x: (open(marker, "w").close(), x)[1])(inputs)
    outputs = keras.layers.Dense(7, activation="softmax")(
        keras.layers.GlobalAveragePooling1D()(touched)
    )
    keras.Model(inputs, outputs).save(unsafe / "model.keras")
    os.unlink(marker)  # building the model called the lambda once

    with pytest.raises(RunDirError, match="safe mode") as caught:
        Predictor.load(unsafe)
    assert not os.path.exists(marker)

    from ser.cli import main

    clip = tmp_path / "clip.wav"
    clip.write_bytes(encode(tone(0.5)))
    code = main(["predict", "--run", str(unsafe), str(clip)])
    err = capsys.readouterr().err
    assert code == 2 and "safe mode" in err and "Traceback" not in err, err
    assert not os.path.exists(marker)
    record(
        "security",
        "model.keras holding a Lambda layer with Python code",
        "Predictor.load, ser predict",
        f"refused, code never run; exit 2: {str(caught.value).split(': ', 1)[1][:110]}",
    )


def test_evaluation_with_baselines_writes_no_pickles(predictor, tmp_path):
    from ser.evaluation import evaluate_run

    run = tmp_path / "run"
    shutil.copytree(predictor.run_dir, run, symlinks=True)
    report = evaluate_run(
        run,
        overrides=[
            "evaluation.baselines=[svc, logistic_regression, knn, seed_mlp]",
            "evaluation.seed_mlp.max_iter=50",
        ],
        log=lambda _line: None,
    )
    assert {m["name"] for m in report["models"]} >= {"svc", "knn", "seed_mlp"}
    written = [p for p in run.rglob("*") if p.is_file()]
    pickles = [
        p
        for p in written
        if p.read_bytes()[:1] == b"\x80" and p.read_bytes()[1:2] in b"\x02\x03\x04\x05"
    ]
    assert pickles == [] and not [p for p in written if p.suffix in {".pkl", ".pickle", ".joblib"}]
    record(
        "security",
        "evaluation with scikit-learn baselines",
        "evaluate.py",
        f"no pickle in the {len(written)} files of the run folder (content checked); "
        "baselines are refit on every evaluation, never saved",
    )


# -------------------------------------------------------------- listen address
def test_the_server_listens_on_loopback_unless_told_otherwise(predictor, monkeypatch, capsys):
    import uvicorn

    from ser.cli import build_parser
    from ser.inference import Predictor as LoadedPredictor

    parser = build_parser()
    args = parser.parse_args(["serve", "some-run"])
    assert args.host == "127.0.0.1"
    seen = {}
    monkeypatch.setattr(LoadedPredictor, "load", classmethod(lambda cls, run_dir, **kw: predictor))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
    assert args.func(args) == 0
    assert seen["host"] == "127.0.0.1" and "host" not in ServingSettings.model_fields
    help_text = subprocess.run(
        [sys.executable, "-m", "ser.cli", "serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "default 127.0.0.1" in " ".join(help_text.split())
    record(
        "security",
        "ser serve with no --host",
        "bind address",
        "127.0.0.1 (loopback only); other interfaces need an explicit --host",
    )
