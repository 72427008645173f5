"""Feature cache: cold vs warm feature stage, first epoch cold vs warm, size on disk.

Cold = empty cache (every file decoded and extracted on all cores); warm = the
same call again once the new entries are written back (files only stat-ed and their
entries loaded). The first-epoch
figures add one training epoch of the default LSTM to each, which is what a user
waits for before the first validation number.

    python -m bench.cache [--limit 200] [--no-epoch] [--config best.yaml]
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bench.common import bench_config, manifest_rows, parser, prepare, table, timed, write


def du(path: str) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def main() -> None:
    p = parser("cache", __doc__.splitlines()[0])
    p.add_argument("--no-epoch", action="store_true", help="skip the first-epoch measurement")
    p.add_argument(
        "--config", default="lstm.yaml", help="config under configs/ (default lstm.yaml)"
    )
    args = p.parse_args()
    from ser.features.cache import DigestIndex, extract_all

    cfg = bench_config(args, args.config)
    rows = manifest_rows(args)
    paths = [r.path for r in rows]
    hours = sum(r.duration for r in rows) / 3600
    quiet = {"progress": False, "log": lambda line: None}
    out = {
        "config": args.config,
        "files": len(paths),
        "hours": hours,
        "features": cfg.features.extractors,
    }
    with tempfile.TemporaryDirectory() as cache:
        cold, _ = timed(lambda: extract_all(paths, cfg.features, 16000, cache_dir=cache, **quiet))
        # A warm run comes later, once the kernel has written the new entries back; timed
        # right after the cold one it would share the disk with that write-back.
        os.sync()
        warm, (_, report) = timed(
            lambda: extract_all(paths, cfg.features, 16000, cache_dir=cache, **quiet)
        )
        assert report.hits == len(paths) - len(report.failed)
        (Path(cache) / DigestIndex.FILE).unlink()
        rehash, _ = timed(lambda: extract_all(paths, cfg.features, 16000, cache_dir=cache, **quiet))
        size = du(cache)
        out.update(
            cold_s=cold,
            warm_s=warm,
            warm_rehash_s=rehash,
            cold_over_warm=cold / warm,
            cache_bytes=size,
            cache_mb_per_hour=size / 1e6 / hours,
        )
        rows_out = [
            ["feature stage, cold cache", cold, 1.0],
            ["feature stage, warm cache", warm, cold / warm],
            ["feature stage, warm, files re-hashed", rehash, cold / rehash],
        ]
    if not args.no_epoch:
        from bench.common import epoch_seconds

        with tempfile.TemporaryDirectory() as cache:
            cold_prep, data = timed(lambda: prepare(cfg, rows, cache))
            cold_epoch = epoch_seconds(cfg, data)[0]
            warm_prep, data = timed(lambda: prepare(cfg, rows, cache))
            warm_epoch = epoch_seconds(cfg, data)[0]
        cold_total, warm_total = cold_prep + cold_epoch, warm_prep + warm_epoch
        out.update(
            first_epoch_cold_s=cold_total,
            first_epoch_warm_s=warm_total,
            prep_cold_s=cold_prep,
            prep_warm_s=warm_prep,
            epoch_cold_s=cold_epoch,
            epoch_warm_s=warm_epoch,
        )
        rows_out += [
            ["data prep (manifest rows given), cold", cold_prep, 1.0],
            ["data prep (manifest rows given), warm", warm_prep, cold_prep / warm_prep],
            ["data prep + first LSTM epoch, cold", cold_total, 1.0],
            ["data prep + first LSTM epoch, warm", warm_total, cold_total / warm_total],
        ]
    print(
        f"{len(paths)} files, {hours:.2f} h; cache {size / 1e6:.1f} MB "
        f"= {size / 1e6 / hours:.0f} MB per hour of audio"
    )
    print(table(rows_out, ["what", "seconds", "x faster than cold"]))
    write(args.out, "cache", out)


if __name__ == "__main__":
    main()
