"""Before training: find the configured corpora under the data root, and fetch the
missing ones with ``ser data download``'s machinery (resumable, checksummed) once their
licences are accepted.

Nothing is downloaded without that acceptance: a y/N answer at a terminal, or given
beforehand with ``--accept-licences`` or ``SER_ACCEPT_LICENCES=1``. Refused, asked of
nobody (no terminal) or unreachable, ``CorporaMissing`` lists what is missing and how
to get it by hand, and the command exits 2. A corpus that cannot be fetched is left
out only when the user chose the corpora on the command line (``--set
data.corpora=[...]``); otherwise training stops.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TextIO

from ser.config import DATA_ROOT_ENV, Config, DataConfig
from ser.datatools import DataToolError
from ser.datatools.download import DOWNLOADS, MARKER, download_corpus
from ser.datatools.sources import SOURCES, Source, manual_instructions
from ser.progress import Log
from ser.registry import Registry

ACCEPT_ENV = "SER_ACCEPT_LICENCES"
ACCEPT_FLAG = "--accept-licences"
Ask = Callable[[str], "bool | None"]
"""Puts a yes/no question to the user: True for yes, False for no, None when nobody
can be asked (no terminal)."""


class CorporaMissing(DataToolError):
    """Configured corpora are not under the data root and were not fetched; the
    message names them and says how to get them."""


def licences_accepted(flag: bool, env: Mapping[str, str]) -> bool:
    """Whether the licences were accepted before any question: the command-line flag,
    or ``SER_ACCEPT_LICENCES`` set to 1, yes or true."""
    return flag or env.get(ACCEPT_ENV, "").strip().lower() in ("1", "yes", "true")


def ask_on_terminal(
    question: str, stdin: TextIO | None = None, out: TextIO | None = None
) -> bool | None:
    """``question`` answered at the terminal: True only for y or yes (the default is
    no); None when standard input is not a terminal, so that nobody is asked."""
    stdin = sys.stdin if stdin is None else stdin
    out = sys.stdout if out is None else out
    if stdin is None or not stdin.isatty():
        return None
    out.write(question)
    out.flush()
    return stdin.readline().strip().lower() in ("y", "yes")


def unfinished(folder: Path) -> bool:
    """Whether a corpus folder still has to be fetched: it is absent or holds no file,
    or a download into it stopped before its completion marker (``.part`` files)."""
    if not folder.is_dir():
        return True
    if (folder / MARKER).is_file():
        return False
    files = [p for p in folder.rglob("*") if p.is_file()]
    return not files or any(p.name.endswith(".part") for p in files)


def missing_corpora(data: DataConfig, sources: Registry[Source] | None = None) -> list[Source]:
    """The sources of the configured corpora that are not under ``data.root`` yet, each
    aimed at the corpus's configured folder. Corpora without a source (custom) are
    left to the readers, which name a missing folder."""
    sources = SOURCES if sources is None else sources
    root = Path(data.root)
    missing = []
    for name in data.corpora:
        folder = getattr(data, name).folder
        if name in sources and unfinished(root / folder):
            missing.append(sources.get(name).in_folder(folder))
    return missing


def _size(missing: list[Source]) -> str:
    total = sum(s.download_mb for s in missing)
    return f"about {total:,} MB" if total else "size unknown"


def describe_missing(missing: list[Source], root: Path) -> str:
    """Which corpora are missing, where they would go, their sources and licences."""
    lines = [f"not under the data root {root}: {', '.join(s.name for s in missing)}"]
    for s in missing:
        size = f", about {s.download_mb:,} MB" if s.download_mb else ""
        lines += [
            f"  {s.name}: {s.title}; source {s.page}{size}; goes to {root / s.folder}",
            f"    licence — {s.licence}",
        ]
    return "\n".join(lines)


def manual_steps(missing: list[Source], root: Path) -> str:
    """How to get ``missing`` without this command: by hand, from another folder, or
    by accepting the licences next time."""
    lines = [manual_instructions(s, str(root)) for s in missing]
    lines += [
        f"If the corpora are elsewhere: set {DATA_ROOT_ENV}=DIR (or --set data.root=DIR).",
        (
            f"To download them, accepting the licences above: run again with {ACCEPT_FLAG} "
            f"or {ACCEPT_ENV}=1 (e.g. {ACCEPT_ENV}=1 make train)."
        ),
    ]
    return "\n".join(lines)


def _refused(missing: list[Source], root: Path, answer: bool | None) -> CorporaMissing:
    why = (
        "the licences were not accepted"
        if answer is False
        else f"no terminal to accept the licences at, and neither {ACCEPT_FLAG} nor {ACCEPT_ENV}=1"
    )
    names = ", ".join(s.name for s in missing)
    return CorporaMissing(f"{names} not downloaded: {why}.\n{manual_steps(missing, root)}")


def _download(missing: list[Source], root: Path, log: Log) -> dict[str, str]:
    """Fetch each missing corpus into ``root``; the ones that failed, with the reason
    and how to get them by hand."""
    failed = {}
    for source in missing:
        try:
            download_corpus(source.name, root, source=source, log=log)
        except DataToolError as exc:
            by_hand = manual_instructions(source, str(root))
            failed[source.name] = str(exc) if by_hand in str(exc) else f"{exc}\n{by_hand}"
    return failed


def _without_failed(cfg: Config, failed: dict[str, str], subset: bool, log: Log) -> Config:
    """``cfg`` without the corpora that could not be fetched, when the user chose the
    corpora (``subset``) and some are left; ``CorporaMissing`` otherwise."""
    left = [c for c in cfg.data.corpora if c not in failed]
    names = ", ".join(failed)
    reasons = "\n".join(failed.values())
    if subset and left:
        log(f"warning: {reasons}")
        log(f"warning: training without {names} (could not be fetched); data.corpora is now {left}")
        return cfg.model_copy(update={"data": cfg.data.model_copy(update={"corpora": left})})
    hint = f"; or train on the others with --set data.corpora=[{','.join(left)}]" if left else ""
    raise CorporaMissing(
        f"{reasons}\ncould not fetch {names}, and training needs every corpus in "
        f"data.corpora {cfg.data.corpora}: run the same command again later (a broken "
        f"download resumes), or get it by hand as said and set {DATA_ROOT_ENV} if it "
        f"is elsewhere{hint}"
    )


def ensure_corpora(
    cfg: Config,
    *,
    accepted: bool,
    subset: bool,
    ask: Ask = ask_on_terminal,
    log: Log = print,
) -> Config:
    """``cfg`` once every configured corpus with a source is under its data root.

    Missing ones are named with their sources and licences, then downloaded if the
    licences were ``accepted`` beforehand or the user says yes to ``ask``. Raises
    ``CorporaMissing`` (with the by-hand steps) when they are not, and when a download
    fails unless ``subset`` (the user chose ``data.corpora``): then the config comes
    back without the corpora that could not be fetched.
    """
    missing = missing_corpora(cfg.data)
    if not missing:
        return cfg
    root = Path(cfg.data.root).absolute()
    log(describe_missing(missing, root))
    if not accepted:
        answer = ask(
            f"Download {', '.join(s.name for s in missing)} ({_size(missing)}) into {root}, "
            "accepting the licences above? [y/N] "
        )
        if not answer:
            raise _refused(missing, root, answer)
    failed = _download(missing, root, log)
    if not failed:
        return cfg
    return _without_failed(cfg, failed, subset, log)


def interrupted_message(root: str | Path) -> str:
    """What to say when a download before training is interrupted."""
    return (
        f"interrupted; what was received is kept in {Path(root) / DOWNLOADS} and the corpus "
        "folders: run the same command again to resume the download"
    )
