"""The service's Prometheus metrics: their one definition and what ``GET /metrics`` answers.

Every metric is named ``ser_...``:

- ``ser_http_request_duration_seconds`` (histogram) and ``ser_http_requests_total``
  (counter), labelled ``route`` (the route's template, e.g. ``/predict``; ``/static``
  for the files under it; ``unmatched`` for paths no route serves), ``method`` and
  ``status``. Every HTTP answer counts, refusals by the middleware (401, 413, 429, 503)
  included, and so do the scrapes of ``/metrics`` (``route="/metrics"``; a scrape shows
  the ones before it). WebSocket streams are not HTTP requests: see the gauge below.
- ``ser_model_batch_windows`` (histogram): windows per model call, as the inference
  thread batches them (``engine.py``).
- ``ser_request_windows`` (histogram): windows one prediction request sent to the
  model (0 for a request whose clips had no speech).
- ``ser_no_speech_answers_total`` (counter): clips and live windows answered
  ``no_speech`` without running the model.
- ``ser_active_sessions`` (gauge): live speaker sessions in the session store,
  counted at each scrape.
- ``ser_open_streams`` (gauge): live ``WS /stream`` connections being served.
- ``ser_model_info`` (gauge, always 1) labelled ``model_id``, ``model_type`` and
  ``runtime``: the model served. The other metrics do not repeat these labels; join
  them in a query, e.g. ``ser_http_requests_total * on() group_left(model_id)
  ser_model_info``.

Several worker processes (prometheus-client's multiprocess mode; ``ser serve
--workers N``): the process that starts the workers prepares a directory for them first
(``multiprocess_metrics``, ``prepare_multiprocess_metrics``), so each worker writes its
values to files there (``PROMETHEUS_MULTIPROC_DIR``) and a scrape, answered by any one
worker, adds up every worker's counts. ``ser_open_streams`` is summed over the live
workers (each holds its own streams); ``ser_active_sessions`` is the value last set by
any live worker, as the workers share one session store and each counts all of it. A
worker that stops drops its gauges (``mark_worker_dead``); one that is killed leaves its
last gauge values until the directory is prepared again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from starlette.routing import Match

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds: from a cached answer (ms) to a long clip decoded and windowed under load.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Windows: the engine's batch sizes are powers of two up to max_batch_windows.
WINDOW_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128)
UNMATCHED_ROUTE = "unmatched"


# ---------------------------------------------------------------------- worker processes
def multiprocess_directory() -> Path | None:
    """The directory the workers share their values through, None in a single process."""
    directory = os.environ.get(MULTIPROCESS_ENV)
    return Path(directory) if directory else None


def prepare_multiprocess_metrics(
    directory: str | os.PathLike[str], environ: MutableMapping[str, str] = os.environ
) -> Path:
    """Make ``directory`` the empty place where worker processes keep their metric
    values, and point ``PROMETHEUS_MULTIPROC_DIR`` in ``environ`` (this process's
    environment, which the workers it starts inherit) at it. Call it before starting the
    workers: values left by an earlier run would otherwise be counted again."""
    path = Path(directory).resolve()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: not a directory (metrics directory for the workers)")
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    environ[MULTIPROCESS_ENV] = str(path)
    return path


@contextmanager
def multiprocess_metrics(environ: MutableMapping[str, str] = os.environ) -> Iterator[Path]:
    """Around the life of the worker processes, in the process that starts them: a fresh
    metrics directory for them (``$PROMETHEUS_MULTIPROC_DIR`` when set, emptied; else a
    temporary one, removed afterwards)."""
    given = environ.get(MULTIPROCESS_ENV)
    directory = Path(given) if given else Path(tempfile.mkdtemp(prefix="ser-metrics-"))
    try:
        yield prepare_multiprocess_metrics(directory, environ)
    finally:
        if not given:
            shutil.rmtree(directory, ignore_errors=True)


def mark_worker_dead(pid: int) -> None:
    """Drop the gauges of the stopped worker ``pid`` from the sums (its counts stay)."""
    directory = multiprocess_directory()
    if directory is not None:
        multiprocess.mark_process_dead(pid, str(directory))


def _check_multiprocess_mode() -> bool:
    """Whether this process keeps its values in the shared directory; an error when the
    variable was set only after prometheus-client chose where to keep them."""
    if multiprocess_directory() is None:
        return False
    if not getattr(values.ValueClass, "_multiprocess", False):
        raise RuntimeError(
            f"{MULTIPROCESS_ENV} was set after prometheus_client was imported; set it "
            "before the worker processes start (prepare_multiprocess_metrics)"
        )
    return True


def route_template(scope) -> str:
    """The template of the route that serves an HTTP request (``/predict``, never the
    raw path with its query), or ``unmatched``."""
    for route in scope["app"].routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return getattr(route, "path", UNMATCHED_ROUTE) or UNMATCHED_ROUTE
    return UNMATCHED_ROUTE


# ---------------------------------------------------------------------- the metrics
class ServiceMetrics:
    """One service's metrics, in a registry of its own (two apps in one process, as in
    the tests, count apart), with the calls that record them."""

    def __init__(self) -> None:
        self.multiprocess = _check_multiprocess_mode()
        self.registry = CollectorRegistry()
        http = ["route", "method", "status"]
        self.request_seconds = Histogram(
            "ser_http_request_duration_seconds",
            "HTTP requests: seconds from arrival to the end of the answer",
            http,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "ser_http_requests", "HTTP requests answered", http, registry=self.registry
        )
        self.batch_windows = Histogram(
            "ser_model_batch_windows",
            "windows per model call (requests batched by the inference thread)",
            buckets=WINDOW_BUCKETS,
            registry=self.registry,
        )
        self.request_windows = Histogram(
            "ser_request_windows",
            "windows one prediction request sent to the model",
            buckets=WINDOW_BUCKETS,
            registry=self.registry,
        )
        self.no_speech = Counter(
            "ser_no_speech_answers",
            "clips and live windows answered no_speech (the model did not run)",
            registry=self.registry,
        )
        self.active_sessions = Gauge(
            "ser_active_sessions",
            "live speaker sessions in the session store (counted at each scrape)",
            multiprocess_mode="livemostrecent",
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "ser_open_streams",
            "live WebSocket streams being served (summed over worker processes)",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.model_info = Gauge(
            "ser_model_info",
            "the model served (value 1)",
            ["model_id", "model_type", "runtime"],
            multiprocess_mode="livemax",
            registry=self.registry,
        )

    def describe_model(self, model_id: str, model_type: str, runtime: str) -> None:
        self.model_info.labels(model_id, model_type, runtime).set(1)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.request_seconds.labels(route, method, str(status)).observe(seconds)
        self.requests.labels(route, method, str(status)).inc()

    def observe_model_batch(self, windows: int) -> None:
        self.batch_windows.observe(windows)

    def observe_request_windows(self, windows: int) -> None:
        self.request_windows.observe(windows)

    def count_no_speech(self) -> None:
        self.no_speech.inc()

    def set_active_sessions(self, count: int) -> None:
        self.active_sessions.set(count)

    def stream_opened(self) -> None:
        self.open_streams.inc()

    def stream_closed(self) -> None:
        self.open_streams.dec()

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of a scrape: this process's metrics or, with worker
        processes, every worker's added up."""
        registry = self.registry
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, str(multiprocess_directory()))
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """At this process's shut-down: its gauges leave the workers' sums."""
        if self.multiprocess:
            mark_worker_dead(os.getpid())


class RequestMetrics:
    """ASGI middleware: the latency and status of every HTTP request, per route template.

    Added outermost, so the refusals of the other middleware are counted too."""

    def __init__(self, app, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before an answer: the server error it becomes

        async def send_noting_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            self.metrics.observe_request(
                route_template(scope), scope["method"], status, time.perf_counter() - started
            )
