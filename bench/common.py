"""Shared plumbing for the benchmark scripts: arguments, machine facts, tables, JSON.

Every script takes ``--data-root`` (default ``$SER_DATA_ROOT`` or ``../shared/data``),
``--limit`` (files per corpus, for quick looks) and ``--out`` (JSON path). Figures
are wall-clock times on a shared machine: compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=doc)
    p.add_argument(
        "--data-root",
        default=os.environ.get("SER_DATA_ROOT") or str(ROOT.parent / "shared" / "data"),
        help="folder holding ravdess/, tess/, emodb/ (default $SER_DATA_ROOT or ../shared/data)",
    )
    p.add_argument("--corpora", default="ravdess,tess,emodb", help="comma-separated corpora")
    p.add_argument(
        "--limit", type=int, default=0, help="at most this many files per corpus (0 = all)"
    )
    p.add_argument("--out", default=str(RESULTS / f"{name}.json"), help="where to write the JSON")
    return p


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = "unknown"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": sha or "unknown",
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


def manifest_rows(args: argparse.Namespace):
    """Manifest rows of the chosen corpora, at most ``--limit`` per corpus (evenly spread)."""
    from ser.config import load_config
    from ser.data.corpora import build_manifest

    cfg = load_config(
        None, [f"data.root={args.data_root}", f"data.corpora=[{args.corpora}]"], env={}
    )
    rows = build_manifest(cfg.data, log=lambda line: None).rows
    if args.limit:
        kept = []
        for corpus in sorted({r.corpus for r in rows}):
            mine = [r for r in rows if r.corpus == corpus]
            step = max(1, len(mine) // args.limit)
            kept += mine[::step][: args.limit]
        rows = kept
    return rows


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "mean_ms": float(ms.mean()),
        "n": int(ms.size),
    }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write(out: str, name: str, payload: dict[str, Any]) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"bench": name, "machine": machine(), **payload}, indent=2))
    print(f"\nwrote {path}")
    return path


def bench_config(args: argparse.Namespace, config: str, *overrides: str):
    """A config from ``configs/`` pointed at ``--data-root`` and ``--corpora``."""
    from ser.config import load_config

    return load_config(
        ROOT / "configs" / config,
        [f"data.root={args.data_root}", f"data.corpora=[{args.corpora}]", *overrides],
        env={},
    )


def prepare(cfg, rows, cache_dir: str):
    """``prepare_data`` on the given manifest rows with features cached in ``cache_dir``."""
    from ser.data.corpora import Manifest
    from ser.data.prepare import prepare_data

    features = cfg.features.model_copy(update={"cache_dir": cache_dir})
    cfg = cfg.model_copy(update={"features": features})
    return prepare_data(cfg, manifest=Manifest(rows=list(rows)), log=lambda line: None)


def compiled_model(cfg, data):
    import keras

    from ser.models import build_model

    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg.model, data.input_dim, len(data.labels))
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.train.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def train_dataset(cfg, data):
    from ser.data.pipeline import Normaliser, make_dataset

    norm = Normaliser.fit(data.inputs["train"])
    return make_dataset(
        data.inputs["train"],
        data.targets["train"],
        normaliser=norm,
        batch_size=cfg.train.batch_size,
        training=True,
        seed=cfg.seed,
        length_buckets=cfg.train.length_buckets,
    )


def epoch_seconds(cfg, data, epochs: int = 1) -> list[float]:
    """Wall time of each of ``epochs`` training epochs on the training split."""
    import keras

    class Clock(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    clock = Clock()
    compiled_model(cfg, data).fit(
        train_dataset(cfg, data), epochs=epochs, verbose=0, callbacks=[clock]
    )
    return clock.times
