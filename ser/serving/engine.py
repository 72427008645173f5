"""One inference thread that batches whatever is waiting.

Requests prepare their features in worker threads and hand the normalised
windows to ``InferenceEngine``; its thread takes every job queued at that moment
(up to ``max_batch_windows`` windows), pads them into one batch and runs the model
once. A lone request runs at once (no added wait); under load the model call is
shared: an LSTM step costs about the same for 8 rows as for 1. The model is only
ever called from this thread, so concurrent requests cannot interleave inside it.

The same thread first warms the model up (``Predictor.warm_up``: compiles it for the
batch sizes it will see, when the runtime compiles), so a server answers its liveness
check while the model compiles; requests sent meanwhile wait in the queue, and
``ready`` says when the warm-up is over.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from ser.inference import Predictor

LOG = logging.getLogger("uvicorn.error")


@dataclass
class _Job:
    inputs: list[np.ndarray]
    future: Future = field(default_factory=Future)


@dataclass
class EngineStats:
    batches: int = 0
    windows: int = 0
    largest_batch: int = 0
    warm_up_seconds: float | None = None  # once the warm-up is over
    warm_up_error: str | None = None  # why it failed, if it did


class InferenceEngine:
    """The model's own thread; ``on_batch(windows)`` hears of every model call's size."""

    def __init__(
        self,
        predictor: Predictor,
        max_batch_windows: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.predictor = predictor
        self.max_batch_windows = max_batch_windows
        self.on_batch = on_batch
        self.stats = EngineStats()
        self.ready = threading.Event()
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self, warm_up: Sequence[int] | None = None) -> InferenceEngine:
        """Start the thread; given ``warm_up`` batch sizes, it warms the model up for them
        before its first job (``ready`` is set after), else ``ready`` is set at once."""
        with self._lock:
            if self._thread is None:
                sizes = None if warm_up is None else list(warm_up)
                self._thread = threading.Thread(
                    target=self._run, args=(sizes,), name="ser-inference", daemon=True
                )
                self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def submit(self, inputs: list[np.ndarray]) -> Future:
        """Normalised model inputs -> a future of their probabilities [len(inputs), C]."""
        if self._thread is None:
            raise RuntimeError("inference engine is not running")
        job = _Job(list(inputs))
        self._queue.put(job)
        return job.future

    async def predict(self, inputs: list[np.ndarray]) -> np.ndarray:
        return await asyncio.wrap_future(self.submit(inputs))

    def _take_batch(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, count, stop = [first], len(first.inputs), False
        while count < self.max_batch_windows:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            jobs.append(job)
            count += len(job.inputs)
        return jobs, stop

    def _warm_up(self, batch_sizes: list[int]) -> None:
        """Compile and try the model before the first job. A failure is kept in
        ``stats.warm_up_error`` (``ready`` stays unset) and the jobs are still run: they
        then fail with the model's own error."""
        started = time.perf_counter()
        try:
            self.predictor.warm_up(batch_sizes)
        except Exception as exc:  # any failure: kept for /ready, and the jobs still run
            self.stats.warm_up_error = f"{type(exc).__name__}: {exc}"
            LOG.error("model warm-up failed: %s", self.stats.warm_up_error)
            return
        self.stats.warm_up_seconds = time.perf_counter() - started
        self.ready.set()
        LOG.info("model ready: warmed up in %.1f s", self.stats.warm_up_seconds)

    def _run(self, warm_up: list[int] | None) -> None:
        if warm_up is None:
            self.ready.set()
        else:
            self._warm_up(warm_up)
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, stop = self._take_batch(first)
            # A client that went away cancels its future; skip its windows.
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            if jobs:
                self._run_jobs(jobs)
            if stop:
                return

    def _run_jobs(self, jobs: list[_Job]) -> None:
        inputs = [x for job in jobs for x in job.inputs]
        try:
            probs = self.predictor.predict_normalised(inputs, batch_size=self.max_batch_windows)
        except Exception as exc:  # handed to every waiting request
            for job in jobs:
                job.future.set_exception(exc)
            return
        self.stats.batches += 1
        self.stats.windows += len(inputs)
        self.stats.largest_batch = max(self.stats.largest_batch, len(inputs))
        if self.on_batch is not None:
            self.on_batch(len(inputs))
        start = 0
        for job in jobs:
            job.future.set_result(probs[start : start + len(job.inputs)])
            start += len(job.inputs)
