"""One training over several processes: ``train.distribute: multi_worker``.

Every process (a *task*) runs the same ``ser train`` command with its own
``TF_CONFIG``; ``tf.distribute.MultiWorkerMirroredStrategy`` keeps one copy of the
model per process and averages the gradients of each step over gRPC. This module
owns what that needs beyond the strategy itself:

- ``read_tf_config``: TF_CONFIG checked up front, its faults named;
- who writes the run directory: only the chief (task type ``chief``, or worker 0
  when the cluster has no chief). Any other task trains in a private temporary
  folder (``workspace``), deleted when it finishes, so it never touches the
  chief's files; when it resumes, its backup starts as a copy of the chief's;
- ``reporting_lost_workers``: a task that dies makes the others fail with one
  clear line instead of a TensorFlow traceback. TensorFlow 2.21 starts a
  coordination service with the strategy: every task sends it heartbeats, and a
  task that stops (killed, its host down) aborts the collectives of the others
  with ``UnavailableError`` within seconds (about 10 s measured); a task whose
  peer closed its connection fails at its next collective the same way. No
  collective timeout (``CommunicationOptions(timeout_seconds=...)``) is set:
  TensorFlow documents it for debugging (a thread per collective), and it cannot
  tell a dead task from a slow one (the chief writing its files at an epoch end);
- two workarounds that make Keras 3's ``fit`` run under the strategy at all
  (``_install_keras_workarounds``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ser import runs
from ser.config import ConfigError

TF_CONFIG = "TF_CONFIG"
JOBS = ("chief", "worker")
"""The cluster jobs this training uses: at most one chief, and workers."""
EXAMPLE_TF_CONFIG = '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'


@dataclass(frozen=True)
class Task:
    """This process's place in the cluster, from TF_CONFIG."""

    type: str
    index: int
    workers: int  # tasks that train: the chief and the workers
    has_chief: bool

    @property
    def is_chief(self) -> bool:
        """Whether this task writes the run directory."""
        return self.type == "chief" or (not self.has_chief and self.index == 0)

    @property
    def name(self) -> str:
        return f"{self.type} {self.index}"


def _fail(problem: str) -> ConfigError:
    return ConfigError(
        f"{TF_CONFIG}: {problem} (train.distribute is multi_worker; set {TF_CONFIG} on every "
        f"host, e.g. {EXAMPLE_TF_CONFIG}, with this host's task)"
    )


def _check_address(job: str, index: int, address: Any) -> None:
    """``host:port`` with a port number, or ``ConfigError``."""
    host, _, port = str(address).rpartition(":") if isinstance(address, str) else ("", "", "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _fail(f'cluster.{job}[{index}] is {address!r}, not "host:port"')


def _cluster_jobs(cluster: Any) -> dict[str, list[str]]:
    """The checked ``cluster`` object: job name -> addresses."""
    if not isinstance(cluster, dict) or not cluster:
        raise _fail('"cluster" must be an object such as {"worker": ["host1:12345", ...]}')
    for job, addresses in cluster.items():
        if job not in JOBS:
            raise _fail(f"cluster job {job!r} is not used here; use {' and '.join(JOBS)}")
        if not isinstance(addresses, list) or not addresses:
            raise _fail(f"cluster.{job} must be a non-empty list of host:port addresses")
        for index, address in enumerate(addresses):
            _check_address(job, index, address)
    if len(cluster.get("chief", [])) > 1:
        raise _fail(f"cluster.chief lists {len(cluster['chief'])} addresses; at most one")
    every = [a for addresses in cluster.values() for a in addresses]
    if len(set(every)) != len(every):
        raise _fail(f"an address is listed twice in the cluster: {every}")
    return cluster


def _task(task: Any, cluster: dict[str, list[str]]) -> Task:
    """The checked ``task`` object of TF_CONFIG within ``cluster``."""
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise _fail('"task" must be an object such as {"type": "worker", "index": 0}')
    kind, index = task["type"], task["index"]
    if kind not in cluster:
        raise _fail(f"task.type {kind!r} is not a job of the cluster ({', '.join(cluster)})")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[kind]):
        raise _fail(
            f"task.index {index!r} is not an index of cluster.{kind} (0 to {len(cluster[kind]) - 1})"
        )
    workers = sum(len(cluster[job]) for job in JOBS if job in cluster)
    return Task(kind, index, workers, "chief" in cluster)


def read_tf_config(environ: Mapping[str, str] = os.environ) -> Task:
    """This process's task from ``TF_CONFIG``; ``ConfigError`` names what is wrong."""
    text = environ.get(TF_CONFIG, "").strip()
    if not text:
        raise _fail("not set")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(f"not valid JSON ({exc})") from None
    if not isinstance(parsed, dict) or "cluster" not in parsed or "task" not in parsed:
        raise _fail('must be a JSON object with "cluster" and "task"')
    return _task(parsed["task"], _cluster_jobs(parsed["cluster"]))


def task_for(distribute: str, environ: Mapping[str, str] = os.environ) -> Task | None:
    """This process's task when ``train.distribute`` is multi_worker, else None."""
    return read_tf_config(environ) if distribute == "multi_worker" else None


@contextlib.contextmanager
def workspace(run_dir: Path, task: Task | None) -> Iterator[Path]:
    """Where this process writes its run: ``run_dir`` for the chief (or a lone
    process); for any other task a temporary folder, deleted afterwards, whose
    backup starts as a copy of the chief's (``run_dir/backup``) so that a rerun
    resumes every task from the same epoch."""
    if task is None or task.is_chief:
        yield run_dir
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"ser-{task.type}{task.index}-"))
    try:
        if (run_dir / runs.BACKUP).is_dir():
            shutil.copytree(run_dir / runs.BACKUP, scratch / runs.BACKUP)
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def backed_up_epochs(backup_dir: Path) -> int:
    """How many epochs the ``BackupAndRestore`` backup in ``backup_dir`` holds (0: none)."""
    try:
        return int(json.loads((backup_dir / "training_metadata.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


@functools.cache
def strategy():
    """The process's ``MultiWorkerMirroredStrategy`` (created once: it starts this
    task's gRPC server and waits for the others), for TF_CONFIG's cluster."""
    import tensorflow as tf

    _install_keras_workarounds()
    return tf.distribute.MultiWorkerMirroredStrategy()


def check_same_start(backup_dir: Path) -> None:
    """Fail unless every task resumes from the same epoch (each from its own copy of
    the backup); otherwise they would run different numbers of steps and hang."""
    import tensorflow as tf

    epochs = backed_up_epochs(backup_dir)
    mirrored = strategy()
    value = mirrored.experimental_distribute_values_from_function(
        lambda _context: tf.constant([epochs], tf.int64)
    )
    every = sorted(set(mirrored.gather(value, axis=0).numpy().tolist()))
    if len(every) > 1:
        raise RuntimeError(
            f"multi-worker tasks would resume from different epochs ({every}; this one "
            f"{epochs}): every host must see the chief's run directory at the same "
            "train.checkpoints_dir (a shared folder) to resume from its backup"
        )


_TASK_NAME = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")


def lost_worker_message(error: Exception, task: Task, backup_dir: Path) -> str:
    """The one line a surviving task exits with when another task is gone."""
    others = sorted(
        {f"{job} {index}" for job, index in _TASK_NAME.findall(str(error))} - {task.name}
    )
    lost = f" ({', '.join(others)})" if others else ""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = next((line for line in lines if "aborted by" in line), lines[0] if lines else "")
    said = said.split("}}")[-1].strip() or type(error).__name__
    epochs = backed_up_epochs(backup_dir)
    saved = f"{epochs} epoch(s) backed up" if epochs else "no epoch backed up yet"
    return (
        f"multi-worker training lost a worker{lost}; this is {task.name}; "
        f"rerun the same command on every host to resume from the backup in {backup_dir} "
        f"({saved}). TensorFlow said: {said[:300]}"
    )


@contextlib.contextmanager
def reporting_lost_workers(task: Task | None, backup_dir: Path) -> Iterator[None]:
    """Turn the errors a lost task causes in the others' collectives into a
    ``RuntimeError`` with ``lost_worker_message`` (nothing changes for a lone process)."""
    if task is None:
        yield
        return
    import tensorflow as tf

    try:
        yield
    except (
        tf.errors.UnavailableError,
        tf.errors.DeadlineExceededError,
        tf.errors.AbortedError,
    ) as e:
        raise RuntimeError(lost_worker_message(e, task, backup_dir)) from e


def _install_keras_workarounds() -> None:
    """Let Keras 3's ``fit``/``evaluate``/``predict`` run under MultiWorkerMirroredStrategy.

    Keras 3.15 fails there in two places (keras-team/keras#20585): building the model
    from a first batch reduces the whole (x, y) structure in one call, which the
    strategy rejects; and each step's scalar metrics are averaged with ``axis=0``,
    which a scalar has not. Both are replaced, for this strategy only, by the
    reductions they mean: the local replica's batch, and a plain mean over replicas.
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_ser_multi_worker_patched", False):
        return

    def multi_worker(strategy_: Any) -> bool:
        return isinstance(strategy_, tf.distribute.MultiWorkerMirroredStrategy)

    original_build = trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = trainer.reduce_per_replica

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        mirrored = self._distribute_strategy
        if iterator is None or mirrored is None or not multi_worker(mirrored):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            local = tf.nest.map_structure(
                lambda v: mirrored.experimental_local_results(v)[0], next(batches)
            )
            break
        with mirrored.scope():
            self._symbolic_build(data_batch=local)

    def reduce_per_replica(values, strategy_, reduction):
        if reduction in ("auto", "mean") and multi_worker(strategy_):
            return tf.nest.map_structure(lambda v: strategy_.reduce("MEAN", v, axis=None), values)
        return original_reduce(values, strategy_, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica
    trainer._ser_multi_worker_patched = True
