"""Every awkward input through the other entry points: ``evaluate.py``, ``ser predict``,
``ser data convert``, the HTTP API and the WebSocket stream.

Each usable case is accepted; each broken one is named with the reason and skipped
while the rest goes on; a command exits non-zero only when nothing usable remains;
the API answers 4xx with a JSON error (never 500) and keeps no upload on disk; the
stream answers a bad frame with an error message and a clean close. What each entry
point did is recorded (``robustlog``) for ROBUSTNESS.md, which
``docs/generators/robustness_report.py`` renders; its renderer is tested at the end.
"""

from __future__ import annotations

import csv
import ctypes
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from ser.cli import main
from ser.inference import Predictor
from ser.serving.app import create_app
from ser.serving.settings import ServingSettings
from tests.support.badinputs import (
    BROKEN_ONLY,
    CATALOGUE,
    MIXED,
    NAME_CASES,
    NO_SPEECH,
    NOTHING_USABLE,
    ROWS,
    expected_usable,
    observed,
    running_as_root,
    short,
    write_broken_only,
    write_case,
    write_corpus,
)
from tests.support.robustlog import record
from tests.support.signals import gliding_tone

FOLDER = "directory named like a file"
# Uploads up to 25 MB, so that the 10-minute clip is parsed (spilled to a temporary file)
# and then refused for its length; few compiled batch sizes to keep start-up short.
SETTINGS = ServingSettings(
    max_upload_mb=25,
    max_clip_seconds=120,
    max_batch_files=len(ROWS),
    max_batch_windows=2,
    stream_window=1.0,
    stream_hop=1.0,
    stream_max_chunk_seconds=2.0,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """``root/custom``: every case (the 10-minute one written once here) and good clips."""
    root = tmp_path_factory.mktemp("entry")
    return root, write_corpus(root / "custom", good_per_class=3)


@pytest.fixture
def load_once(predictor, monkeypatch):
    """``ser predict`` runs unchanged but gets the module's loaded model instead of
    loading and compiling it again for every call (seconds each)."""

    def load(cls, run_dir, **_kw):
        assert Path(run_dir) == predictor.run_dir
        return predictor

    monkeypatch.setattr(Predictor, "load", classmethod(load))


def good_clip(corpus) -> Path:
    return corpus[0] / "custom" / "good" / "good0_sad.wav"


# ------------------------------------------------------------------ evaluate.py
def evaluate(run_dir: Path, root: Path, capsys) -> tuple[int, str]:
    code = main(
        [
            "evaluate",
            str(run_dir),
            "--corpus",
            "custom",
            "--data-root",
            str(root),
            "--no-baselines",
            "--set",
            "evaluation.plots=false",
            "--set",
            "evaluation.tensorboard=false",
        ]
    )
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_evaluate_skips_bad_files_with_a_count_and_scores_the_rest(
    run_dir, predictor, corpus, capsys
):
    root, paths = corpus
    code, out = evaluate(run_dir, root, capsys)
    assert code == 0, out
    lines = out.splitlines()
    with open(run_dir / "cross_corpus" / "custom" / "predictions.csv", encoding="utf-8") as f:
        scored = {row["path"] for row in csv.DictReader(f)}
    named = {
        case: next((line for line in lines if line.startswith("warning:") and str(p) in line), "")
        for case, p in paths.items()
    }
    rejected = [c for c in ROWS if c != FOLDER and (c in NAME_CASES or not expected_usable(c))]
    # The count: the reader's skipped files (all but NaN), then extraction's failure.
    manifest_line = next(line for line in lines if line.startswith("manifest:"))
    features_line = next(line for line in lines if line.startswith("features:"))
    assert manifest_line.endswith(f", {len(rejected) - 1} files skipped")
    assert ", 1 failed (" in features_line
    assert len(scored) == 6 + len([c for c in CATALOGUE if c != FOLDER and c not in rejected])
    # Nothing partial in the run's feature cache.
    cache = Path(predictor.cfg.features.cache_dir)
    assert [p for p in cache.rglob(".*") if p.is_file()] == []
    for case in ROWS:
        path = str(paths[case].absolute())
        if case == FOLDER:
            assert not named[case] and not any(s.startswith(path) for s in scored)
            observed(case, "evaluate.py", "walked as a folder (holds no audio)")
        elif case in rejected:
            assert path not in scored and named[case], f"{case}: not named"
            reason = named[case].split(f"{path}: ", 1)[1]
            observed(case, "evaluate.py", f"skipped (named): {short(reason, path)}")
        else:
            assert path in scored and not named[case], f"{case}: not scored"
            observed(case, "evaluate.py", "scored")
    counts = f"{manifest_line.split(', ')[-1]}, {features_line.split(', ')[-1].split(' (')[0]}"
    observed(MIXED, "evaluate.py", f"exit 0: {len(scored)} clips scored; {counts}")


@pytest.mark.parametrize("broken", list(BROKEN_ONLY))
def test_evaluate_exits_non_zero_when_nothing_usable_remains(
    run_dir, corpus, tmp_path, capsys, broken
):
    folder = tmp_path / "custom"
    write_broken_only(folder, corpus[1], broken)
    code, out = evaluate(run_dir, tmp_path, capsys)
    assert code != 0 and "Traceback" not in out, out
    error = next(line for line in out.splitlines() if line.startswith("error: "))[7:]
    assert error.startswith("custom: no usable clips")
    for path in folder.iterdir():
        assert any(line.startswith("warning:") and str(path) in line for line in out.splitlines())
    error = short(error, tmp_path.absolute(), limit=90)
    observed(BROKEN_ONLY[broken], "evaluate.py", f"exit {code}: {error}")


# ------------------------------------------------------------------ ser predict
def predict(paths: list[Path], run_dir: Path, capsys) -> tuple[int, dict, str]:
    code = main(["predict", *map(str, paths), "--run", str(run_dir), "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out else {}, captured.err


@pytest.mark.parametrize("case", ROWS)
def test_predict_each_case_alone(case, corpus, run_dir, predictor, load_once, capsys):
    path = corpus[1][case]
    code, doc, err = predict([path], run_dir, capsys)
    assert "Traceback" not in err
    if case == FOLDER:
        assert code == 2 and f"error: {path}: folder holds no audio files" in err
        message = short(err.splitlines()[0].removeprefix("error: "), path)
        observed(case, "ser predict", f"exit {code}: {message}")
    elif case in NO_SPEECH:
        assert code == 0, err
        (result,) = doc["results"]
        assert result["type"] == "no_speech" and result["emotion"] is None, result
        observed(case, "ser predict", f"exit 0: no_speech (voiced {result['voiced']:g})")
    elif expected_usable(case):
        assert code == 0, err
        (result,) = doc["results"]
        assert result["type"] == "prediction", result
        probabilities = result["probabilities"]
        assert list(probabilities) == predictor.labels and result["emotion"] in probabilities
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-3)
        windows = f", {len(result['timeline'])} windows" if result.get("timeline") else ""
        observed(case, "ser predict", f"exit 0: {len(probabilities)} classes{windows}")
    else:
        assert code != 0
        (result,) = doc["results"]
        assert result["path"] == str(path) and result["error"].startswith(f"{path}: ")
        assert "1 of 1 path(s) could not be predicted" in err
        observed(case, "ser predict", f"exit {code}: {short(result['error'], path)}")


def test_predict_mix_exits_0_and_reports_the_bad_files(corpus, run_dir, load_once, capsys):
    paths = [corpus[1][case] for case in ROWS] + [good_clip(corpus)]
    code, doc, err = predict(paths, run_dir, capsys)
    assert code == 0, err
    results = {r["path"]: r for r in doc["results"]}
    bad = [c for c in ROWS if not expected_usable(c) or c == FOLDER]
    for case in ROWS:
        assert ("error" in results[str(corpus[1][case])]) == (case in bad), case
    assert "emotion" in results[str(good_clip(corpus))]
    assert f"{len(bad)} of {len(paths)} path(s) could not be predicted" in err
    observed(MIXED, "ser predict", f"exit 0: {err.strip()}")


def test_predict_exits_non_zero_when_nothing_is_usable(corpus, run_dir, load_once, capsys):
    bad = [corpus[1][c] for c in ROWS if not expected_usable(c) and c != FOLDER]
    code, doc, err = predict(bad, run_dir, capsys)
    assert code != 0 and len(doc["results"]) == len(bad)
    assert all("error" in r for r in doc["results"])
    observed(NOTHING_USABLE, "ser predict", f"exit {code}: {err.strip()}")


@contextmanager
def file_access_as_a_user():
    """This thread's file permission checks as user ``nobody`` (Linux ``setfsuid``), so that
    root, who reads any file, meets "no read permission" as users do."""
    libc = ctypes.CDLL(None, use_errno=True)
    previous = libc.setfsuid(65534)
    try:
        yield
    finally:
        libc.setfsuid(previous)


@pytest.mark.skipif(
    not running_as_root() or not sys.platform.startswith("linux"),
    reason="as a user the catalogue case is already unreadable (test_predict_each_case_alone)",
)
def test_predict_unreadable_file_as_a_user(run_dir, load_once, capsys):
    folder = Path(tempfile.mkdtemp(prefix="ser-unreadable-", dir="/tmp"))
    try:
        folder.chmod(0o755)  # the user may look inside, but not read the file
        path, good = write_case(folder, "no read permission"), write_case(folder, "float32")
        with file_access_as_a_user():
            alone = predict([path], run_dir, capsys)
            mixed = predict([path, good], run_dir, capsys)
    finally:
        shutil.rmtree(folder)
    code, doc, err = alone
    assert code == 1 and "Traceback" not in err, err
    (result,) = doc["results"]
    assert result["error"] == f"{path}: not readable as audio (Permission denied)"
    assert mixed[0] == 0 and "emotion" in mixed[1]["results"][1], mixed
    message = short(result["error"], path, limit=90)
    record("inputs", "no read permission", "ser predict", f"as a user: exit {code}: {message}")


# ------------------------------------------------------------------ ser data convert
def test_convert_names_bad_files_and_converts_the_rest(corpus, tmp_path, capsys):
    root, paths = corpus
    out_dir = tmp_path / "out"
    code = main(["data", "convert", str(root / "custom"), "--to", str(out_dir), "--workers", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    bad = [c for c in ROWS if c != FOLDER and not expected_usable(c)]
    summary = lines[-1]
    assert summary.startswith("convert: ") and f"{len(bad)} failed" in summary
    # Written under a temporary name and renamed: nothing partial is left.
    assert [p.name for p in out_dir.rglob(".*")] == []
    for case in ROWS:
        path, output = paths[case], out_dir / paths[case].relative_to(root / "custom")
        prefix = f"warning: skipped {path}: "
        warning = next((line for line in lines if line.startswith(prefix)), "")
        if case == FOLDER:
            assert not warning and not output.exists() and str(path) not in out
            observed(case, "ser data convert", "walked as a folder (holds no audio)")
        elif case in bad:
            assert warning and not output.exists(), case
            reason = warning.removeprefix(prefix)
            observed(case, "ser data convert", f"skipped (named): {short(reason, path)}")
        else:
            info = sf.info(str(output))
            assert (info.channels, info.samplerate, info.subtype) == (1, 16000, "PCM_16"), case
            assert not warning
            seconds = f"{info.duration:.2f} s" if info.duration >= 0.1 else f"{info.frames} samples"
            observed(case, "ser data convert", f"converted: mono 16-bit 16 kHz, {seconds}")
    observed(MIXED, "ser data convert", f"exit 0: {short(summary)}")


def test_convert_exits_non_zero_when_nothing_is_usable(corpus, tmp_path, capsys):
    bad = [str(corpus[1][c]) for c in ROWS if not expected_usable(c) and c != FOLDER]
    code = main(["data", "convert", *bad, "--to", str(tmp_path / "out"), "--workers", "1"])
    out = capsys.readouterr().out
    assert code != 0 and out.count("warning: skipped ") == len(bad)
    assert not any((tmp_path / "out").rglob("*"))
    summary = out.splitlines()[-1]
    observed(NOTHING_USABLE, "ser data convert", f"exit {code}: {short(summary)}")


# ------------------------------------------------------------------ HTTP API
# Usable audio the API refuses by design: under its minimum length, or over max_clip_seconds.
HTTP_LIMITS = {"shorter than one frame": "need at least 100 ms", "10 minutes": "max_clip_seconds"}


@pytest.fixture(scope="module")
def spill(tmp_path_factory):
    """Python's temp folder, where the form parser spills uploads over 1 MB, made empty and
    private to this module so that anything an upload leaves there is seen."""
    folder = tmp_path_factory.mktemp("spill")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(folder))
        yield folder


@pytest.fixture(scope="module")
def client(predictor, spill):
    app = create_app(predictor, settings=SETTINGS)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def left_on_disk(folder: Path) -> list[str]:
    """Files under ``folder``, and files this process still holds open there (deleted or
    not); TensorFlow's own generated code (autograph) is not an upload."""
    held = []
    for fd in Path("/proc/self/fd").glob("*"):
        try:
            held.append(os.readlink(fd))
        except OSError:
            continue
    found = [str(p) for p in folder.rglob("*")] + [t for t in held if t.startswith(str(folder))]
    return [f for f in found if not Path(f).name.startswith("__autograph_generated_file")]


def readable_bytes(case: str, path: Path) -> bytes | None:
    """The bytes a client would send, or None when it cannot read them (a folder)."""
    try:
        return path.read_bytes()
    except OSError as exc:  # a folder, or without root an unreadable file
        assert case == FOLDER or not expected_usable(case), exc
        return None


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_http_upload_each_case(case, corpus, client, predictor, spill):
    path = corpus[1][case]
    data = readable_bytes(case, path)
    if data is None:
        observed(case, "HTTP API", "n/a: the client cannot read it")
        return
    r = client.post("/predict", files={"file": (path.name, data, "audio/wav")})
    assert r.status_code < 500, r.text
    assert left_on_disk(spill) == []
    body = r.json()
    if case in NO_SPEECH and case not in HTTP_LIMITS:
        assert r.status_code == 200, body
        assert body["type"] == "no_speech" and body["probabilities"] is None, body
        observed(case, "HTTP API", "HTTP 200: no_speech")
    elif expected_usable(case) and case not in HTTP_LIMITS:
        assert r.status_code == 200, body
        assert body["type"] == "prediction", body
        assert body["filename"] == path.name and list(body["probabilities"]) == predictor.labels
        windows = f", {len(body['timeline'])} windows" if body["timeline"] else ""
        observed(case, "HTTP API", f"HTTP 200: {len(body['probabilities'])} classes{windows}")
    else:
        assert 400 <= r.status_code < 500 and r.headers["content-type"] == "application/json"
        assert body["field"] == "file" and repr(path.name) in body["detail"], body
        assert HTTP_LIMITS.get(case, "") in body["detail"]
        detail = short(body["detail"], path.name, limit=60)
        observed(case, "HTTP API", f"HTTP {r.status_code} JSON error: {detail}")


def test_http_batch_gives_each_file_its_own_status(corpus, client, spill):
    sent = {c: corpus[1][c] for c in CATALOGUE if readable_bytes(c, corpus[1][c]) is not None}
    files = [("files", (p.name, p.read_bytes(), "audio/wav")) for p in sent.values()]
    r = client.post("/predict/batch", files=files)
    assert r.status_code == 200, r.text
    statuses = [item["status"] for item in r.json()["results"]]
    expected = [200 if expected_usable(c) and c not in HTTP_LIMITS else 4 for c in sent]
    assert [s if s == 200 else s // 100 for s in statuses] == expected
    assert left_on_disk(spill) == []
    ok = statuses.count(200)
    outcome = f"HTTP 200: {ok} items 200, {len(statuses) - ok} items 4xx, none left on disk"
    observed(MIXED, "HTTP API", outcome)


# ------------------------------------------------------------------ WebSocket /stream
def stream_file(client, path: Path) -> tuple[str, list[dict], int]:
    """Stream ``path`` as a client would: its samples as float PCM at its own rate after a
    config message, or, when it is no audio file, its raw bytes as the default 16-bit PCM.
    Returns (what was sent, the replies after ``ready``, the close code)."""
    try:
        wave, rate = sf.read(path, dtype="float32", always_2d=True)
    except sf.LibsndfileError:
        data = path.read_bytes()
        sent, config = "raw bytes as PCM", None
        chunks = [data[i : i + 32000] for i in range(0, max(len(data), 1), 32000)]
    else:
        mono = wave.mean(axis=1).astype("<f4")
        sent, config = "samples", {"type": "config", "encoding": "pcm_f32le", "sample_rate": rate}
        chunks = [mono[i : i + rate].tobytes() for i in range(0, len(mono), rate)]
    with client.websocket_connect("/stream") as ws:
        assert ws.receive_json()["type"] == "ready"
        if config:
            ws.send_text(json.dumps(config))
        for chunk in chunks:
            ws.send_bytes(chunk)
        ws.send_text(json.dumps({"type": "end"}))
        replies = []
        while True:
            try:
                replies.append(ws.receive_json())
            except WebSocketDisconnect as closed:
                return sent, replies, closed.code


# Usable audio the stream refuses by design: a rate outside 8-48 kHz.
STREAM_LIMITS = {"96 kHz": "config.sample_rate"}


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_stream_each_case(case, corpus, client):
    path = corpus[1][case]
    if readable_bytes(case, path) is None:
        observed(case, "WebSocket", "n/a: the client cannot read it")
        return
    sent, replies, code = stream_file(client, path)
    if replies and replies[-1]["type"] == "error":
        assert code in (1003, 1007, 1009)
        assert not expected_usable(case) or case in STREAM_LIMITS
        assert STREAM_LIMITS.get(case, "NaN" if "NaN" in case else "") in replies[-1]["message"]
        message = short(replies[-1]["message"], limit=50)
        outcome = f"{sent}: error '{message}', closed {code}"
    else:
        assert case not in STREAM_LIMITS and case != "NaN and Inf samples"
        *windows, end = replies
        assert code == 1000 and end == {"type": "end", "windows": len(windows)}, replies[-3:]
        kinds = [w["type"] for w in windows]
        assert set(kinds) <= {"prediction", "no_speech"}
        seen = ", ".join(f"{k} ×{kinds.count(k)}" for k in sorted(set(kinds))) or "no window"
        outcome = f"{sent}: {seen}; end, closed {code}"
    # The server is still there for the next client.
    with client.websocket_connect("/stream") as ws:
        ws.receive_json()
        ws.send_bytes((gliding_tone(1.0) * 32767).astype("<i2").tobytes())
        assert ws.receive_json()["type"] == "prediction"
    observed(case, "WebSocket", outcome)


# ------------------------------------------------------------------ ROBUSTNESS.md renderer
def section(markdown: str, title: str) -> list[str]:
    """The lines of ``## title`` up to the next heading."""
    lines = markdown.splitlines()
    start = lines.index(f"## {title}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def test_report_renders_each_table_as_a_grid(tmp_path, capsys):
    import importlib.util

    generator = Path(__file__).resolve().parents[1] / "docs" / "generators" / "robustness_report.py"
    spec = importlib.util.spec_from_file_location("robustness_report", generator)
    robustness_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(robustness_report)

    cells = [
        ("inputs", "stereo", "HTTP API", "HTTP 200: 7 classes"),
        ("inputs", "empty file", "reader", "skipped | named"),  # recorded later, listed first
        ("inputs", "stereo", "reader", "listed"),
        ("inputs", "stereo", "reader", "listed"),  # the same outcome twice: shown once
        ("faults", "disk full", "cache", "HTTP 500 from the API"),
        ("faults", "kill -9", "train.py", "resumed at epoch 2"),
    ]
    log = tmp_path / "r.jsonl"
    lines = [json.dumps(dict(zip(("table", "row", "column", "outcome"), c))) for c in cells]
    log.write_text("\n".join(lines) + "\nnot json\n", encoding="utf-8")
    soak = tmp_path / "soak.json"
    rss = [[60 * i, 200.5 + i] for i in range(20)]
    soak.write_text(json.dumps({"requests": 1000, "errors": 0, "rss_mb_over_time": rss}))
    out = tmp_path / "ROBUSTNESS.md"

    assert robustness_report.main([str(log), "--load", str(soak), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.index("## inputs") < text.index("## faults") < text.index("## load and soak")
    assert "1 log line(s) were not valid entries" in text
    inputs = section(text, "inputs")
    assert [line for line in inputs if line.startswith("|")] == [
        "| inputs | reader | HTTP API |",
        "|---|---|---|",
        "| empty file | skipped \\| named | — |",
        "| stereo | listed | HTTP 200: 7 classes |",
    ]
    assert "3 cells recorded (2 rows × 2 columns, 1 empty)." in inputs
    assert "No cell shows a crash, an HTTP 5xx or a traceback." in inputs
    faults = section(text, "faults")
    assert "| kill -9 | — | resumed at epoch 2 |" in faults
    assert "Crash, HTTP 5xx or traceback: disk full × cache." in faults
    load = section(text, "load and soak")
    assert "| requests | 1000 |" in load and "| errors | 0 |" in load
    samples = [s for s in load[load.index("| seconds | RSS MB |") + 2 :] if s.startswith("|")]
    assert samples[0] == "| 0 | 200.5 |" and samples[-1] == "| 1140 | 219.5 |"
    assert len(samples) == robustness_report.RSS_SAMPLES

    # No load result yet: a note instead of a failure.
    missing = tmp_path / "nowhere" / "soak.json"
    assert robustness_report.main([str(log), "--load", str(missing), "--out", str(out)]) == 0
    assert f"`{missing}` does not exist" in out.read_text(encoding="utf-8")
    capsys.readouterr()
