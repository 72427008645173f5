"""Every bench script runs on a tiny generated corpus and writes well-formed JSON.

Timings are not asserted: speed is measured by the scripts themselves, on real data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.fakes import make_corpora


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Path:
    return make_corpora(tmp_path_factory.mktemp("bench-corpora"))


def run_bench(name: str, out: Path, *args: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--out", str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads(out.read_text())
    assert payload["bench"] == name
    assert {"date", "commit", "cpu", "cores"} <= payload["machine"].keys()
    return payload


def test_extraction_bench(corpora, tmp_path):
    out = run_bench("extraction", tmp_path / "e.json", "--data-root", str(corpora), "--limit", "6")
    paths = [r["path"] for r in out["results"]]
    assert paths[0].startswith("seed recipe") and len(paths) == 16
    for shipped in ("cnn.yaml", "dense.yaml", "lstm.yaml", "best.yaml"):  # 1 and 2 workers
        assert sum(path.startswith(f"ours: {shipped}") for path in paths) == 2, shipped
    assert all(r["files_per_s"] > 0 for r in out["results"])


def test_cache_bench(corpora, tmp_path):
    out = run_bench("cache", tmp_path / "c.json", "--data-root", str(corpora))
    for key in (
        "cold_s",
        "warm_s",
        "cold_over_warm",
        "cache_mb_per_hour",
        "first_epoch_cold_s",
        "first_epoch_warm_s",
    ):
        assert out[key] > 0, key


def test_pipeline_bench(corpora, tmp_path):
    out = run_bench(
        "pipeline", tmp_path / "p.json", "--data-root", str(corpora), "--rss-epochs", "1"
    )
    models = [r["model"] for r in out["results"]]
    assert models == ["lstm", "lstm, plain batches", "cnn", "dense"]
    assert all(r["ratio"] > 0 and r["train_examples_per_s"] > 0 for r in out["results"])
    assert [r["length_buckets"] for r in out["results"][:2]] == [8, 0]  # lstm.yaml's, then off
    assert out["peak_rss_mb"] > 0


def test_recurrent_bench(tmp_path):
    out = run_bench("recurrent", tmp_path / "rec.json", "--batches", "2", "--rounds", "1")
    assert set(out["ms_per_step_fastest_pass"]) == {"keras LSTM", "HoistedLSTM"}
    assert out["speed_up"] > 0
    assert out["max_probability_difference"] < 1e-5  # the same function of the same weights


def test_model_step_bench(tmp_path):
    out = run_bench("model_step", tmp_path / "m.json", "--batches", "2", "--rounds", "1")
    assert [name.split(" ")[0] for name in out["ms_per_step_fastest_pass"]] == [
        "lstm",
        "cnn",
        "tcn",
    ]
    assert all(ms > 0 for ms in out["ms_per_step_fastest_pass"].values())
    assert all(params > 0 for params in out["parameters"].values())


def test_scaling_bench(corpora, tmp_path):
    out = run_bench("scaling", tmp_path / "s.json", "--data-root", str(corpora), "--model", "dense")
    assert [r["fraction"] for r in out["results"]] == [0.25, 0.5, 1.0]
    files = [r["files"] for r in out["results"]]
    assert files == sorted(files) and files[0] < files[-1]


def test_inference_bench(corpora, tmp_path):
    from ser.config import load_config
    from ser.training import train
    from tests.support.tiny_run import tiny_overrides

    cfg = load_config(ROOT / "configs" / "quick.yaml", tiny_overrides(corpora, tmp_path), env={})
    run_dir = train(cfg, log=lambda line: None)["run_dir"]
    out = run_bench("inference", tmp_path / "i.json", "--run", run_dir, "--repeats", "5")
    assert out["latency"]["clip_end_to_end"]["p50_ms"] > 0
    assert [b["batch"] for b in out["batches"]] == [1, 8, 32, 128]


def test_startup_bench(tmp_path_factory, tmp_path):
    from tests.support.tiny_run import tiny_run

    run_dir = tiny_run(tmp_path_factory, "dense")
    out = run_bench(
        "startup",
        tmp_path / "s.json",
        "--run",
        str(run_dir),
        "--repeats",
        "1",
        "--runtime",
        "onnx",
        "--runtime",
        "keras",
    )
    assert out["model"] == "dense" and sorted(out["runtimes"]) == ["keras", "onnx"]
    for runtime, result in out["runtimes"].items():
        assert result["predict_s"]["first"] > 0, runtime
        assert len(result["serve_ready_s"]["runs"]) == 1, runtime


def test_runtimes_bench(tmp_path_factory, tmp_path):
    from tests.support.tiny_run import tiny_run

    runs = [tiny_run(tmp_path_factory, model) for model in ("lstm", "cnn")]
    args = [arg for run in runs for arg in ("--run", str(run))]
    out = run_bench("runtimes", tmp_path / "r.json", *args, "--repeats", "5")
    assert [r["model"] for r in out["runs"]] == ["lstm", "cnn"]
    for result in out["runs"]:
        assert result["onnx_parity_max_abs_diff"] < 1e-4
        for runtime in ("keras", "numpy", "onnx"):
            assert result[runtime]["load_s"] > 0, runtime
            assert result[runtime]["call"]["p50_ms"] > 0, runtime
