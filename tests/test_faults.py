"""Faults: runs killed with SIGKILL.

A training run killed at the three moments of an epoch end where its files are
half-written (the best model, the epoch's history row before its backup, the backup
itself) resumes after its last backed-up epoch with one history row per epoch and a
loadable best model. (``tests/test_training.py`` kills a run at a random moment.)
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fakes import make_emodb
from robustlog import record
from tiny_run import tiny_overrides

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
ENV.pop("SER_DATA_ROOT", None)


# --------------------------------------------------------------- killed training
# Runs `ser train` and SIGKILLs it at one moment of an epoch end, given as
# SER_FAULT=<moment>@<epoch>: "model" half-way through writing the best model,
# "commit" after the epoch's history row and before its backup, "backup" half-way
# through writing the backup weights.
TRAIN_SCRIPT = """
import os, signal, sys

import keras

moment, at = os.environ["SER_FAULT"].split("@")
at, epoch_now = int(at), [0]
begin = keras.callbacks.CallbackList.on_epoch_begin


def on_epoch_begin(self, epoch, logs=None):
    epoch_now[0] = epoch + 1
    return begin(self, epoch, logs)


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def torn(save, self, path):
    # Write the whole file elsewhere, copy its first half to `path`, then die.
    whole = path[: -len(".keras")] + ".whole.keras" if path.endswith(".keras") else path + ".whole.weights.h5"
    save(self, whole)
    data = open(whole, "rb").read()
    os.unlink(whole)
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    die()


def wrap(cls, name, when):
    original = getattr(cls, name)

    def method(self, *args, **kwargs):
        path = str(kwargs.get("filepath", args[0] if args else ""))
        if epoch_now[0] >= at and when(path):
            torn(original, self, path)
        return original(self, *args, **kwargs)

    setattr(cls, name, method)


keras.callbacks.CallbackList.on_epoch_begin = on_epoch_begin
if moment == "model":
    wrap(keras.Model, "save", lambda path: path.endswith(".keras"))
elif moment == "backup":
    wrap(keras.Model, "save_weights", lambda path: "backup" in path)
elif moment == "commit":
    backup_end = keras.callbacks.BackupAndRestore.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 >= at:
            die()
        return backup_end(self, epoch, logs)

    keras.callbacks.BackupAndRestore.on_epoch_end = on_epoch_end

from ser.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
"""


MOMENTS = {
    "model": "while writing the best model",
    "commit": "after the epoch's history row, before its backup",
    "backup": "while writing the epoch backup",
}


def epochs_printed(out: str) -> list[int]:
    return [int(line.split()[1].split("/")[0]) for line in out.splitlines() if line.startswith("epoch ")]


def history_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_training_killed_while_writing_an_epoch_resumes_after_its_last_backup(tmp_path):
    make_emodb(tmp_path / "corpora")
    sets = tiny_overrides(
        tmp_path / "corpora", tmp_path, "lstm", "[emodb]",
        **{"train.epochs": "5", "train.run_name": "killed", "train.monitor": "val_loss",
           "train.confusion_images": "false"},
    )  # fmt: skip
    script = tmp_path / "train_with_fault.py"
    script.write_text(TRAIN_SCRIPT)
    run_dir = tmp_path / "checkpoints" / "killed"
    start = ["--config", "configs/base.yaml", *[a for s in sets for a in ("--set", s)]]
    resume = ["--resume", str(run_dir)]

    def run(args: list[str], fault: str | None) -> tuple[int, str]:
        env = {**ENV, "SER_FAULT": fault or "none@999"}
        proc = subprocess.run(
            [sys.executable, str(script), *args], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        return proc.returncode, proc.stdout + proc.stderr

    # Each fault strikes the end of epoch k, which is then not backed up: the next
    # resume must start at epoch k again, with nothing of the killed epoch kept.
    observed = []
    for args, fault, first_epoch in [
        (start, "model@1", 1), (resume, "commit@2", 1), (resume, "backup@3", 2),
        (resume, None, 3),
    ]:  # fmt: skip
        code, out = run(args, fault)
        printed = epochs_printed(out)
        # (killed while saving its first epoch's model, the first run prints no epoch line)
        assert printed[:1] == [first_epoch] or (args is start and not printed), out
        if fault:
            assert code == -signal.SIGKILL, out
            k = int(fault.split("@")[1])
            rows = [int(r["epoch"]) for r in history_rows(run_dir)] if k > 1 else []
            # The killed epoch's row may be on disk (written before its backup)...
            assert rows in ([*range(k - 1)], [*range(k)]), rows
            observed.append((MOMENTS[fault.split("@")[0]], k, rows))
        else:
            assert code == 0, out

    rows = history_rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4]  # ...but never twice
    losses = [float(r["val_loss"]) for r in rows]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_epoch"] == int(np.argmin(losses)) + 1
    assert summary["best_val_loss"] == pytest.approx(min(losses))
    assert not list(run_dir.glob(".*")) and not (run_dir / "backup").exists()
    import keras

    assert keras.models.load_model(run_dir / "model.keras").count_params() == summary["parameters"]
    for moment, k, rows in observed:
        record(
            "faults", f"kill -9 during training, {moment}", "ser train --resume",
            f"killed in epoch {k} (history rows on disk: {len(rows)}); resumed at epoch {k}; "
            f"finished: history.csv epochs 1-5 once each, best epoch {summary['best_epoch']} "
            "(lowest val_loss) in model.keras, which loads",
        )
