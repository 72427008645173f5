"""``ser data download``: fetch a corpus from its official source and unpack it.

A download goes to ``<file>.part`` next to its final name and is renamed only
after its size and MD5 check out (where the source publishes them, see
``ser.datatools.sources``). A broken transfer is resumed with an HTTP range
request, within the same run (a few times) or by running the command again, so
no byte already received is fetched twice. An archive is unpacked into a hidden
staging folder first and its files moved into ``<root>/<corpus>/`` afterwards;
a ``.ser-source.json`` marker written last says the corpus is complete.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from ser.datatools import DataToolError
from ser.datatools.sources import SOURCES, Source, manual_instructions
from ser.progress import Log

USER_AGENT = "ser-data-download/1 (python urllib)"
MARKER = ".ser-source.json"
DOWNLOADS = ".downloads"  # under the data root: archives and partial files
_CHUNK = 1 << 20
# Transient network errors while bytes are flowing; the transfer is resumed.
_TRANSFER_ERRORS = (http.client.HTTPException, OSError)


class DownloadError(DataToolError):
    """A download that did not complete; the message says what is kept and what to do."""


class SourceUnreachable(DownloadError):
    """The source could not be reached or refused the request."""


class ChecksumError(DownloadError):
    """Downloaded bytes differ from the published size or MD5."""


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch; ``name`` is a relative POSIX path; ``size``/``md5`` as published."""

    url: str
    name: str
    size: int | None = None
    md5: str | None = None
    published_by: str = ""


@dataclass(frozen=True)
class Plan:
    """What to fetch for a source: one archive to unpack, or files placed as they are."""

    files: tuple[RemoteFile, ...]
    archive: bool
    notes: tuple[str, ...] = ()


@dataclass
class DownloadResult:
    """What ``download_corpus`` left on disk: the corpus folder and what its reader finds."""

    corpus: str
    folder: Path
    usable: int
    skipped: int
    speakers: int
    already_there: bool = False


# --------------------------------------------------------------------------- http
def _request(url: str, offset: int = 0) -> urllib.request.Request:
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        # A transparently compressed body could not be resumed by byte offset.
        headers["Accept-Encoding"] = "identity"
    return urllib.request.Request(url, headers=headers)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def get_json(url: str, timeout: float = 30.0) -> Any:
    """GET ``url`` and parse JSON; ``SourceUnreachable`` when offline or not JSON."""
    try:
        with urllib.request.urlopen(_request(url), timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise SourceUnreachable(f"cannot reach {url} ({_reason(exc)})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceUnreachable(f"{url} did not answer with JSON ({exc})") from None


def file_md5(path: str | os.PathLike[str]) -> str:
    hasher = hashlib.md5(usedforsecurity=False)
    with open(path, "rb", buffering=0) as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _verify(path: Path, remote: RemoteFile) -> str | None:
    """Why ``path`` is not the published file, or None if it matches (or nothing is published)."""
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        return f"size is {size:,} bytes, but {remote.published_by or 'the source'} publishes {remote.size:,}"
    if remote.md5 is not None:
        actual = file_md5(path)
        if actual.lower() != remote.md5.lower():
            return (
                f"MD5 is {actual}, but {remote.published_by or 'the source'} publishes {remote.md5}"
            )
    return None


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    """``"bytes 100-199/200"`` -> (100, 200); total None when ``*``."""
    if not value or not value.startswith("bytes "):
        return None
    span, _, total = value[6:].partition("/")
    start = span.split("-", 1)[0]
    try:
        return int(start), (int(total) if total.strip() != "*" else None)
    except ValueError:
        return None


def fetch(
    remote: RemoteFile,
    dest: str | os.PathLike[str],
    *,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
    log: Log = print,
) -> Path:
    """Download ``remote`` to ``dest`` through ``dest.part``, resuming; verify; rename.

    An existing ``dest`` that matches the published size/MD5 is kept as it is. A
    transfer that breaks is resumed up to ``retries`` times in this call; after
    that the partial file stays for the next call. Raises ``SourceUnreachable``
    when no connection can be made (partial file kept), ``ChecksumError`` when the
    finished file does not match (it is deleted) and ``DownloadError`` otherwise.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        problem = _verify(dest, remote)
        if problem is None:
            return dest
        log(f"{dest}: {problem}; downloading it again")
        dest.unlink()
    transfer = _Transfer(remote, dest, timeout, progress, log, expected=remote.size)
    transfer.fill_part(retries)
    transfer.verify_and_rename()
    return dest


@dataclass
class _Transfer:
    """The download of one file into ``<dest>.part`` across its resumes: opening the
    source at the right byte, appending, and renaming once the whole file checks out."""

    remote: RemoteFile
    dest: Path
    timeout: float
    progress: bool
    log: Log
    expected: int | None  # full size in bytes: as published, else as the server announces

    @property
    def part(self) -> Path:
        return self.dest.with_name(self.dest.name + ".part")

    def received(self) -> int:
        return self.part.stat().st_size if self.part.exists() else 0

    def fill_part(self, retries: int) -> None:
        """Append to the part file until it holds the whole file, resuming up to ``retries``
        times after a break; ``DownloadError`` (partial file kept) when that is not enough."""
        resumes = 0
        while True:
            offset = self._offset()
            if self.expected is not None and offset == self.expected:
                return  # every byte is already here (a previous run stopped before renaming)
            response = self._open(offset)
            if response is None:
                return
            with response:
                start = self._body_start(response, offset)
                error = _copy(
                    response, self.part, start, self.expected, self.dest.name, self.progress
                )
            got = self.received()
            if error is None and (self.expected is None or got >= self.expected):
                return
            resumes += 1
            self._interrupted(got, error, resumes, retries)

    def _offset(self) -> int:
        """Bytes already in the part file; one longer than the whole file is started afresh."""
        offset = self.received()
        if self.expected is not None and offset > self.expected:
            self.part.unlink()
            offset = 0
        return offset

    def _open(self, offset: int) -> http.client.HTTPResponse | None:
        """The source's answer from byte ``offset``; None when it has nothing after it."""
        url = self.remote.url
        try:
            return urllib.request.urlopen(_request(url, offset), timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                # The server has nothing after ``offset``: the part file is complete or
                # wrong, and the checks in ``verify_and_rename`` tell which.
                return None
            kept = f"; {offset:,} bytes kept in {self.part}" if offset else ""
            raise SourceUnreachable(f"{url} answered {_reason(exc)}{kept}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            kept = (
                f"; the {offset:,} bytes received so far are kept in {self.part}" if offset else ""
            )
            raise SourceUnreachable(f"cannot reach {url} ({_reason(exc)}){kept}") from None

    def _body_start(self, response: http.client.HTTPResponse, offset: int) -> int:
        """Where ``response``'s body goes in the part file: ``offset`` when the server
        resumes, 0 when it sends the whole file again. Learns the full size from the
        headers when it is not published."""
        start = 0
        if offset and response.status == 206:
            span = _content_range(response.headers.get("Content-Range"))
            if span is None or span[0] != offset:
                raise DownloadError(
                    f"{self.remote.url}: asked to resume at byte {offset:,} but the server "
                    f"answered Content-Range {response.headers.get('Content-Range')!r}; "
                    f"delete {self.part} to start again"
                )
            start = offset
            if span[1] is not None:
                self.expected = self.expected if self.expected is not None else span[1]
        elif offset:
            self.log(f"{self.dest.name}: the server does not resume downloads; starting again")
        length = response.headers.get("Content-Length")
        if self.expected is None and length and length.isdigit():
            self.expected = start + int(length)
        if offset and start:
            self.log(f"{self.dest.name}: resuming at {offset:,} bytes")
        return start

    def _interrupted(
        self, got: int, error: BaseException | None, resumes: int, retries: int
    ) -> None:
        """Say that the transfer broke at ``got`` bytes; raise once resumes are used up."""
        why = _reason(error) if error else "the connection closed early"
        of = f" of {self.expected:,}" if self.expected is not None else ""
        if resumes > retries:
            tried = f" after {retries} resumes" if retries else ""
            raise DownloadError(
                f"{self.dest.name}: download interrupted at {got:,}{of} bytes ({why}){tried}; "
                f"the partial file is kept in {self.part}: run the same command again to resume"
            )
        self.log(f"{self.dest.name}: interrupted at {got:,}{of} bytes ({why}); resuming")

    def verify_and_rename(self) -> None:
        """Check the part file against the published (or announced) size and MD5, then
        rename it to ``dest``; ``ChecksumError`` (part file deleted) on a mismatch."""
        remote = self.remote
        size = self.expected if remote.size is None else remote.size
        problem = _verify(self.part, replace(remote, size=size))
        if problem is not None:
            self.part.unlink()
            raise ChecksumError(
                f"{self.dest.name} from {remote.url}: {problem}. The download was deleted; "
                "run the same command again to download it afresh (a repeated mismatch means "
                "the file at the source changed or the connection alters it)"
            )
        os.replace(self.part, self.dest)


def _copy(
    response: http.client.HTTPResponse,
    part: Path,
    start: int,
    expected: int | None,
    label: str,
    progress: bool,
) -> BaseException | None:
    """Append the body to ``part`` (truncated to ``start`` first); the error that stopped it."""
    quiet = not progress or not sys.stderr.isatty()
    with (
        open(part, "r+b" if part.exists() else "wb") as out,
        tqdm(
            total=expected,
            initial=start,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=label,
            disable=quiet,
            leave=False,
        ) as bar,
    ):
        out.truncate(start)
        out.seek(start)
        try:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
        except _TRANSFER_ERRORS as exc:
            return exc
    return None


# ----------------------------------------------------------------------- planning
def _zenodo_plan(source: Source, timeout: float) -> Plan:
    """The record's file entry gives the download link, the size and ``md5:<hex>``."""
    try:
        record = get_json(source.url, timeout)
    except SourceUnreachable as exc:
        if not source.fallback_url:
            raise
        note = (
            f"could not read the published checksum ({exc}); trying the direct link, "
            "checked against its announced length only"
        )
        return Plan((RemoteFile(source.fallback_url, source.filename),), True, (note,))
    files = record.get("files") if isinstance(record, dict) else None
    for entry in files if isinstance(files, list) else []:
        if isinstance(entry, dict) and entry.get("key") == source.filename:
            algorithm, _, value = str(entry.get("checksum", "")).partition(":")
            md5 = value if algorithm.lower() == "md5" and value else None
            links = entry.get("links") if isinstance(entry.get("links"), dict) else {}
            url = links.get("content") or links.get("self") or source.fallback_url
            size = entry.get("size") if isinstance(entry.get("size"), int) else None
            return Plan((RemoteFile(url, source.filename, size, md5, "the Zenodo record"),), True)
    raise DownloadError(
        f"{source.url}: the record does not list {source.filename}; the record may have "
        "changed: download it by hand"
    )


def _safe_parts(name: str) -> tuple[str, ...] | None:
    """Path components of a relative archive/API name; None for an unsafe one."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or any(p in ("..", "") or ":" in p for p in path.parts):
        return None
    return path.parts


def _dataverse_plan(source: Source, timeout: float) -> Plan:
    """Every public file of the dataset's latest version, with its published size and MD5."""
    answer = get_json(source.url, timeout)
    try:
        entries = answer["data"]["latestVersion"]["files"]
    except (KeyError, TypeError):
        raise DownloadError(
            f"{source.url}: unexpected answer from the Dataverse API "
            f"(status {answer.get('status') if isinstance(answer, dict) else '?'}); "
            "download it by hand"
        ) from None
    parsed = urllib.parse.urlsplit(source.url)
    base = f"{parsed.scheme}://{parsed.netloc}"
    files, notes = [], []
    for entry in entries:
        data = entry.get("dataFile", {})
        name = data.get("filename") or entry.get("label")
        if entry.get("restricted") or data.get("restricted"):
            notes.append(f"{name}: restricted at the source, not downloaded")
            continue
        folder = (entry.get("directoryLabel") or "").strip("/")
        # Keep the last folder level (e.g. OAF_angry); deeper levels only wrap it.
        relative = f"{PurePosixPath(folder).name}/{name}" if folder else name
        if not name or "id" not in data or _safe_parts(relative) is None:
            notes.append(f"{relative!r}: unusable entry in the dataset listing, skipped")
            continue
        checksum = data.get("checksum") or {}
        md5 = checksum.get("value") if str(checksum.get("type", "")).upper() == "MD5" else None
        size = data.get("filesize") if isinstance(data.get("filesize"), int) else None
        files.append(
            RemoteFile(
                f"{base}/api/access/datafile/{data['id']}",
                relative,
                size,
                md5 or data.get("md5"),
                "the Dataverse dataset",
            )
        )
    if not files:
        raise DownloadError(f"{source.url}: the dataset lists no downloadable file")
    return Plan(tuple(files), False, tuple(notes))


def plan_for(source: Source, timeout: float = 30.0) -> Plan:
    """Resolve ``source`` to the files to fetch (asks the source's API where it has one)."""
    if source.kind == "zenodo":
        return _zenodo_plan(source, timeout)
    if source.kind == "dataverse":
        return _dataverse_plan(source, timeout)
    note = () if source.md5 or source.size else (f"{source.name}: {source.checksum_note}",)
    return Plan(
        (RemoteFile(source.url, source.filename, source.size, source.md5, "the known value"),),
        True,
        note,
    )


# ----------------------------------------------------------------------- unpacking
def unpack(
    archive: str | os.PathLike[str], folder: str | os.PathLike[str], log: Log = print
) -> int:
    """Extract the zip ``archive`` into ``folder``; returns the number of files placed.

    Wrapper folders are dropped (some copies put everything under
    ``Audio_Speech_Actors_01-24/``, Dataverse under the dataset's folder name next
    to a ``MANIFEST.TXT``); macOS ``__MACOSX`` and ``._`` entries are left out. Files land in ``folder`` only after the whole archive
    has been extracted and CRC-checked.
    """
    archive, folder = Path(archive), Path(folder)
    if not archive.is_file():
        raise DownloadError(f"{archive}: no such file")
    staging = folder.parent / f".{folder.name}.unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                parts = _safe_parts(info.filename.rstrip("/"))
                if parts is None:
                    raise DownloadError(
                        f"{archive}: refusing unsafe path {info.filename!r} in the archive"
                    )
                if info.is_dir() or parts[0] == "__MACOSX" or parts[-1].startswith("._"):
                    continue
                target = staging.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(
            f"{archive}: not a complete zip archive ({exc}); delete it and download it again"
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # Descend through wrapper folders: a level holding one folder and nothing else but
    # Dataverse's MANIFEST.TXT (kept, at the corpus folder's top). EMO-DB's ``wav/``
    # next to its notes is not a wrapper.
    anchor, extras = staging, []
    while anchor.is_dir():
        children = list(anchor.iterdir())
        folders = [c for c in children if c.is_dir()]
        files = [c for c in children if c.is_file()]
        if len(folders) != 1 or any(f.name.lower() != "manifest.txt" for f in files):
            break
        extras += files
        anchor = folders[0]
    moves = [(p, folder / p.relative_to(anchor)) for p in sorted(anchor.rglob("*")) if p.is_file()]
    moves += [(p, folder / p.name) for p in extras]
    for path, target in moves:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    placed = len(moves)
    shutil.rmtree(staging, ignore_errors=True)
    if placed == 0:
        raise DownloadError(f"{archive}: the archive holds no files")
    log(f"unpacked {placed} files from {archive.name} into {folder}")
    return placed


# ------------------------------------------------------------------------ corpora
def _count(source: Source, folder: Path) -> tuple[int, int, int]:
    """(usable, skipped, speakers) by the project's own reader with default options."""
    from ser.config import DataConfig
    from ser.data.corpora import CORPORA, Skipped, Utterance

    usable, skipped, speakers = 0, 0, set()
    options = getattr(DataConfig(), source.name)
    for item in CORPORA.get(source.name)(folder, options):
        if isinstance(item, Utterance):
            usable += 1
            speakers.add(item.speaker)
        elif isinstance(item, Skipped):
            skipped += 1
    return usable, skipped, len(speakers)


def _fetch_files(
    plan: Plan,
    folder: Path,
    *,
    workers: int,
    retries: int,
    timeout: float,
    progress: bool,
    log: Log,
) -> list[str]:
    """Fetch every file of ``plan`` into ``folder``; the failures, one line each."""
    failures: list[str] = []
    quiet = not progress or not sys.stderr.isatty()
    with tqdm(total=len(plan.files), desc="files", unit="file", disable=quiet) as bar:

        def one(remote: RemoteFile) -> str | None:
            try:
                fetch(
                    remote,
                    folder.joinpath(*PurePosixPath(remote.name).parts),
                    retries=retries,
                    timeout=timeout,
                    progress=False,
                    log=say,
                )
                return None
            except DownloadError as exc:
                return str(exc)

        def say(line: str) -> None:
            with bar.external_write_mode():
                log(line)

        with ThreadPoolExecutor(max(1, workers)) as pool:
            for problem in pool.map(one, plan.files):
                if problem:
                    failures.append(problem)
                    say(f"warning: {problem}")
                bar.update()
    return failures


def download_corpus(
    name: str,
    to: str | os.PathLike[str] = "data",
    *,
    archive: str | os.PathLike[str] | None = None,
    keep_archive: bool = False,
    source: Source | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    workers: int = 4,
    progress: bool = True,
    log: Log = print,
) -> DownloadResult:
    """Fetch, verify and unpack corpus ``name`` into ``<to>/<corpus folder>``.

    ``archive`` uses a zip the user already downloaded instead of the network.
    ``source`` replaces the official one (tests point it at a local server). A
    corpus whose marker file exists is left as it is. Raises ``DownloadError``
    (``SourceUnreachable`` with by-hand instructions when offline).
    """
    source = source or SOURCES.get(name)
    root = Path(to)
    folder = root / source.folder
    marker = folder / MARKER
    if marker.exists() and archive is None:
        log(f"{name}: already downloaded into {folder} (delete {marker} to fetch it again)")
        return _finish(source, folder, log, already_there=True)

    origin: dict[str, Any] = {"corpus": name, "title": source.title}
    if archive is not None:
        archive = Path(archive)
        log(f"{name}: unpacking {archive} (not verified: checksums apply to downloads)")
        unpack(archive, folder, log)
        origin["archive"] = str(archive.resolve())
    else:
        try:
            plan = plan_for(source, timeout=min(timeout, 30.0))
        except SourceUnreachable as exc:
            raise _with_instructions(name, exc, source, to) from None
        for note in plan.notes:
            log(f"note: {note}")
        if plan.archive:
            path = _fetch_archive(
                name,
                source,
                plan.files[0],
                root,
                to,
                retries=retries,
                timeout=timeout,
                progress=progress,
                log=log,
            )
            unpack(path, folder, log)
            if not keep_archive:
                path.unlink()
        else:
            log(f"{name}: downloading {len(plan.files)} files from {source.page} into {folder}")
            failures = _fetch_files(
                plan,
                folder,
                workers=workers,
                retries=retries,
                timeout=timeout,
                progress=progress,
                log=log,
            )
            if failures:
                raise DownloadError(
                    f"{name}: {len(failures)} of {len(plan.files)} files failed (first: "
                    f"{failures[0]}); the others are kept and verified: run the same command "
                    f"again to fetch the rest.\n{manual_instructions(source, str(to))}"
                )
        origin.update(url=source.url, checks=source.checksum_note)
    origin["completed"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    marker.write_text(json.dumps(origin, indent=2) + "\n", encoding="utf-8")
    return _finish(source, folder, log)


def _with_instructions(
    name: str, exc: SourceUnreachable, source: Source, to: str | os.PathLike[str]
) -> SourceUnreachable:
    """``exc`` followed by how to fetch corpus ``name`` by hand."""
    return SourceUnreachable(f"{name}: {exc}\n{manual_instructions(source, str(to))}")


def _fetch_archive(
    name: str,
    source: Source,
    remote: RemoteFile,
    root: Path,
    to: str | os.PathLike[str],
    *,
    retries: int,
    timeout: float,
    progress: bool,
    log: Log,
) -> Path:
    """Download the corpus archive into ``<root>/.downloads``; its verified path."""
    downloads = root / DOWNLOADS
    size = f" ({remote.size / 1e6:.1f} MB)" if remote.size else ""
    log(f"{name}: downloading {remote.url}{size} to {downloads}")
    try:
        path = fetch(
            remote,
            downloads / remote.name,
            retries=retries,
            timeout=timeout,
            progress=progress,
            log=log,
        )
    except SourceUnreachable as exc:
        raise _with_instructions(name, exc, source, to) from None
    verified = "size and MD5 verified" if remote.md5 else "length verified"
    log(f"{name}: {path.name} complete, {verified}")
    return path


def _finish(source: Source, folder: Path, log: Log, already_there: bool = False) -> DownloadResult:
    usable, skipped, speakers = _count(source, folder)
    log(
        f"{source.name}: {usable} usable recordings from {speakers} speakers in {folder} "
        f"(the official release has {source.release_files}); {skipped} files skipped"
    )
    log(f"licence — {source.licence}")
    return DownloadResult(source.name, folder, usable, skipped, speakers, already_there)
