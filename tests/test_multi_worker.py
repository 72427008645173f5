"""``train.distribute: multi_worker``: one training over two real processes.

Two ``train.py`` processes on 127.0.0.1 (each with its TF_CONFIG and a free port)
train one tiny model with MultiWorkerMirroredStrategy on a generated EMO-DB.
The chief (worker 0) writes the run directory; worker 1 writes nothing lasting.
One killed worker makes the other exit with a clear message, and rerunning both
resumes from the chief's backup.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from ser import multi_worker
from ser.config import ConfigError, load_config
from tests.support import ROOT, free_port
from tests.support.fakes import make_emodb
from tests.support.tiny_run import tiny_overrides

RUN_SECONDS = 240  # two cold TensorFlow starts, extraction and a few epochs, on 2 busy cores
LOST_WORKER_SECONDS = 90  # heartbeats notice a dead task in ~10 s; a collective fails at once


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpora")
    make_emodb(root, texts=("a01", "a02"))
    return root


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One feature cache for the module's runs, as hosts share one: the first run's
    two workers fill it at once, the later runs read it."""
    return tmp_path_factory.mktemp("cache")


def _overrides(
    corpora: Path, cache: Path, work: Path, run_name: str, model: str = "dense", **extra: str
) -> list[str]:
    """A tiny run on the generated EMO-DB, trained by two workers, without dropout."""
    return tiny_overrides(
        corpora,
        work,
        model,
        "[emodb]",
        **{
            "features.cache_dir": str(cache),
            "train.distribute": "multi_worker",
            "train.run_name": run_name,
            "train.confusion_images": "false",
            f"model.{model}.dropout": "0.0",
            **extra,
        },
    )


def _tf_configs(workers: int) -> list[str]:
    """One TF_CONFIG per worker of a cluster on free loopback ports (worker 0 is chief)."""
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(workers)]}
    return [
        json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        for i in range(workers)
    ]


def _start(sets: Sequence[str], tf_config: str | None, log: Path) -> subprocess.Popen:
    """``python train.py --config configs/base.yaml --set ...`` with its output in ``log``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SER_DATA_ROOT", None)
    env.pop(multi_worker.TF_CONFIG, None)
    if tf_config is not None:
        env[multi_worker.TF_CONFIG] = tf_config
    env["TMPDIR"] = str(_temp_of(log))  # where a non-chief task trains
    _temp_of(log).mkdir(exist_ok=True)
    args = [a for s in sets for a in ("--set", s)]
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), "--config", "configs/base.yaml", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _temp_of(log: Path) -> Path:
    """The temporary folder of the process that writes ``log``."""
    return log.with_suffix(".tmp")


@contextmanager
def _workers(sets: Sequence[str], logs: Sequence[Path]) -> Iterator[list[subprocess.Popen]]:
    """The workers of one cluster, killed if still running when the block ends."""
    procs: list[subprocess.Popen] = []
    try:
        for tf_config, log in zip(_tf_configs(len(logs)), logs, strict=True):
            procs.append(_start(sets, tf_config, log))
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def _finish(procs: Sequence[subprocess.Popen], logs: Sequence[Path]) -> None:
    """Wait for every worker (bounded) and require that each succeeded."""
    deadline = time.monotonic() + RUN_SECONDS
    for proc, log in zip(procs, logs, strict=True):
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{log.name} still running after {RUN_SECONDS} s:\n{log.read_text()}")
        assert proc.returncode == 0, log.read_text()


def _epochs_logged(text: str) -> list[int]:
    """The 1-based epochs a training log reports, in order."""
    return [
        int(line.split()[1].split("/")[0])
        for line in text.splitlines()
        if line.startswith("epoch ")
    ]


def test_two_workers_train_one_run_that_loads_and_scores_like_one_process(
    corpora, shared_cache, tmp_path
):
    from ser.evaluation import Examples, evaluate_keras, load_run_data
    from ser.inference import Predictor
    from ser.training import train

    epochs = {"train.epochs": "4", "train.early_stopping.enabled": "false"}
    sets = _overrides(corpora, shared_cache, tmp_path, "two", "lstm", **epochs)
    logs = [tmp_path / "worker0.log", tmp_path / "worker1.log"]
    with _workers(sets, logs) as procs:
        _finish(procs, logs)

    run_dir = tmp_path / "checkpoints" / "two"
    # Only the chief wrote: one run directory, complete, and nothing of worker 1's.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best", "two"]
    assert sorted(p.name for p in (tmp_path / "experiments").iterdir()) == ["two"]
    for name in ("model.keras", "run.yaml", "labels.json", "normaliser.json", "summary.json"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "backup").exists()
    assert "worker 1 done; the chief wrote the run directory" in logs[1].read_text()
    assert not list(_temp_of(logs[1]).glob("ser-*"))  # its private folder is gone
    for log in logs:  # both filled the one cache at once, and read whole entries
        assert "extracted, 0 failed" in log.read_text()
    history = (run_dir / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1", "2", "3"]
    summary = json.loads((run_dir / "summary.json").read_text())

    # evaluate.py's loader and the served Predictor read the chief's run directory.
    predictor = Predictor.load(run_dir)
    data = load_run_data(predictor, log=lambda _: None)
    test = Examples(data.rows["test"], data.targets["test"])
    scored = evaluate_keras(predictor, test, data.inputs["test"], summary["labels"])
    assert scored.metrics["ua"] == pytest.approx(summary["test"]["ua"])
    assert scored.metrics["n"] == summary["test"]["n"]

    # The same config on one process, whose batch is the same global batch.
    single_cfg = load_config(ROOT / "configs" / "base.yaml", sets, env={})
    single_cfg = single_cfg.model_copy(
        update={
            "train": single_cfg.train.model_copy(update={"distribute": "none", "run_name": "one"})
        }
    )
    single = train(single_cfg, log=lambda _: None)
    probs_two = predictor.predict_inputs(data.inputs["test"], batch_size=16)
    probs_one = Predictor.load(single["run_dir"]).predict_inputs(data.inputs["test"], batch_size=16)
    gap = float(np.abs(probs_two - probs_one).max())
    two, one = summary["test"], single["test"]
    print(f"UA two workers {two['ua']:.3f}, one process {one['ua']:.3f}; largest gap {gap:.4f}")
    # Close but not bit-identical. Without dropout or batch normalisation (this LSTM has
    # neither) each step is the same average gradient; what differs is the order of
    # the sums (each task adds its half batch, then the two halves are added), and
    # Adam's normalised steps enlarge those last-bit differences on weights whose
    # gradient is near zero. After these 12 steps the largest probability gap is
    # ~0.003 (measured); 0.02 leaves room for other machines. Sharding gone wrong is
    # far off (with OFF, each task predicts all 14 validation clips and the gathered
    # predictions do not even match the clips).
    assert gap < 0.02
    assert abs(two["wa"] - one["wa"]) <= 2 / two["n"] + 1e-9


def _wait_for_backup(run_dir: Path, procs: Sequence[subprocess.Popen], logs: Sequence[Path]) -> int:
    """Block until the chief's backup holds an epoch; returns how many (bounded wait)."""
    deadline = time.monotonic() + RUN_SECONDS
    while (epochs := multi_worker.backed_up_epochs(run_dir / "backup")) < 1:
        for proc, log in zip(procs, logs, strict=True):
            assert proc.poll() is None, f"{log.name} ended before a backup:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no backup after {RUN_SECONDS} s"
        time.sleep(0.05)
    return epochs


@pytest.mark.parametrize("killed", [1, 0], ids=["worker", "chief"])
def test_a_killed_worker_stops_the_other_and_a_rerun_resumes_from_the_backup(
    corpora, shared_cache, tmp_path, killed
):
    epochs, survivor = 4, 1 - killed
    sets = _overrides(
        corpora,
        shared_cache,
        tmp_path,
        "killed",
        **{"train.epochs": str(epochs), "train.early_stopping.enabled": "false"},
    )
    run_dir = tmp_path / "checkpoints" / "killed"
    logs = [tmp_path / "worker0.log", tmp_path / "worker1.log"]
    with _workers(sets, logs) as procs:
        _wait_for_backup(run_dir, procs, logs)
        procs[killed].kill()
        try:
            procs[survivor].wait(timeout=LOST_WORKER_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {survivor} still runs {LOST_WORKER_SECONDS} s after {killed} died")
    out = logs[survivor].read_text()
    assert procs[survivor].returncode == 2, out
    assert (
        f"error: multi-worker training lost a worker (worker {killed}); this is worker {survivor}"
        in out
    )
    assert "rerun the same command on every host to resume from the backup" in out
    assert "Traceback" not in out
    # Worker 1 trains in a private folder: left behind when it is killed, else deleted.
    private = list(_temp_of(logs[1]).glob("ser-*"))
    assert [p.name.startswith("ser-worker1-") for p in private] == [True] * killed
    done = multi_worker.backed_up_epochs(run_dir / "backup")
    assert 1 <= done < epochs and not (run_dir / "summary.json").exists()

    rerun = [tmp_path / "rerun0.log", tmp_path / "rerun1.log"]
    with _workers(sets, rerun) as procs:
        _finish(procs, rerun)
    for log in rerun:
        resumed = _epochs_logged(log.read_text())
        # Each task restarts after the backed-up epochs (the chief may have logged one
        # more before it failed: that epoch was not backed up, so it is trained again).
        assert resumed == list(range(done + 1, epochs + 1)), log.read_text()
    assert f"resuming {run_dir}" in rerun[0].read_text()
    history = (run_dir / "history.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in history[1:]] == list(range(epochs))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"] == "killed" and not (run_dir / "backup").exists()


@pytest.mark.parametrize(
    ("tf_config", "problem"),
    [
        (None, "TF_CONFIG: not set"),
        ("{not json", "TF_CONFIG: not valid JSON"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}}', 'with "cluster" and "task"'),
        ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "job 'ps'"),
        (
            '{"cluster": {"worker": ["hostonly"]}, "task": {"type": "worker", "index": 0}}',
            "cluster.worker[0] is 'hostonly', not \"host:port\"",
        ),
        (
            '{"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}',
            "listed twice",
        ),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
            "task.type 'chief' is not a job of the cluster",
        ),
        (
            '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
            "task.index 2 is not an index of cluster.worker (0 to 1)",
        ),
        (
            json.dumps(
                {
                    "cluster": {"chief": ["a:1", "b:1"], "worker": ["c:1"]},
                    "task": {"type": "worker", "index": 0},
                }
            ),
            "at most one",
        ),
    ],
)
def test_a_missing_or_malformed_tf_config_is_named(tf_config, problem):
    env = {} if tf_config is None else {"TF_CONFIG": tf_config}
    with pytest.raises(ConfigError, match="TF_CONFIG") as caught:
        multi_worker.read_tf_config(env)
    assert problem in str(caught.value)
    assert "train.distribute is multi_worker" in str(caught.value)


def test_the_chief_is_the_chief_task_or_else_worker_zero():
    def task(cluster: dict, kind: str, index: int) -> multi_worker.Task:
        config = json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})
        return multi_worker.read_tf_config({"TF_CONFIG": config})

    workers = {"worker": ["a:1", "b:1", "c:1"]}
    assert [task(workers, "worker", i).is_chief for i in range(3)] == [True, False, False]
    with_chief = {"chief": ["z:1"], **workers}
    assert task(with_chief, "chief", 0).is_chief
    assert not task(with_chief, "worker", 0).is_chief
    assert task(with_chief, "worker", 2).workers == 4


def test_multi_worker_without_tf_config_fails_before_any_work(corpora, tmp_path):
    log = tmp_path / "train.log"
    proc = _start(_overrides(corpora, tmp_path / "cache", tmp_path, "nothing"), None, log)
    try:
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    out = log.read_text()
    assert proc.returncode == 2, out
    assert out.startswith("error: TF_CONFIG: not set (train.distribute is multi_worker"), out
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "cache").exists()


def test_multi_worker_needs_a_run_name_and_one_model(corpora, tmp_path):
    sets = _overrides(corpora, tmp_path / "cache", tmp_path, "named")
    unnamed = [s for s in sets if not s.startswith("train.run_name=")]
    with pytest.raises(ConfigError, match="multi_worker needs train.run_name"):
        load_config(ROOT / "configs" / "base.yaml", unnamed, env={})
    with pytest.raises(ConfigError, match="model.ensemble 1"):
        load_config(ROOT / "configs" / "base.yaml", [*sets, "model.ensemble=2"], env={})
