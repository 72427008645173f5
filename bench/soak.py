"""Soak test of ``ser serve``: steady load for minutes, watching errors, latency and memory.

Starts ``ser serve RUN_DIR`` on a free 127.0.0.1 port (as ``bench/load_http.py``
does), keeps ``--clients`` concurrent clients posting a generated voiced clip to
POST /predict for ``--seconds``, and samples the server process's resident memory
every second. Reports errors (target 0), latency p50/p95/p99, requests per second,
RSS at start, end and peak, and the RSS slope in MB per minute over the whole run
and over its second half (target: flat, i.e. no leak). The client runs on the same
cores as the server.

    python -m bench.soak checkpoints/best [--clients 8] [--seconds 60] [--out bench/results/soak.json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from pathlib import Path
from typing import Self

import numpy as np

from bench.common import RESULTS, write
from bench.load_http import (
    free_port,
    run_level,
    start_server,
    stop_server,
    voiced_clip,
    wait_healthy,
    wav_bytes,
)


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MB (psutil, else /proc/<pid>/status)."""
    try:
        import psutil
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for process {pid}") from None
    return psutil.Process(pid).memory_info().rss / 2**20


class MemorySampler(threading.Thread):
    """Samples ``rss_mb(pid)`` every ``interval`` seconds into ``samples`` [[s, MB], ...]."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[list[float]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        started = time.perf_counter()
        while not self.stopping.is_set():
            self.samples.append(
                [round(time.perf_counter() - started, 2), round(rss_mb(self.pid), 2)]
            )
            self.stopping.wait(self.interval)

    def stop(self) -> list[list[float]]:
        self.stopping.set()
        self.join()
        return self.samples


class PeakMemory:
    """The peak resident memory of process ``pid`` over a ``with`` block, in MB, and how
    much it added to the RSS at the block's start (``added_mb``).

    Exact where the kernel's high-water mark (VmHWM) may be reset through
    ``/proc/<pid>/clear_refs`` (Linux, same user or root); elsewhere the RSS is sampled
    every ``interval`` seconds, which can miss a peak shorter than that."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid, self.interval = pid, interval
        self.start_mb = self.peak_mb = 0.0
        self.exact = False
        self._sampler: MemorySampler | None = None

    def __enter__(self) -> Self:
        self.start_mb = rss_mb(self.pid)
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # 5: reset VmHWM
            self.exact = True
        except OSError:
            self._sampler = MemorySampler(self.pid, self.interval)
            self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sampler is not None:
            self.peak_mb = max(mb for _, mb in self._sampler.stop())
            return
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                self.peak_mb = int(line.split()[1]) / 1024

    @property
    def added_mb(self) -> float:
        return max(0.0, self.peak_mb - self.start_mb)


def slope_mb_per_minute(samples: list[list[float]]) -> float | None:
    """Least-squares slope of RSS over time, MB per minute (None for fewer than 3 samples)."""
    if len(samples) < 3:
        return None
    t, mb = np.array(samples).T
    return round(float(np.polyfit(t, mb, 1)[0]) * 60, 3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", nargs="?", default="checkpoints/best", help="run to serve")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--seconds", type=float, default=60.0, help="duration of the load (default 60)")
    p.add_argument("--clip-seconds", type=float, default=3.0, help="test clip length (default 3)")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured requests first (default 20)")
    p.add_argument("--out", default=str(RESULTS / "soak.json"), help="where to write the JSON")
    args = p.parse_args(argv)
    if not 1 <= args.clients <= 64 or not 1 <= args.seconds <= 3600:
        p.error("--clients must be 1..64 and --seconds 1..3600")

    body = wav_bytes(voiced_clip(args.clip_seconds), 16000)
    url = f"http://127.0.0.1:{free_port()}"
    log = Path(args.out).with_suffix(".server.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = start_server(str(Path(args.run_dir).resolve()), int(url.rsplit(":", 1)[1]), log)
    try:
        health = wait_healthy(url, proc)
        asyncio.run(run_level(url, body, 1, args.warmup, 60.0))
        before = wait_healthy(url, proc)
        load_before = os.getloadavg()[0]
        print(
            f"server {url} (pid {proc.pid}): model {health['model_id']}; {args.clients} clients "
            f"for {args.seconds:g} s; load average {load_before:.1f}",
            flush=True,
        )
        sampler = MemorySampler(proc.pid)
        sampler.start()
        try:
            # load_http's level, bounded by time only: clients post back to back.
            load = asyncio.run(run_level(url, body, args.clients, 10**9, args.seconds))
        finally:
            samples = sampler.stop()
        after = wait_healthy(url, proc)
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode} during the soak")
    finally:
        stop_server(proc)
    half = [s for s in samples if s[0] >= samples[-1][0] / 2]
    memory = {
        "rss_start_mb": samples[0][1],
        "rss_end_mb": samples[-1][1],
        "rss_max_mb": max(mb for _, mb in samples),
        "rss_slope_mb_per_min": slope_mb_per_minute(samples),
        "rss_slope_second_half_mb_per_min": slope_mb_per_minute(half),
    }
    batches = after["inference_batches"] - before["inference_batches"]
    windows = after["inference_windows"] - before["inference_windows"]
    report = {
        "model_id": health["model_id"],
        "duration_asked_s": args.seconds,
        "clip": f"generated {args.clip_seconds:g} s voiced clip, 16 kHz PCM_16 WAV ({len(body)} bytes)",
        "load_average_1min": {
            "before": round(load_before, 2),
            "after": round(os.getloadavg()[0], 2),
        },
        **{("clients" if k == "concurrency" else k): v for k, v in load.items()},
        "mean_batch_windows": round(windows / batches, 2) if batches else None,
        **memory,
        "rss_mb_over_time": samples,
    }
    print(
        f"{load['requests']} requests, {load['errors']} errors, {load['requests_per_second']} req/s; "
        f"p50 {load['p50_ms']} ms, p95 {load['p95_ms']} ms, p99 {load['p99_ms']} ms"
    )
    print(
        f"RSS {memory['rss_start_mb']:.0f} -> {memory['rss_end_mb']:.0f} MB (max "
        f"{memory['rss_max_mb']:.0f}); slope {memory['rss_slope_mb_per_min']} MB/min, second half "
        f"{memory['rss_slope_second_half_mb_per_min']} MB/min"
    )
    write(args.out, "soak", report)
    return 0 if load["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
