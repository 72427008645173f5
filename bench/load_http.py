"""HTTP load test of ``ser serve`` beside the seed project's app: POST /predict on 127.0.0.1.

Starts ``ser serve RUN_DIR`` (uvicorn, one process) and, as the anchor, the seed's app
(``bench/seed_app.py``: upload saved to disk, librosa features, a pickled scikit-learn
MLP) on free loopback ports, sends the same clip to each with a real HTTP client
(httpx, keep-alive connections) at each concurrency level, ours then the seed's, and
reports p50/p95/p99 latency, requests per second, the server's mean inference batch
size and, per level, ours against the seed's. With ``--workers 1,2,4`` ours is measured
once per worker count (``ser serve --workers N``; more than one worker shares speaker
sessions through a ``redis-server`` the benchmark starts on loopback, as a deployment would). Bounded: ``--requests`` per level and
``--max-seconds`` per level, loopback addresses only. The client runs on the same
cores as the servers, so its own cost is included in the figures.

    python bench/load_http.py checkpoints/best [--concurrency 1,4] [--requests 300]
    python bench/load_http.py checkpoints/best --clip some.flac --no-seed
    python bench/load_http.py checkpoints/best --workers 1,2,4   # needs redis-server
    python bench/load_http.py --url http://127.0.0.1:8000   # a server already running
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as ``python bench/load_http.py``: import bench.* too
    sys.path.insert(0, str(ROOT))
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def voiced_clip(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """Harmonics of a gliding 150-250 Hz pitch with syllable-like loudness, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 150 + 100 * t / seconds
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2
    return (wave * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def wav_bytes(wave: np.ndarray, sr: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: str, port: int, log: Path, *options: str) -> subprocess.Popen:
    """``ser serve run_dir`` on ``port`` with ``options`` (more ``ser serve`` flags).

    The rate limit is off: one benchmark client sends far more than any one client of
    a deployment may, and the figures are of the server's own capacity."""
    cmd = [
        sys.executable,
        "-m",
        "ser.cli",
        "serve",
        run_dir,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--rate-limit-per-minute",
        "0",
        *options,
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def start_redis(port: int, log: Path) -> subprocess.Popen:
    """A throw-away ``redis-server`` on 127.0.0.1:``port`` (nothing saved to disk), the
    session store ``ser serve --workers N`` needs; SystemExit when it is not installed."""
    import shutil

    if shutil.which("redis-server") is None:
        raise SystemExit(
            "--workers above 1 needs redis-server (Debian: apt-get install redis-server)"
        )
    return subprocess.Popen(
        redis_server_command(port), stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def redis_server_command(port: int) -> list[str]:
    """``redis-server`` on 127.0.0.1:``port`` keeping nothing on disk (no snapshots, no
    append-only file): a throw-away store for benchmarks and tests."""
    return [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]


def stop_server(proc: subprocess.Popen) -> None:
    """Terminate the server, killing it if it has not exited within 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def start_seed_app(port: int, log: Path, model_dir: Path) -> subprocess.Popen:
    """The seed's app (``bench.seed_app``) on 127.0.0.1:``port``, its model trained into
    ``model_dir`` first if it is not there yet."""
    from bench.seed_app import MODEL_FILE, train_seed_model

    if not (model_dir / MODEL_FILE).is_file():
        train_seed_model(model_dir, seed_training_clips(model_dir))
    cmd = [sys.executable, "-m", "bench.seed_app", "--model", str(model_dir), "--port", str(port)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)


def seed_training_clips(work: Path, count: int = 96) -> list[Path]:
    """Clips to fit the seed's MLP on: ``count`` corpus files spread over
    ``$SER_DATA_ROOT`` when it holds audio, else generated voiced clips written to ``work``."""
    root = os.environ.get("SER_DATA_ROOT")
    files = sorted(Path(root).rglob("*.flac")) + sorted(Path(root).rglob("*.wav")) if root else []
    if files:
        return files[:: max(1, len(files) // count)][:count]
    import soundfile as sf

    work.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(16):
        path = work / f"generated_{i:02d}.wav"
        sf.write(path, voiced_clip(2.0 + 0.1 * i, seed=i), 16000)
        paths.append(path)
    return paths


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout: float = 180.0) -> dict:
    """The server's /health once it is up and ready: /ready answers 200 (the model is
    warmed up) or 404 (a server without readiness, like the seed's)."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}; see its log")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code in (200, 404):
                return httpx.get(f"{url}/health", timeout=2).json()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server at {url} not ready after {timeout:.0f} s")


async def run_level(url: str, body: bytes, concurrency: int, requests: int, max_seconds: float):
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    stop_at = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def worker() -> None:
            nonlocal issued
            while issued < requests and time.perf_counter() < stop_at:
                issued += 1
                started = time.perf_counter()
                try:
                    r = await client.post(
                        "/predict", files={"file": ("clip.wav", body, "audio/wav")}
                    )
                    r.raise_for_status()
                    r.json()
                except (httpx.HTTPError, ValueError) as exc:
                    errors.append(str(exc)[:200])
                    continue
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": round(elapsed, 3),
        "requests_per_second": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if ms.size else None,
        "p95_ms": round(float(np.percentile(ms, 95)), 1) if ms.size else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if ms.size else None,
        "mean_ms": round(float(ms.mean()), 1) if ms.size else None,
    }


def measure(url: str, body: bytes, levels: list[int], args, proc, workers: int = 1) -> list[dict]:
    """Every concurrency level against the server at ``url`` (after unmeasured warm-up
    requests); each result with the server's mean inference batch, when it reports one
    (one worker only: with several, each /health answers for whichever worker took it)."""
    asyncio.run(run_level(url, body, 1, args.warmup, args.max_seconds))
    results = []
    for level in levels:
        before = wait_healthy(url, proc)
        result = asyncio.run(run_level(url, body, level, args.requests, args.max_seconds))
        after = wait_healthy(url, proc)
        batches = after.get("inference_batches", 0) - before.get("inference_batches", 0)
        windows = after.get("inference_windows", 0) - before.get("inference_windows", 0)
        result["mean_batch_windows"] = (
            round(windows / batches, 2) if batches and workers == 1 else None
        )
        result["workers"] = workers
        results.append(result)
    return results


def print_levels(name: str, results: list[dict]) -> None:
    for r in results:
        print(
            f"{name:10s} workers {r.get('workers', 1)} concurrency {r['concurrency']:3d}: {r['requests']:5d} ok, "
            f"{r['errors']} errors, {r['requests_per_second']:6.1f} req/s, p50 {r['p50_ms']} ms, "
            f"p95 {r['p95_ms']} ms, p99 {r['p99_ms']} ms, mean batch {r['mean_batch_windows']}"
        )


def against_seed(ours: list[dict], seed: list[dict]) -> list[dict]:
    """Per level: our requests/s as a multiple of the seed app's, our p50 as a fraction."""
    rows = []
    seed_by_level = {b["concurrency"]: b for b in seed}
    for a in ours:
        b = seed_by_level[a["concurrency"]]
        rows.append(
            {
                "workers": a.get("workers", 1),
                "concurrency": a["concurrency"],
                "requests_per_second_x_seed": round(
                    a["requests_per_second"] / b["requests_per_second"], 2
                )
                if b["requests_per_second"]
                else None,
                "p50_fraction_of_seed": round(a["p50_ms"] / b["p50_ms"], 2)
                if a["p50_ms"] and b["p50_ms"]
                else None,
            }
        )
    return rows


def measure_ours(args, body: bytes, levels: list[int], workers: int, out: Path, redis_port):
    """``ser serve`` with ``workers`` processes (or the server at ``--url``) measured at
    every level; returns its /health answer and the results. The server is stopped after."""
    if args.url:
        url, proc = args.url.rstrip("/"), None
    else:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        options = ["--workers", str(workers)] if workers > 1 else []
        if redis_port is not None:
            options += ["--session-store", f"redis://127.0.0.1:{redis_port}/0"]
        log = out.with_suffix(f".server-{workers}w.log")
        proc = start_server(args.run_dir, port, log, *options)
    try:
        health = wait_healthy(url, proc)
        print(
            f"server {url}: model {health['model_id']} ({health.get('runtime')} runtime), "
            f"{workers} worker(s); load average {os.getloadavg()[0]:.1f}"
        )
        return health, measure(url, body, levels, args, proc, workers)
    finally:
        if proc is not None:
            stop_server(proc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", nargs="?", default="checkpoints/best", help="run to serve")
    p.add_argument("--url", help="test a server already running at this loopback URL instead")
    p.add_argument("--clip-seconds", type=float, default=3.0, help="test clip length (default 3)")
    p.add_argument("--clip", help="send this audio file instead of the generated clip")
    p.add_argument("--concurrency", default="1,4,8", help="comma-separated levels (default 1,4,8)")
    p.add_argument("--requests", type=int, default=300, help="requests per level (default 300)")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured requests first (default 20)")
    p.add_argument(
        "--max-seconds", type=float, default=60.0, help="time limit per level (default 60)"
    )
    p.add_argument(
        "--no-seed", action="store_true", help="do not measure the seed's app beside ours"
    )
    p.add_argument(
        "--workers",
        default="1",
        help="comma-separated ser serve worker counts to measure in turn (default 1; "
        "above 1 starts a loopback redis-server for the shared sessions)",
    )
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "load_http.json"))
    args = p.parse_args(argv)

    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not levels or min(levels) < 1 or max(levels) > 64 or not 1 <= args.requests <= 5000:
        p.error("--concurrency levels must be 1..64 and --requests 1..5000")
    worker_counts = [int(c) for c in args.workers.split(",") if c.strip()]
    if not worker_counts or min(worker_counts) < 1 or max(worker_counts) > 16:
        p.error("--workers counts must be 1..16")
    if args.url and worker_counts != [1]:
        p.error("--workers measures servers this benchmark starts; not with --url")
    body = (
        Path(args.clip).read_bytes()
        if args.clip
        else wav_bytes(voiced_clip(args.clip_seconds), 16000)
    )
    procs: list[subprocess.Popen] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    seed_proc = redis_proc = redis_port = None
    seed_url = None
    if args.url and urlparse(args.url).hostname not in LOOPBACK:
        p.error("--url must be a loopback address (127.0.0.1, localhost, ::1)")
    results: list[dict] = []
    try:
        if not args.no_seed:
            seed_port = free_port()
            seed_url = f"http://127.0.0.1:{seed_port}"
            seed_proc = start_seed_app(
                seed_port, out.with_suffix(".seed.log"), out.parent / "seed_app"
            )
            procs.append(seed_proc)
        if max(worker_counts) > 1:
            redis_port = free_port()
            redis_proc = start_redis(redis_port, out.with_suffix(".redis.log"))
            procs.append(redis_proc)
        load_before = os.getloadavg()[0]
        for workers in worker_counts:
            health, measured = measure_ours(
                args, body, levels, workers, out, redis_port if workers > 1 else None
            )
            results += measured
            print_levels("ser serve", measured)
        seed_results = None
        if seed_url:
            wait_healthy(seed_url, seed_proc)
            seed_results = measure(seed_url, body, levels, args, seed_proc)
            print_levels("seed app", seed_results)
            for row in against_seed(results, seed_results):
                print(
                    f"workers {row['workers']} concurrency {row['concurrency']:3d}: ser serve "
                    f"{row['requests_per_second_x_seed']}x the seed app's requests/s, "
                    f"p50 {row['p50_fraction_of_seed']}x the seed app's"
                )
    finally:
        for running in procs:
            stop_server(running)
    report = {
        "benchmark": "load_http",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cores": os.cpu_count(),
        # Other work on the machine competes for the same cores: read figures with it.
        "load_average_1min": {
            "before": round(load_before, 2),
            "after": round(os.getloadavg()[0], 2),
        },
        "python": platform.python_version(),
        "model_id": health["model_id"],
        "runtime": health.get("runtime"),
        "clip": args.clip or f"generated {args.clip_seconds:g} s voiced clip, 16 kHz PCM_16 WAV",
        "clip_bytes": len(body),
        "levels": results,
        "seed_app": seed_results,
        "against_seed": against_seed(results, seed_results) if seed_results else None,
    }
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
