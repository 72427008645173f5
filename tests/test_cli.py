"""The command line as a new user meets it: from any folder, quiet, honest about files.

Commands run as subprocesses from an empty temporary folder, so nothing they need may
come from the checkout being the current folder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ser import reports, runs
from ser.config import SHIPPED_CONFIGS_DIR, find_config, load_config
from ser.evaluation import evaluate_run
from ser.tensorflow_startup import is_startup_chatter
from tests.support import ROOT
from tests.support.fakes import make_emodb, write_tone
from tests.support.tiny_run import tiny_run

# Lines TensorFlow's C++ side writes: absl's notice, glog-style "I0000 12:00:00.1 123 x.cc:1]"
# lines, the oneDNN, CPU-instruction and CUDA notices.
TF_LOG_LINE = re.compile(r"absl::|oneDNN|cuda|cuDNN|cpu_feature_guard|^[IWEF]\d{4} [\d:.]+ +\d+ ")


def run_from(cwd: Path, *command: str, env: dict[str, str] | None = None, timeout: int = 300):
    """``command`` run in ``cwd`` with this checkout importable and TensorFlow's log level
    left to the command (which must keep quiet by itself)."""
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **(env or {})}
    full_env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run(
        command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )


def ser(*args: str, cwd: Path, env: dict[str, str] | None = None):
    """``python -m ser.cli *args`` run from ``cwd``."""
    return run_from(cwd, sys.executable, "-m", "ser.cli", *args, env=env)


def tf_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if TF_LOG_LINE.search(line)]


# ------------------------------------------------------- configs from any folder
def test_default_config_and_its_extends_chain_load_from_an_empty_folder(tmp_path):
    proc = ser("train", "--print-config", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("name: lstm\n")
    # lstm.yaml extends base.yaml, features/frames_prosody.yaml and model/lstm_stats.yaml.
    printed = proc.stdout
    assert "type: lstm" in printed and "- chroma" in printed and "cache_dir: data/cache" in printed
    assert list(tmp_path.iterdir()) == []  # printing a config writes nothing


@pytest.mark.parametrize("given", ["quick.yaml", "configs/quick.yaml"])
def test_a_shipped_config_name_not_in_the_current_folder_falls_back_to_the_shipped_one(
    tmp_path, given
):
    proc = ser("train", "--print-config", "--config", given, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("name: quick\n") and "n_mfcc: 20" in proc.stdout


def test_a_config_in_the_current_folder_wins_over_the_shipped_one(tmp_path, monkeypatch):
    (tmp_path / "lstm.yaml").write_text("extends: configs/quick.yaml\nname: mine\n")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "quick.yaml").write_text("name: local-quick\n")
    monkeypatch.chdir(tmp_path)
    assert find_config("lstm.yaml") == Path("lstm.yaml")
    # extends: is relative to the file, and here finds the local configs/quick.yaml.
    assert load_config("lstm.yaml", env={}).name == "mine"
    assert load_config("configs/quick.yaml", env={}).name == "local-quick"
    assert load_config("experiments/egemaps_spk.yaml", env={}).name == "egemaps_spk"


def test_a_config_found_nowhere_names_both_places_it_was_looked_for(tmp_path):
    proc = ser("train", "--print-config", "--config", "nope.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "nope.yaml: config file not found" in proc.stderr
    assert str(tmp_path) in proc.stderr and str(SHIPPED_CONFIGS_DIR.resolve()) in proc.stderr


def test_data_summary_with_the_default_config_works_from_an_empty_folder(tmp_path):
    corpora = tmp_path.parent / f"{tmp_path.name}-corpora"
    make_emodb(corpora)
    proc = ser(
        "data",
        "summary",
        "--set",
        "data.corpora=[emodb]",
        "--no-plots",
        cwd=tmp_path,
        env={"SER_DATA_ROOT": str(corpora)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "emodb" in proc.stdout
    # Outputs land under the current folder, as documented.
    assert (tmp_path / "data" / "summary" / "summary.txt").is_file()


def test_every_shipped_config_is_package_data():
    """pyproject's package-data patterns for ``ser`` cover every file of configs/, so an
    installed wheel holds them all (``ser/configs`` links to ``configs/`` in a checkout)."""
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["ser"]
    packaged = {p for pattern in patterns for p in (ROOT / "ser").glob(pattern)}
    shipped = {
        ROOT / "ser" / "configs" / p.relative_to(ROOT / "configs")
        for p in (ROOT / "configs").rglob("*")
        if p.is_file()
    }
    assert shipped and packaged == shipped
    assert SHIPPED_CONFIGS_DIR.resolve() == (ROOT / "configs").resolve()


# ------------------------------------------------------------ start-up chatter
def test_predict_prints_no_tensorflow_start_up_lines(run_dir, tmp_path):
    clip = write_tone(tmp_path / "clip.wav", seconds=1.5)
    # --runtime keras: TensorFlow is imported (by default NumPy runs the tiny LSTM).
    keras = ("--runtime", "keras")
    proc = ser("predict", str(clip), "--run", str(run_dir), *keras, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "clip.wav" in proc.stdout
    assert tf_lines(proc.stderr) == [], proc.stderr
    # The same command with --verbose shows them, so the check above can see them.
    loud = ser("predict", str(clip), "--run", str(run_dir), *keras, "--verbose", cwd=tmp_path)
    assert loud.returncode == 0 and tf_lines(loud.stderr), loud.stderr


def test_start_up_notices_are_recognised_and_nothing_else():
    chatter = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        (
            "I0000 00:00:1796234817.708594    5281 port.cc:153] oneDNN custom operations are on. "
            "You may see slightly different numerical results"
        ),
        (
            "I0000 00:00:1796234817.764593    5281 cpu_feature_guard.cc:227] This TensorFlow binary "
            "is optimized to use available CPU instructions in performance-critical operations."
        ),
        (
            "To enable the following instructions: AVX2 FMA, in other operations, rebuild "
            "TensorFlow with the appropriate compiler flags."
        ),
    ]
    real = [
        "E0000 00:00:1796234817.1 5281 op_kernel.cc:1] OOM when allocating tensor",
        "error: checkpoints/best: no such run directory",
        "Traceback (most recent call last):",
    ]
    assert all(is_startup_chatter(line) for line in chatter)
    assert not any(is_startup_chatter(line) for line in real)


FAKE_TENSORFLOW = """
import os
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
os.write(2, b"E0000 00:00:1.5 77 loader.cc:9] a real problem while loading\\n")
os.write(2, b"I0000 00:00:1.6 77 port.cc:153] oneDNN custom operations are on. Whatever.\\n")
if os.environ.get("FAKE_TF_FAILS"):
    raise ImportError("libtensorflow.so: cannot open shared object file")
"""


@pytest.mark.parametrize("fails", [False, True])
def test_quiet_import_keeps_every_line_that_is_not_start_up_chatter(tmp_path, fails):
    """A stand-in ``tensorflow`` package writes to file descriptor 2 as the real one does."""
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(FAKE_TENSORFLOW)
    code = "from ser.tensorflow_startup import import_tensorflow; import_tensorflow()"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    env.pop("FAKE_TF_FAILS", None)
    if fails:
        env["FAKE_TF_FAILS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert "loader.cc:9] a real problem while loading" in proc.stderr
    assert "absl::" not in proc.stderr and "oneDNN" not in proc.stderr
    assert (proc.returncode != 0) is fails
    if fails:
        assert "cannot open shared object file" in proc.stderr


# ------------------------------------------------------------ honest outputs
def report_files_on_disk(folder: Path) -> set[str]:
    """The files an evaluation writes that are present in a run directory."""
    names = {runs.REPORT_MD, runs.REPORT_JSON, runs.PREDICTIONS, *runs.PLOTS}
    return {p.name for p in folder.iterdir() if p.name in names}


@pytest.fixture
def run_copy(run_dir, tmp_path) -> Path:
    """A copy of the tiny run, so that each test sees only the files it wrote."""
    return Path(shutil.copytree(run_dir, tmp_path / "run", symlinks=True))


@pytest.mark.parametrize("plots", [False, True])
def test_report_lists_exactly_the_files_written(run_copy, plots):
    lines: list[str] = []
    report = evaluate_run(
        run_copy,
        overrides=[f"evaluation.plots={str(plots).lower()}", "evaluation.tensorboard=false"],
        baselines=False,
        log=lines.append,
    )
    listed = reports.written_files(report["files"])
    assert set(listed) == report_files_on_disk(run_copy)
    assert len(listed) == len(set(listed))
    skipped = report["files"]["plots_skipped"]
    if plots:
        assert set(runs.PLOTS) <= set(listed) and skipped == {}
    else:
        assert skipped == dict.fromkeys(runs.PLOTS, "evaluation.plots is false")
        assert not any(name.endswith(".png") for name in listed)
    said = "\n".join(lines)
    assert f"report: {run_copy / runs.REPORT_MD} (also wrote " in said
    assert ("not drawn:" in said) is not plots
    assert "PNG plots" not in said


def test_evaluate_script_from_an_empty_folder_says_what_it_wrote(run_copy, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_from(
        empty,
        *[sys.executable, str(ROOT / "evaluate.py"), str(run_copy), "--no-baselines"],
        *["--set", "evaluation.plots=false", "--set", "evaluation.tensorboard=false"],
    )
    assert proc.returncode == 0, proc.stderr
    assert "also wrote report.json, predictions.csv)" in proc.stdout
    assert "not drawn: confusion.png, per_class_recall.png, training_curves.png" in proc.stdout
    assert tf_lines(proc.stderr) == [], proc.stderr
    assert list(empty.iterdir()) == []


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory) -> Path:
    """A two-member seed ensemble of tiny dense models (one epoch each)."""
    return tiny_run(tmp_path_factory, "dense", ensemble=2)


def test_an_ensemble_gets_training_curves_with_a_line_per_member(ensemble_run):
    histories = runs.history_files(ensemble_run)
    assert [p.parent.name for p in histories] == ["0", "1"]
    report = evaluate_run(
        ensemble_run,
        overrides=["evaluation.tensorboard=false"],
        baselines=False,
        log=lambda _line: None,
    )
    assert runs.CURVES_PLOT in report["files"]["plots"]
    assert set(reports.written_files(report["files"])) == report_files_on_disk(ensemble_run)

    fig = reports.curves_figure(
        [reports.read_history(p) for p in histories], report["model"]["best_epoch"], "t"
    )
    left, right = fig.axes
    labels = {line.get_label() for line in left.lines}
    assert {"member 0 loss", "member 1 loss", "member 0 val_loss", "member 1 val_loss"} <= labels
    assert any(label.startswith("best epoch") for label in labels)
    assert {"member 0 val_ua", "member 1 val_ua"} <= {line.get_label() for line in right.lines}


# ---------------------------------------------------------------------- plots
def _model(name: str, recalls: list[float | None]) -> dict:
    per_class = {label: {"recall": r} for label, r in zip("abc", recalls, strict=True)}
    return {"name": name, "kind": "baseline", "per_class": per_class}


def test_recall_bars_carry_their_values_and_a_labelled_chance_line():
    fig = reports.recall_figure(
        [_model("svc", [0.5, 0.25, None]), _model("knn", [1.0, 0.0, 0.75])], list("abc"), "t"
    )
    (ax,) = fig.axes
    texts = [t.get_text() for t in ax.texts]
    assert sorted(texts) == sorted(["0.50", "0.25", "n/a", "1.00", "0.00", "0.75"])
    chance = [line for line in ax.lines if line.get_label().startswith("chance")]
    assert len(chance) == 1
    assert chance[0].get_label() == "chance (1/3 = 0.33)"
    assert list(chance[0].get_ydata()) == pytest.approx([1 / 3, 1 / 3])
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "chance (1/3 = 0.33)" in legend_texts


def test_confusion_cell_text_is_white_on_dark_and_black_on_light():
    assert reports.text_colour_on((0.0, 0.0, 0.0)) == "white"
    assert reports.text_colour_on((1.0, 1.0, 1.0)) == "black"
    fig = reports.confusion_figure([[10, 0], [2, 8]], ["a", "b"], "t")
    ax = fig.axes[0]
    colours = {t.get_text().split("\n")[0]: t.get_color() for t in ax.texts}
    # viridis: 0 is dark purple, 1 bright yellow, 0.8 a light green.
    assert colours["0.00"] == "white"
    assert colours["1.00"] == "black"
    assert colours["0.80"] == "black"
    assert colours["0.20"] == "white"
