"""``ser data download|convert|add-custom|summary``: get audio in and see what is there.

Each action exits 0 when it leaves something usable (some files converted or
already there, a corpus downloaded, ...) and non-zero only when nothing usable
remains; every file that could not be used is named with the reason.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ser.cli import add_config_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data", help="download corpora, convert recordings, add your own, summarise the data"
    )
    actions = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    _add_download_parser(actions)

    c = actions.add_parser(
        "convert",
        help="convert recordings to mono 16-bit WAV at one sample rate",
        description="Convert files and folders (any format soundfile reads; m4a/aac/webm... "
        "through ffmpeg when installed) to mono 16-bit WAV, keeping names and folder layout. "
        "Files already converted are skipped.",
    )
    c.add_argument("sources", nargs="+", metavar="SRC", help="audio files or folders")
    c.add_argument("--to", required=True, metavar="DIR", help="output folder")
    c.add_argument("--rate", type=int, default=16000, help="sample rate in Hz (default 16000)")
    c.add_argument("--workers", type=int, default=0, help="parallel conversions (0 = one per core)")
    c.set_defaults(func=run_convert)

    a = actions.add_parser(
        "add-custom",
        help="add your own recordings, named so the custom reader labels them",
        description="Convert recordings to mono 16-bit WAV named "
        "<YYYYMMDD>_<HHMMSS>_<speaker>_<emotion>.wav (time of the recording's file).",
    )
    a.add_argument("files", nargs="+", metavar="FILE", help="recordings of one emotion")
    a.add_argument("--emotion", required=True, help="the emotion all FILEs express, e.g. happy")
    a.add_argument("--speaker", help="who speaks (letters, digits, '-'); default 'unknown'")
    a.add_argument("--to", default="data/custom", help="custom corpus folder (default data/custom)")
    a.add_argument("--rate", type=int, default=16000, help="sample rate in Hz (default 16000)")
    a.set_defaults(func=run_add_custom)

    s = actions.add_parser(
        "summary",
        help="counts, durations and formats of the configured corpora, with plots",
        description="Counts per corpus x emotion x speaker, durations, a sample-rate/channel "
        "census and unreadable files of the corpora in the config's data section; writes "
        "summary.txt, summary.json, class_balance.png and durations.png.",
    )
    add_config_args(s)
    s.add_argument(
        "--out", default="data/summary", help="folder for the files (default data/summary)"
    )
    s.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    s.set_defaults(func=run_summary)


def _add_download_parser(actions: argparse._SubParsersAction) -> None:
    """``ser data download CORPUS... [--to DIR] [--archive ZIP] [--url URL --md5 MD5]``."""
    from ser.datatools.sources import SOURCES

    d = actions.add_parser(
        "download",
        help="fetch a corpus from its official source, verify and unpack it",
        description="Fetch corpora from their official sources, verify them where the source "
        "publishes a checksum, resume broken downloads, unpack into the layout the readers "
        "expect and print the licence.",
    )
    d.add_argument(
        "corpora",
        nargs="+",
        choices=SOURCES.names(),
        metavar="CORPUS",
        help=f"one or more of: {', '.join(SOURCES.names())}",
    )
    d.add_argument(
        "--to",
        help="data root; corpora go to <to>/<corpus> (default: $SER_DATA_ROOT, else the "
        "project's data/ folder, where training looks)",
    )
    d.add_argument(
        "--archive",
        metavar="ZIP",
        help="unpack this zip, downloaded by hand, instead of fetching (one corpus)",
    )
    d.add_argument("--url", help="fetch this zip instead of the official source (a mirror)")
    d.add_argument("--md5", help="with --url: the archive's known MD5, checked after download")
    d.add_argument("--keep-archive", action="store_true", help="keep the zip after unpacking")
    d.add_argument(
        "--retries",
        type=int,
        default=3,
        help="resume a broken transfer this many times before giving up (default 3)",
    )
    d.set_defaults(func=run_download)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def run_download(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ser.datatools import DataToolError
    from ser.datatools.download import DOWNLOADS, download_corpus
    from ser.datatools.sources import SOURCES

    if args.archive and len(args.corpora) > 1:
        raise DataToolError("--archive goes with one corpus at a time")
    if args.md5 and not args.url:
        raise DataToolError("--md5 checks the archive fetched with --url; give --url too")
    if args.md5 and not re.fullmatch(r"[0-9a-fA-F]{32}", args.md5):
        raise DataToolError(f"--md5 {args.md5!r}: expected 32 hexadecimal digits")
    args.to = args.to or _training_data_root()
    done = []
    for name in dict.fromkeys(args.corpora):
        source = SOURCES.get(name)
        if args.url:
            source = replace(
                source,
                kind="url",
                url=args.url,
                md5=args.md5,
                size=None,
                checksum_note="a mirror given with --url" + ("" if args.md5 else ", no --md5"),
            )
        try:
            download_corpus(
                name,
                args.to,
                archive=args.archive,
                keep_archive=args.keep_archive,
                source=source,
                retries=args.retries,
            )
            done.append(name)
        except DataToolError as exc:
            _error(str(exc))
        except KeyboardInterrupt:
            print(
                f"interrupted; what was received is kept in {Path(args.to) / DOWNLOADS}: "
                "run the same command again to resume",
                file=sys.stderr,
            )
            return 130
    if not done:
        return 2
    root = Path(args.to).resolve()
    if root == Path(_training_data_root()).resolve():
        print(f"training reads it from there ({root}, the data root it uses by default)")
    else:
        print(f"to use it: export SER_DATA_ROOT={root}   (or --set data.root={root})")
    return 0


def _training_data_root() -> str:
    """The data root training uses without ``--set data.root``: ``$SER_DATA_ROOT``, else
    the project's own ``data/`` folder."""
    import os

    from ser.config import DATA_ROOT_ENV, default_data_root

    return os.environ.get(DATA_ROOT_ENV) or str(default_data_root())


def run_convert(args: argparse.Namespace) -> int:
    from ser.datatools.convert import convert

    report = convert(args.sources, args.to, args.rate, workers=args.workers)
    print(report.summary())
    if report.usable == 0:
        if not report.failed:
            _error(f"no audio files found in {', '.join(args.sources)}")
            return 2
        return 1
    return 0


def run_add_custom(args: argparse.Namespace) -> int:
    from ser.datatools.custom import SPEAKER_PATTERN, add_custom

    report = add_custom(args.files, args.emotion, args.speaker, args.to, args.rate)
    if report.usable == 0:
        return 1
    folder = Path(args.to)
    print(
        f"{len(report.added)} added, {len(report.present)} already there, "
        f"{len(report.failed)} failed. To train with them, in the config's data section:\n"
        f"  corpora: [..., custom]\n"
        f"  custom: {{folder: {folder.name}, speaker_pattern: '{SPEAKER_PATTERN}'}}\n"
        f"with data.root the folder holding {folder.name}/ ({folder.resolve().parent})"
    )
    return 0


def run_summary(args: argparse.Namespace) -> int:
    from ser.config import DATA_ROOT_ENV, load_config
    from ser.datatools.summary import format_summary, summarise, write_summary

    cfg = load_config(args.config, args.overrides)
    summary = summarise(cfg.data)
    print(format_summary(summary), end="")
    if not summary.rows:
        _error(
            f"no usable recordings under {Path(cfg.data.root).resolve()} (data.root "
            f"{cfg.data.root!r}; a relative root is taken from the current folder): set "
            f"{DATA_ROOT_ENV} or --set data.root=DIR"
        )
        return 1
    for path in write_summary(summary, args.out, plots=not args.no_plots):
        print(f"wrote {path}")
    return 0
