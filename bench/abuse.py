"""Load and abuse of ``ser serve``: floods of large uploads and of live streams.

Starts ``ser serve RUN_DIR`` on a free 127.0.0.1 port with the limits under test
(``--max-active-uploads``, ``--upload-queue``, ``--max-streams``,
``--stream-idle-seconds``; default: the server's own defaults) and the rate limit
off, so that admission alone decides. Then, with a real HTTP and WebSocket client:

- one large upload at a time (``--repeat`` times per kind): the peak memory one
  upload in flight adds to the server. Kinds: the largest WAV under max_upload_mb
  (48 kHz stereo 16-bit) and an OGG Vorbis that decodes to max_clip_seconds of
  48 kHz stereo (small on the wire, large once decoded);
- upload floods at ``--multiples`` of the limit (default 1, 4, 20 times
  max_active_uploads): that many large WAV uploads sent at once, ``--rounds`` times;
  status counts, the server's peak RSS, p50/p95 latency of the admitted (200)
  requests, Retry-After of the 503s, the most clips decoded at once (from /health),
  and /health polled throughout;
- a stream flood: twice max_streams connections at once, each sending a few
  seconds of PCM (close codes counted), then max_streams connections that send
  nothing (closed for idleness).

Writes ``rows`` for ``docs/generators/robustness_report.py --abuse`` and prints them.
The client runs on the same cores as the server: latencies include its cost.

    python -m bench.abuse checkpoints/best [--multiples 1,4,20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Self

import numpy as np

from bench.common import RESULTS, write
from bench.load_http import (
    free_port,
    start_server,
    stop_server,
    voiced_clip,
    wait_healthy,
)
from bench.soak import PeakMemory

UPLOAD_RATE = 48000  # Hz of the generated large uploads (stereo)
HEALTH_POLL_SECONDS = 0.1
STREAM_RATE = 16000
STREAM_CHUNK_SECONDS = 0.5
CLIENT_TIMEOUT = 600.0
ALONE = "one upload at a time"


# ------------------------------------------------------------------ uploads
def stereo_voice(seconds: float, sr: int = UPLOAD_RATE) -> np.ndarray:
    """[samples, 2] float32: two differently seeded voiced clips."""
    return np.stack([voiced_clip(seconds, sr, seed=0), voiced_clip(seconds, sr, seed=1)], axis=1)


def encoded(wave: np.ndarray, sr: int, format: str, subtype: str | None = None) -> bytes:
    """``wave`` [samples, channels] as a file in ``format``, written a second at a time
    (libsndfile's Vorbis encoder crashes on minutes of audio in one write)."""
    import soundfile as sf

    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", sr, wave.shape[1], format=format, subtype=subtype) as out:
        for start in range(0, wave.shape[0], sr):
            out.write(wave[start : start + sr])
    return buf.getvalue()


def largest_wav(max_upload_mb: float, max_clip_seconds: float) -> tuple[str, bytes]:
    """The longest 48 kHz stereo 16-bit WAV under ``max_upload_mb``: its description
    and bytes."""
    frame_bytes = 2 * 2  # stereo, 16-bit
    seconds = min(max_clip_seconds, (max_upload_mb * 2**20 - 4096) // frame_bytes / UPLOAD_RATE)
    wav = encoded(stereo_voice(seconds), UPLOAD_RATE, "WAV", "PCM_16")
    return f"WAV {len(wav) / 2**20:.1f} MiB, {seconds:.0f} s 48 kHz stereo", wav


def longest_ogg(max_clip_seconds: float) -> tuple[str, bytes]:
    """A 48 kHz stereo OGG Vorbis just under ``max_clip_seconds``: small on the wire,
    large once decoded."""
    seconds = max_clip_seconds - 1
    ogg = encoded(stereo_voice(seconds), UPLOAD_RATE, "OGG", "VORBIS")
    return f"OGG {len(ogg) / 2**20:.1f} MiB, {seconds:.0f} s 48 kHz stereo", ogg


async def post_clip(client, body: bytes) -> tuple[int, float, str | None]:
    """POST /predict: status, seconds to the answer, Retry-After if any."""
    started = time.perf_counter()
    r = await client.post("/predict", files={"file": ("large", body, "application/octet-stream")})
    return r.status_code, time.perf_counter() - started, r.headers.get("retry-after")


class HealthWatch:
    """Polls /health every ``HEALTH_POLL_SECONDS`` while a scenario runs."""

    def __init__(self, client) -> None:
        self.client = client
        self.answered = 0
        self.failed = 0
        self.slowest = 0.0
        self.last: dict = {}
        self._task: asyncio.Task | None = None

    async def _poll(self) -> None:
        import httpx

        while True:
            started = time.perf_counter()
            try:
                r = await self.client.get("/health", timeout=10)
                ok = r.status_code == 200
                self.last = r.json() if ok else self.last
            except httpx.HTTPError:
                ok = False
            self.slowest = max(self.slowest, time.perf_counter() - started)
            self.answered += ok
            self.failed += not ok
            await asyncio.sleep(HEALTH_POLL_SECONDS)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    def summary(self) -> str:
        return (
            f"answered {self.answered}/{self.answered + self.failed}, "
            f"slowest {self.slowest * 1000:.0f} ms"
        )


async def wait_idle(client) -> dict:
    """The server's /health once no upload is in flight or queued."""
    while True:
        load = (await client.get("/health")).json()["load"]
        if load["uploads_active"] == 0 and load["uploads_queued"] == 0:
            return load
        await asyncio.sleep(0.2)


def outcome(statuses: Counter) -> str:
    return ", ".join(f"{code} ×{n}" for code, n in sorted(statuses.items()))


def percentile_ms(seconds: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.array(seconds) * 1000, q)), 1) if seconds else None


async def upload_flood(url: str, pid: int, body: bytes, at_once: int, rounds: int) -> dict:
    """``at_once`` uploads of ``body`` sent together, ``rounds`` times."""
    import httpx

    limits = httpx.Limits(max_connections=at_once + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT, limits=limits) as client:
        statuses: Counter = Counter()
        admitted, retry_afters, decoding_peak = [], [], 0
        with PeakMemory(pid) as memory:
            async with HealthWatch(client) as health:
                for _ in range(rounds):
                    await wait_idle(client)
                    results = await asyncio.gather(
                        *(post_clip(client, body) for _ in range(at_once))
                    )
                    for status, seconds, retry in results:
                        statuses[status] += 1
                        if status == 200:
                            admitted.append(seconds)
                        if retry is not None:
                            retry_afters.append(int(retry))
                load = await wait_idle(client)
                decoding_peak = load["decoding_peak"]
    note = f"at most {decoding_peak} decoded at once"
    if retry_afters:
        note += f"; 503s said Retry-After {min(retry_afters)}-{max(retry_afters)} s"
    return {
        "sent": at_once * rounds,
        "statuses": dict(statuses),
        "outcome": outcome(statuses),
        "peak_rss_mb": round(memory.peak_mb, 1),
        "rss_added_mb": round(memory.added_mb, 1),
        "p50_ms": percentile_ms(admitted, 50),
        "p95_ms": percentile_ms(admitted, 95),
        "retry_after_s": sorted(set(retry_afters)),
        "decoding_peak": decoding_peak,
        "health": health.summary(),
        "note": note,
    }


async def one_at_a_time(url: str, pid: int, body: bytes, repeat: int) -> dict:
    """Uploads of ``body`` one after another: the peak memory one adds, the largest of
    ``repeat`` tries (after one unmeasured upload)."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT) as client:
        status, _, _ = await post_clip(client, body)  # warm: first-use allocations
        if status != 200:
            raise SystemExit(f"a single large upload was answered {status}")
        added, peaks, seconds, statuses = [], [], [], Counter()
        for _ in range(repeat):
            await wait_idle(client)
            with PeakMemory(pid) as memory:
                status, took, _ = await post_clip(client, body)
            statuses[status] += 1
            added.append(memory.added_mb)
            peaks.append(memory.peak_mb)
            seconds.append(took)
    return {
        "sent": repeat,
        "statuses": dict(statuses),
        "outcome": outcome(statuses),
        "peak_rss_mb": round(max(peaks), 1),
        "rss_added_mb": round(max(added), 1),
        "p50_ms": percentile_ms(seconds, 50),
        "p95_ms": percentile_ms(seconds, 95),
        "note": "RSS added: the memory one upload in flight takes (largest of the tries)",
    }


# ------------------------------------------------------------------ streams
async def one_stream(url: str, audio_seconds: float) -> str:
    """Open ``WS /stream``, send ``audio_seconds`` of PCM and end: how it closed."""
    import websockets

    pcm = (voiced_clip(audio_seconds, STREAM_RATE) * 32767).astype("<i2").tobytes()
    step = int(STREAM_CHUNK_SECONDS * STREAM_RATE) * 2
    async with websockets.connect(url.replace("http", "ws", 1) + "/stream") as ws:
        first = json.loads(await ws.recv())
        if first["type"] == "ready":
            for at in range(0, len(pcm), step):
                await ws.send(pcm[at : at + step])
            await ws.send(json.dumps({"type": "end"}))
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed as closed:
            return str(closed.rcvd.code if closed.rcvd else "no close frame")
    return "closed"


async def idle_stream(url: str) -> tuple[str, float]:
    """Open ``WS /stream`` and send nothing: the close code and seconds until it."""
    import websockets

    async with websockets.connect(url.replace("http", "ws", 1) + "/stream") as ws:
        started = time.perf_counter()
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed as closed:
            code = str(closed.rcvd.code if closed.rcvd else "no close frame")
            return code, time.perf_counter() - started
    return "closed", 0.0


async def stream_flood(url: str, pid: int, count: int, audio_seconds: float) -> dict:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT) as client:
        with PeakMemory(pid) as memory:
            async with HealthWatch(client) as health:
                codes = await asyncio.gather(
                    *(one_stream(url, audio_seconds) for _ in range(count))
                )
            load = (await client.get("/health")).json()["load"]
    closes = Counter(f"closed {code}" for code in codes)
    return {
        "sent": count,
        "statuses": dict(closes),
        "outcome": outcome(closes),
        "peak_rss_mb": round(memory.peak_mb, 1),
        "rss_added_mb": round(memory.added_mb, 1),
        "health": health.summary(),
        "streams_open_peak": load["streams_open_peak"],
        "note": f"at most {load['streams_open_peak']} open at once",
    }


async def idle_flood(url: str, count: int, idle_seconds: float) -> dict:
    results = await asyncio.gather(*(idle_stream(url) for _ in range(count)))
    closes = Counter(f"closed {code}" for code, _ in results)
    after = round(max(seconds for _, seconds in results), 2)
    return {
        "sent": count,
        "statuses": dict(closes),
        "outcome": outcome(closes),
        "closed_after_s": after,
        "note": f"the last closed {after} s after opening (stream_idle_seconds {idle_seconds:g})",
    }


# ------------------------------------------------------------------ main
def server_options(args: argparse.Namespace, settings_file: Path) -> list[str]:
    settings = {"rate_limit_per_minute": 0}
    for key in ("max_active_uploads", "upload_queue", "max_streams", "stream_idle_seconds"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    settings_file.write_text(json.dumps(settings))  # JSON is YAML
    return ["--settings", str(settings_file)]


async def scenarios(args: argparse.Namespace, url: str, pid: int, health: dict) -> list[dict]:
    load = health["load"]
    limit = load["uploads_limit"]
    wav = largest_wav(args.max_upload_mb, args.max_clip_seconds)
    rows = []
    for kind, body in (wav, longest_ogg(args.max_clip_seconds)):
        row = await one_at_a_time(url, pid, body, args.repeat)
        rows.append({"scenario": f"{ALONE}: {kind}", **row})
        print(f"{rows[-1]['scenario']}: {row['outcome']}, adds {row['rss_added_mb']} MB")
    for multiple in args.multiples:
        at_once = multiple * limit
        row = await upload_flood(url, pid, wav[1], at_once, args.rounds)
        name = f"{at_once} uploads at once ({multiple}× the limit of {limit}), {args.rounds} rounds"
        rows.append({"scenario": name, **row})
        print(f"{name}: {row['outcome']}; peak RSS {row['peak_rss_mb']} MB; p95 {row['p95_ms']} ms")
    streams = 2 * load["streams_limit"]
    row = await stream_flood(url, pid, streams, args.stream_seconds)
    name = (
        f"{streams} live streams at once (2× max_streams), {args.stream_seconds:g} s of audio each"
    )
    rows.append({"scenario": name, **row})
    print(f"{name}: {row['outcome']}")
    row = await idle_flood(url, load["streams_limit"], args.stream_idle_seconds)
    name = f"{load['streams_limit']} live streams sending nothing"
    rows.append({"scenario": name, **row})
    print(f"{name}: {row['outcome']} after {row['closed_after_s']} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.abuse", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", nargs="?", default="checkpoints/best", help="run to serve")
    p.add_argument("--multiples", default="1,4,20", help="flood sizes, times the upload limit")
    p.add_argument("--rounds", type=int, default=3, help="floods per size (default 3)")
    p.add_argument("--repeat", type=int, default=5, help="single uploads per kind (default 5)")
    p.add_argument("--max-active-uploads", type=int, help="server setting (default: its own)")
    p.add_argument("--upload-queue", type=int, help="server setting (default: its own)")
    p.add_argument("--max-streams", type=int, help="server setting (default: its own)")
    p.add_argument(
        "--stream-idle-seconds", type=float, default=5.0, help="server setting (default 5)"
    )
    p.add_argument("--stream-seconds", type=float, default=4.0, help="audio per stream (4)")
    p.add_argument("--out", default=str(RESULTS / "abuse.json"), help="where to write the JSON")
    args = p.parse_args(argv)
    args.multiples = [int(m) for m in args.multiples.split(",") if m.strip()]
    if not args.multiples or min(args.multiples) < 1 or max(args.multiples) > 50:
        p.error("--multiples must be whole numbers from 1 to 50")
    from ser.serving.settings import ServingSettings

    defaults = ServingSettings()
    args.max_upload_mb, args.max_clip_seconds = defaults.max_upload_mb, defaults.max_clip_seconds

    url = f"http://127.0.0.1:{free_port()}"
    log = Path(args.out).with_suffix(".server.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        options = server_options(args, Path(tmp) / "settings.yaml")
        run_dir = str(Path(args.run_dir).resolve())
        proc = start_server(run_dir, int(url.rsplit(":", 1)[1]), log, *options)
        try:
            health = wait_healthy(url, proc)
            load_before = os.getloadavg()[0]
            print(f"server {url} (pid {proc.pid}): {health['model_id']}; limits {health['load']}")
            rows = asyncio.run(scenarios(args, url, proc.pid, health))
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with code {proc.returncode}")
        finally:
            stop_server(proc)
    write(
        args.out,
        "abuse",
        {
            "model_id": health["model_id"],
            "limits": health["load"],
            "stream_idle_seconds": args.stream_idle_seconds,
            "load_average_1min": {
                "before": round(load_before, 2),
                "after": round(os.getloadavg()[0], 2),
            },
            # What one upload in flight adds at most: settings.UPLOAD_MEMORY_MB's source.
            "per_upload_mb": max(
                r["rss_added_mb"] for r in rows if r["scenario"].startswith(ALONE)
            ),
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
