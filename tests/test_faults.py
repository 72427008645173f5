"""Faults: runs killed with SIGKILL, a cache that stops accepting writes, damaged entries.

A killed extraction leaves only whole cache entries and a rerun finishes the rest;
a training run killed at the three moments of an epoch end where its files are
half-written (the best model, the epoch's history row before its backup, the backup
itself) resumes after its last backed-up epoch with one history row per epoch and a
loadable best model; a cache that refuses writes stops the run with an error naming
it, keeping what it already stored; flipped bits in an entry's data are caught by
its checksum and the entry is recomputed. (``tests/test_training.py`` kills a run at
a random moment; ``tests/test_cache.py`` covers truncated and trailing-garbage entries.)
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ser.audio import load_audio
from ser.config import FeaturesConfig
from ser.features import cache as cache_module
from ser.features.cache import CacheError, FeatureCache, extract_all
from ser.features.extractors import extract_features, feature_dims
from tests.support import ROOT
from tests.support.fakes import make_emodb, write_tone
from tests.support.robustlog import record
from tests.support.tiny_run import tiny_overrides, tiny_run

SR = 16000
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
ENV.pop("SER_DATA_ROOT", None)


def features_config(cache_dir: Path, **fields) -> FeaturesConfig:
    return FeaturesConfig.model_validate(
        {"extractors": ["mfcc", "chroma", "contrast"], "cache_dir": str(cache_dir), **fields}
    )


def entries(root: Path) -> list[Path]:
    return sorted(root.glob("??/*.npy"))


def temp_files(root: Path) -> list[Path]:
    return sorted([*root.glob(".*.tmp"), *root.glob("??/.*.tmp")])


def extract(paths, cfg: FeaturesConfig):
    lines: list[str] = []
    features, report = extract_all(paths, cfg, SR, workers=1, progress=False, log=lines.append)
    return features, report, lines


# ------------------------------------------------------------ killed extraction
EXTRACT_SCRIPT = """
import sys
from pathlib import Path
from ser.config import FeaturesConfig
from ser.features.cache import extract_all

if __name__ == "__main__":  # the worker pool starts processes with spawn
    cache, listing = sys.argv[1:3]
    cfg = FeaturesConfig.model_validate(
        {"extractors": ["mfcc", "chroma", "contrast"], "cache_dir": cache, "workers": 2}
    )
    extract_all(Path(listing).read_text().split("\\n"), cfg, 16000, progress=False)
"""


def wait_until_gone(group: int, timeout: float = 30.0) -> None:
    """Until every process of ``group`` (the killed workers too) has exited and been reaped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes of group {group} still exist {timeout:.0f} s after SIGKILL")


def test_extraction_killed_mid_run_leaves_whole_entries_and_a_rerun_finishes(tmp_path):
    paths = [
        str(write_tone(tmp_path / "audio" / f"clip{i:03d}.wav", seconds=2.0, hz=120.0 + 7 * i))
        for i in range(160)
    ]
    listing = tmp_path / "paths.txt"
    listing.write_text("\n".join(paths))
    script = tmp_path / "extract.py"
    script.write_text(EXTRACT_SCRIPT)
    root = tmp_path / "cache"
    # Its own session, so the kill reaches the worker processes too (like a killed job).
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root), str(listing)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while len(entries(root)) < 20 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    out = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, out
    wait_until_gone(proc.pid)
    stored = entries(root)
    left_by_kill = temp_files(root)
    assert 20 <= len(stored) < len(paths), out

    cfg = features_config(root)
    dims = feature_dims(cfg)
    lines: list[str] = []
    cache = FeatureCache(root, log=lines.append)
    for entry in stored:
        array = cache.get(entry.stem, dims)
        assert array is not None and array.shape == (201, dims), (entry, lines)
    assert lines == []  # not one entry was truncated or otherwise damaged

    # Leftovers the rerun must tell apart: a dead writer's (the killed extraction's
    # pid on this host), an hour-old one from another machine, and one whose writer
    # on this host is alive (this process) and may still rename it.
    tag, shard = cache_module._HOST_TAG, root / "ab"
    shard.mkdir(exist_ok=True)
    dead = shard / f".{'ab' * 32}.{tag}-{proc.pid}.x1.tmp"
    old = shard / f".{'ab' * 32}.0badc0de-1.x2.tmp"
    live = shard / f".{'ab' * 32}.{tag}-{os.getpid()}.x3.tmp"
    for path in (dead, old, live):
        path.write_bytes(b"\x93NUMPY half an entry")
    os.utime(old, (time.time() - 7200, time.time() - 7200))

    features, report, lines = extract(paths, cfg)
    assert (report.hits, report.extracted, report.failed) == (
        len(stored),
        len(paths) - len(stored),
        [],
    ), lines
    assert list(features) == paths
    for path in paths:
        assert features[path].shape == (201, dims) and np.isfinite(features[path]).all()
    for path in paths[:: len(paths) // 4]:
        direct = extract_features(load_audio(path, SR), SR, cfg)
        np.testing.assert_allclose(features[path], direct, rtol=1e-5, atol=1e-4)
    assert temp_files(root) == [live]  # every leftover of a dead writer is gone
    assert len(entries(root)) == len(paths)
    record(
        "faults",
        "kill -9 during feature extraction (2 workers)",
        "behaviour",
        f"killed with {len(stored)}/{len(paths)} entries stored, all whole "
        f"({len(left_by_kill)} temp file(s) left by the kill); rerun: {report.hits} hits, "
        f"{report.extracted} extracted, 0 failed; dead writers' temp files deleted, "
        "a live writer's kept",
    )


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
    return [
        int(line.split()[1].split("/")[0]) for line in out.splitlines() if line.startswith("epoch ")
    ]


def history_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_training_killed_while_writing_an_epoch_resumes_after_its_last_backup(tmp_path):
    make_emodb(tmp_path / "corpora")
    sets = tiny_overrides(
        tmp_path / "corpora",
        tmp_path,
        "lstm",
        "[emodb]",
        **{
            "train.epochs": "5",
            "train.run_name": "killed",
            "train.monitor": "val_loss",
            "train.confusion_images": "false",
        },
    )
    script = tmp_path / "train_with_fault.py"
    script.write_text(TRAIN_SCRIPT)
    run_dir = tmp_path / "checkpoints" / "killed"
    start = ["--config", "configs/base.yaml", *[a for s in sets for a in ("--set", s)]]
    resume = ["--resume", str(run_dir)]

    def run(args: list[str], fault: str | None) -> tuple[int, str]:
        env = {**ENV, "SER_FAULT": fault or "none@999"}
        proc = subprocess.run(
            [sys.executable, str(script), *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return proc.returncode, proc.stdout + proc.stderr

    # Each fault strikes the end of epoch k, which is then not backed up: the next
    # resume must start at epoch k again, with nothing of the killed epoch kept.
    observed = []
    for args, fault, first_epoch in [
        (start, "model@1", 1),
        (resume, "commit@2", 1),
        (resume, "backup@3", 2),
        (resume, None, 3),
    ]:
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
            "faults",
            f"kill -9 during training, {moment}",
            "ser train --resume",
            f"killed in epoch {k} with {len(rows)} history row(s) on disk"
            + (" (its own, dropped on resume)" if len(rows) == k else "")
            + f"; resumed at epoch {k}; "
            f"finished: history.csv epochs 1-5 once each, best epoch {summary['best_epoch']} "
            "(lowest val_loss) in model.keras, which loads",
        )


# ------------------------------------------------------- cache refusing writes
def no_space(file, *args, **kwargs):
    file.write(b"\x93NUMPY partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def no_permission(*args, **kwargs):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


@pytest.mark.parametrize(
    "target, replacement, reason",
    [
        (np, ("save", no_space), "No space left on device"),
        (cache_module.tempfile, ("mkstemp", no_permission), "Permission denied"),
    ],
    ids=["disk full", "permission denied"],
)
def test_cache_refusing_writes_stops_with_a_clear_error_and_keeps_stored_entries(
    tmp_path, monkeypatch, target, replacement, reason
):
    paths = [str(write_tone(tmp_path / "audio" / f"{i}.wav", hz=200.0 + 90 * i)) for i in range(6)]
    cfg = features_config(tmp_path / "cache")
    before, _, _ = extract(paths[:3], cfg)

    with monkeypatch.context() as m:
        m.setattr(target, *replacement)
        with pytest.raises(CacheError) as caught:
            extract(paths, cfg)
    message = str(caught.value)
    assert str(tmp_path / "cache") in message and reason in message
    assert temp_files(tmp_path / "cache") == []
    assert len(entries(tmp_path / "cache")) == 3

    after, report, lines = extract(paths, cfg)
    assert (report.hits, report.extracted, lines) == (3, 3, [])
    for path in paths[:3]:
        np.testing.assert_array_equal(after[path], before[path])
    message = message.replace(str(tmp_path / "cache"), "<cache dir>")
    record(
        "faults",
        f"cache write fails mid-run: {reason.lower()}",
        "extraction",
        f"CacheError: {message[:150]}",
    )
    record(
        "faults",
        f"cache write fails mid-run: {reason.lower()}",
        "entries stored before",
        "kept and valid (3/3 hits on the next run), no temporary files",
    )


def test_ser_train_reports_a_cache_that_refuses_writes_without_a_traceback(
    tmp_path, monkeypatch, capsys
):
    from ser.cli import main

    make_emodb(tmp_path / "corpora")
    sets = tiny_overrides(tmp_path / "corpora", tmp_path, "lstm", "[emodb]")
    monkeypatch.setattr(np, "save", no_space)
    code = main(
        ["train", "--config", "configs/base.yaml", *[a for s in sets for a in ("--set", s)]]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: feature cache directory"), err
    assert "No space left on device" in err and "Traceback" not in err
    err = err.strip().replace(str(tmp_path / "cache"), "<cache dir>")
    record(
        "faults",
        "cache write fails mid-run: no space left on device",
        "ser train",
        f"exit 2, {err[:120]}",
    )


# ------------------------------------------------------------- damaged entries
def flip_bit(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x04
    path.write_bytes(bytes(data))


def zero_bytes(path: Path, position: int, count: int = 8) -> None:
    data = bytearray(path.read_bytes())
    data[position : position + count] = bytes(count)
    path.write_bytes(bytes(data))


def data_start(path: Path) -> int:
    with open(path, "rb") as f:
        preamble = f.read(10)  # magic, version, header length
    return 10 + int.from_bytes(preamble[8:10], "little")


TRAILER = 16  # checksum tag and value after the array


@pytest.mark.parametrize(
    "where, damage",
    [
        ("one bit in the first value", lambda p: flip_bit(p, data_start(p))),
        (
            "one bit mid-data",
            lambda p: flip_bit(p, (data_start(p) + p.stat().st_size - TRAILER) // 2),
        ),
        ("eight data bytes zeroed", lambda p: zero_bytes(p, p.stat().st_size - TRAILER - 40)),
        ("one bit of the stored checksum", lambda p: flip_bit(p, p.stat().st_size - 3)),
    ],
)
def test_flipped_bits_in_an_entry_are_caught_by_its_checksum_and_recomputed(
    tmp_path, where, damage
):
    paths = [str(write_tone(tmp_path / "audio" / f"{i}.wav", hz=200.0 + 90 * i)) for i in range(3)]
    cfg = features_config(tmp_path / "cache")
    before, _, _ = extract(paths, cfg)
    victim = entries(tmp_path / "cache")[1]
    original = victim.read_bytes()
    damage(victim)
    assert victim.read_bytes() != original and len(victim.read_bytes()) == len(original)

    after, report, lines = extract(paths, cfg)
    assert (report.hits, report.extracted, report.failed) == (2, 1, [])
    assert len(lines) == 1 and "corrupt cache entry" in lines[0] and victim.name in lines[0]
    assert "checksum mismatch" in lines[0]
    for path in paths:
        np.testing.assert_array_equal(after[path], before[path])
    assert victim.read_bytes() == original  # rewritten whole
    record(
        "faults",
        f"cache entry damaged: {where}",
        "extraction",
        "checksum mismatch: entry discarded with a warning naming it, recomputed identically",
    )


# ------------------------------------------------------------------ soak smoke
def test_soak_bench_holds_load_and_writes_memory_over_time(tmp_path_factory, tmp_path):
    run_dir = tiny_run(tmp_path_factory)
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.soak",
            str(run_dir),
            "--clients",
            "2",
            "--seconds",
            "3",
            "--warmup",
            "2",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["bench"] == "soak" and {"date", "commit", "cores"} <= report["machine"].keys()
    assert report["errors"] == 0 and report["requests"] > 0 and report["p99_ms"] > 0
    samples = report["rss_mb_over_time"]
    assert len(samples) >= 2 and all(mb > 0 for _, mb in samples)
    assert report["rss_max_mb"] == max(mb for _, mb in samples)
