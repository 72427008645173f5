"""Content-addressed on-disk feature cache and the parallel fill that uses it.

An entry is keyed by a hash of the audio bytes plus everything that affects the
frame-level features (chosen extractors and their params, frame params, silence
trimming when set, sample rate, ``EXTRACTOR_VERSION``), so a stale entry can never
be reused: change any of them and the key changes. Pooling, mode and worker count
are not in the key, so pooled and sequence runs share entries. Entries are written
to a temporary file and renamed into place, and are validated on read, data
included: each entry ends with a checksum of its array (see ``FeatureCache``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import socket
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from tqdm import tqdm

from ser.audio import AudioError, load_audio
from ser.config import (
    OPTIONAL_FEATURE_FIELDS,
    UTTERANCE_EXTRACTORS,
    ConfigError,
    FeaturesConfig,
)
from ser.features.extractors import (
    EXTRACTOR_REVISIONS,
    EXTRACTOR_VERSION,
    extract_features,
    feature_dims,
    opensmile_version,
)
from ser.progress import Log

if TYPE_CHECKING:
    from ser.perturb import Condition

_BLOCK = 1 << 20  # bytes read per hashing step
_MIN_FILES_PER_WORKER = 16
# After an entry's array: this tag and its checksum (``_word_sum``), 8 bytes little-endian.
_SUM_TAG = b"SERSUM64"
_TRAILER_BYTES = len(_SUM_TAG) + 8
# A temporary file this old is a leftover whoever wrote it (a write takes milliseconds).
_STALE_TEMP_SECONDS = 3600.0


class CacheError(OSError):
    """The cache directory cannot be created or written; the message names it."""


def _word_sum(array: np.ndarray) -> int:
    """The entry checksum: the float32 data read as little-endian 64-bit words (the last
    one zero-padded), summed mod 2**64. Faster than the finiteness scan it replaces."""
    flat = np.ascontiguousarray(array, dtype="<f4").reshape(-1)
    even = flat.size - flat.size % 2
    total = int(flat[:even].view("<u8").sum(dtype=np.uint64))
    if even < flat.size:
        total += int(flat[even:].view("<u4")[0])
    return total % (1 << 64)


def _temp_prefix(name: str) -> str:
    """``.<name>.<host tag>-<pid>.``: lets a sweep tell a dead writer's leftovers."""
    return f".{name}.{_HOST_TAG}-{os.getpid()}."


_HOST_TAG = f"{zlib.crc32(socket.gethostname().encode()):08x}"
_TEMP_NAME = re.compile(r"\.[^.]+\.([0-9a-f]{8})-(\d+)\..*\.tmp")


def _is_leftover(path: Path, now: float) -> bool:
    """A temporary file whose writer is gone: a dead process on this host, or old."""
    try:
        if now - path.stat().st_mtime > _STALE_TEMP_SECONDS:
            return True
    except FileNotFoundError:
        return False  # renamed or removed meanwhile
    match = _TEMP_NAME.fullmatch(path.name)
    if not match or match.group(1) != _HOST_TAG:
        return False  # another machine sharing the cache may still be writing it
    try:
        os.kill(int(match.group(2)), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, owned by another user
    return False


def file_digest(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of the file's bytes, read in 1 MiB blocks."""
    hasher = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            hasher.update(block)
    return hasher.hexdigest()


def cache_key(digest: str, cfg: FeaturesConfig, sample_rate: int) -> str:
    """Hex key of the features of the audio with ``digest`` under ``cfg`` at ``sample_rate``.

    Only what changes frame-level features goes in: params of extractors not chosen,
    mode, pooling, cache_dir and workers do not.
    """
    return _key(digest, _config_part(cfg, sample_rate))


def _config_part(cfg: FeaturesConfig, sample_rate: int) -> str:
    """The canonical JSON of the key spec after its first field, ``audio``."""
    spec = {
        "sample_rate": int(sample_rate),
        "version": EXTRACTOR_VERSION,
        "frame": cfg.frame.model_dump(mode="json"),
        "extractors": [
            [name, getattr(cfg, name).model_dump(mode="json")]
            + ([EXTRACTOR_REVISIONS[name]] if name in EXTRACTOR_REVISIONS else [])
            for name in cfg.extractors
        ],
    }
    for name in OPTIONAL_FEATURE_FIELDS:  # only when set: earlier entries keep their keys
        if getattr(cfg, name) is not None:
            spec[name] = getattr(cfg, name)
    if any(name in UTTERANCE_EXTRACTORS for name in cfg.extractors):
        spec["opensmile"] = opensmile_version()  # another release may compute other numbers
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))[1:]


def _key(digest: str, config_part: str) -> str:
    # SHA-256 of the canonical JSON {"audio": digest, ...config}: "audio" sorts first,
    # so the config part is serialised once per run, not once per file.
    canonical = f'{{"audio":{json.dumps(digest)},{config_part}'
    return hashlib.sha256(canonical.encode()).hexdigest()


_NPY_HEADER = re.compile(
    rb"\{'descr': '<f4', 'fortran_order': False, 'shape': \((\d+), (\d+)\), \}\s*\n"
)


def _npy_shape(f: BinaryIO) -> tuple[int, int] | None:
    """[frames, dims] from a fixed-form 2-D little-endian float32 ``.npy`` header (``np.load``
    spends most of a warm run evaluating the header as Python), leaving ``f`` at the data;
    None, with ``f`` back at the start, for any other header."""
    start = f.read(10)
    if start[:8] == b"\x93NUMPY\x01\x00":
        match = _NPY_HEADER.fullmatch(f.read(int.from_bytes(start[8:10], "little")))
        if match:
            return int(match.group(1)), int(match.group(2))
    f.seek(0)
    return None


def _read_float32_npy(f: BinaryIO) -> np.ndarray:
    """A 2-D float32 ``.npy`` read through ``_npy_shape``; anything else goes to np.load."""
    return _read_entry(f, tail=0)[0]


def _read_entry(f: BinaryIO, tail: int = _TRAILER_BYTES + 1) -> tuple[np.ndarray, bytes]:
    """The array of a ``.npy`` and up to ``tail`` bytes after it, in as few reads as one."""
    shape = _npy_shape(f)
    if shape is None:
        return np.load(f, allow_pickle=False), f.read(tail) if tail else b""
    frames, dims = shape
    size = 4 * frames * dims
    buffer = bytearray(size + tail)
    got = f.readinto(buffer)
    if got < size:
        raise EOFError(f"expected {size} bytes of data, found {got}")
    array = np.frombuffer(buffer, dtype="<f4", count=frames * dims).reshape(frames, dims)
    return array, bytes(buffer[size:got])


class DigestIndex:
    """Remembers file digests by (size, mtime_ns, inode), like git's index.

    A warm run then stats each file instead of reading it: a file whose size,
    modification time or inode changed is hashed again. Saved atomically as
    ``digests.json`` in the cache root; a missing or corrupt index is just empty.
    """

    FILE = "digests.json"

    def __init__(self, root: Path) -> None:
        self.path = root / self.FILE
        self.changed = False
        try:
            self.entries: dict[str, list] = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(self.entries, dict):
                raise ValueError("not a mapping")
        except (OSError, ValueError):
            self.entries = {}

    def digest(self, path: str) -> str:
        st = os.stat(path)
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        known = self.entries.get(path)
        if isinstance(known, list) and len(known) == 4 and known[:3] == stamp:
            return known[3]
        digest = file_digest(path)
        self.entries[path] = [*stamp, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        if not self.changed:
            return
        fd, tmp = tempfile.mkstemp(
            dir=self.path.parent, prefix=_temp_prefix("digests"), suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.entries, f)
            os.replace(tmp, self.path)
        except OSError:
            Path(tmp).unlink(missing_ok=True)  # the index is only an optimisation


class FeatureCache:
    """Feature arrays on disk, one ``.npy`` per key under ``root/<key[:2]>/``.

    Each ``.npy`` is followed by 16 bytes, ``SERSUM64`` and a checksum of the array
    (``_word_sum``), checked on every read: a flipped bit or an overwritten word
    anywhere in the data is caught (reordered words are not; CRC-32 would catch those
    too but made the whole warm cache read 28 % slower, while this sum is cheaper than
    the finiteness scan it replaces). numpy ignores the trailer, so ``np.load`` still
    reads an entry. Entries written without it (before it existed) are checked for
    non-finite values instead.
    ``log`` receives a line for every corrupt entry discarded; by default it is a
    ``RuntimeWarning``.
    """

    def __init__(self, root: str | os.PathLike[str], log: Log | None = None):
        self.root = Path(root)
        self._log = log
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # A real write, not os.access: permission bits say nothing for root or ACLs.
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as exc:
            raise CacheError(
                f"feature cache directory {self.root} is not writable ({exc.strerror or exc}); "
                "set features.cache_dir to a writable directory"
            ) from None

    def path_for(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str, dims: int | None = None) -> np.ndarray | None:
        """float32 [frames, dims] stored under ``key``, or None on a miss.

        A corrupt entry (unreadable, truncated, trailing bytes, wrong dtype or shape,
        non-finite values, or not ``dims`` wide when given) is deleted and is a miss.
        """
        path = self.path_for(key)
        try:
            with open(path, "rb") as f:
                array, trailing = _read_entry(f)
        except FileNotFoundError:
            return None
        except Exception as exc:  # np.load raises ValueError, EOFError, OSError, ...
            problem = f"unreadable ({type(exc).__name__}: {exc})"
        else:
            problem = _problem(array, dims, trailing)
        if problem is None:
            return array
        with contextlib.suppress(OSError):  # another process may have replaced it already
            path.unlink()
        self._warn(f"warning: discarded corrupt cache entry {path}: {problem}")
        return None

    def put(self, key: str, array: np.ndarray) -> None:
        """Store float32 [frames, dims] atomically: readers see no entry or a whole one.

        Raises ``ValueError`` for a wrong shape or non-finite values, ``OSError`` when
        the file cannot be written (nothing is left behind).
        """
        array = np.ascontiguousarray(array, dtype=np.float32)
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(f"expected features [frames >= 1, dims], got shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError("features contain NaN or infinite values; not cached")
        path = self.path_for(key)
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(key), suffix=".tmp")
        except FileNotFoundError:  # the shard's first entry: a mkdir per entry cost 0.6 ms
            path.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(key), suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, array, allow_pickle=False)
                f.write(_SUM_TAG + _word_sum(array).to_bytes(8, "little"))
            # No fsync: a killed process leaves its renamed entries whole (they are in
            # the page cache), and an entry torn by a power loss fails its checksum on
            # read and is recomputed. fsync cost 1.1 ms of the 9 ms of an entry.
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def sweep(self) -> int:
        """Delete temporary files left by killed writers; returns how many."""
        now, removed = time.time(), 0
        for path in [*self.root.glob(".*.tmp"), *self.root.glob("??/.*.tmp")]:
            if _is_leftover(path, now):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed

    def _warn(self, message: str) -> None:
        if self._log is None:
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        else:
            self._log(message)


def _problem(array: np.ndarray, dims: int | None, trailing: bytes) -> str | None:
    if trailing and (len(trailing) != _TRAILER_BYTES or not trailing.startswith(_SUM_TAG)):
        return "damaged checksum or trailing bytes after the array"
    if array.dtype != np.float32 or array.ndim != 2 or array.shape[0] == 0:
        return f"expected float32 [frames >= 1, dims], got {array.dtype} {array.shape}"
    if dims is not None and array.shape[1] != dims:
        return f"expected {dims} feature columns, got {array.shape[1]}"
    if trailing:  # written finite (``put`` refuses anything else), so the sum suffices
        if _word_sum(array) != int.from_bytes(trailing[len(_SUM_TAG) :], "little"):
            return "checksum mismatch: the data changed on disk"
    elif not np.isfinite(array).all():
        return "contains NaN or infinite values"
    return None


@dataclass
class ExtractionReport:
    """What ``extract_all`` did; ``failed`` holds (path, reason) in input order."""

    total: int
    hits: int
    extracted: int
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"features: {self.total} files, {self.hits} cache hits, {self.extracted} extracted, "
            f"{len(self.failed)} failed ({self.seconds:.1f} s)"
        )


@dataclass(frozen=True)
class _Outcome:
    """What a worker sends back for one file: features or the reason there are none."""

    path: str
    features: np.ndarray | None
    error: str | None = None
    cache_error: str | None = None  # the features are fine but could not be stored


def _reason(exc: BaseException, path: str) -> str:
    """One line saying why ``path`` failed, without repeating the path."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read ({exc.strerror})"
    lines = str(exc).strip().splitlines()
    text = lines[0].removeprefix(f"{path}: ") if lines else ""
    if not isinstance(exc, AudioError):  # an unexpected failure: say what kind
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:300]


def condition_digest(digest: str, condition: Condition) -> str:
    """The digest standing for a file's audio in ``condition`` (its name and seed)."""
    text = f"{digest}|{condition.name}|{condition.seed}"
    return hashlib.sha256(text.encode()).hexdigest()


def _extract_one(
    path: str,
    cfg: FeaturesConfig,
    sample_rate: int,
    cache: FeatureCache,
    conditions: Mapping[str, tuple[str, Condition]] | None = None,
) -> _Outcome:
    """Read, hash, decode, extract and cache one file (or, for a path in ``conditions``,
    its source file in that condition); never raises for a bad file."""
    source, condition = (conditions or {}).get(path, (path, None))
    try:
        # Hashed again just before decoding rather than reusing the parent's digest:
        # that shrinks the gap in which a rewritten file could be cached under its
        # old key to milliseconds.
        digest = file_digest(source)  # once per miss: cheap enough
        if condition is not None:
            digest = condition_digest(digest, condition)
        key = cache_key(digest, cfg, sample_rate)
        with warnings.catch_warnings():
            # librosa's CQT (tonnetz) warns about its low octaves on every short clip;
            # a line per file would bury the warnings that matter.
            warnings.filterwarnings("ignore", r"n_fft=\d+ is too large", UserWarning)
            wave = load_audio(source, sample_rate)
            if condition is not None:
                wave = condition.apply(wave, sample_rate, Path(source).name)
            features = extract_features(wave, sample_rate, cfg)
    except Exception as exc:
        return _Outcome(path, None, error=_reason(exc, path))
    try:
        cache.put(key, features)
    except OSError as exc:  # e.g. disk full: the caller stops the run, naming the cache
        return _Outcome(path, features, cache_error=exc.strerror or str(exc))
    return _Outcome(path, features)


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    from ser.process_tuning import keep_freed_memory

    keep_freed_memory()  # no page faults on each clip's spectra (see there)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1):
        yield


def _init_worker() -> None:
    # Each worker is one of N processes on N cores: BLAS threads on top of that
    # oversubscribe the machine (measured 4x slower with 2 workers on 2 cores).
    from ser.process_tuning import keep_freed_memory

    keep_freed_memory()  # no page faults on each clip's spectra (see there)
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:
        return
    threadpool_limits(1)


def _extract_batch(
    paths: list[str],
    cfg: FeaturesConfig,
    sample_rate: int,
    root: str,
    conditions: Mapping[str, tuple[str, Condition]],
) -> list[_Outcome]:
    """Worker-process entry point."""
    cache = FeatureCache(root)
    return [_extract_one(path, cfg, sample_rate, cache, conditions) for path in paths]


def _check_extractable(cfg: FeaturesConfig, sample_rate: int) -> None:
    """Fail once, before any work, when the config cannot run at this sample rate.

    Otherwise e.g. a spectral-contrast band above Nyquist would fail every file.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # silence is expected to trip librosa's hints
            extract_features(np.zeros(sample_rate // 4, np.float32), sample_rate, cfg)
    except Exception as exc:
        raise ConfigError(
            f"features {cfg.extractors} cannot be extracted at {sample_rate} Hz: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


# Libraries whose own threads a forked child would inherit in an unknown state.
_FORK_UNSAFE_MODULES = ("tensorflow", "onnxruntime", "torch")


def _worker_context() -> multiprocessing.context.BaseContext:
    """How the extraction workers start: ``fork`` on Linux when this process runs none
    of ``_FORK_UNSAFE_MODULES``, so they begin with librosa imported and its kernels
    loaded by ``_check_extractable`` (a spawned worker spends about 2.5 s on that:
    2 workers filled 600 files at 110 files/s spawned, 255 forked); ``spawn`` otherwise."""
    loaded = any(name in sys.modules for name in _FORK_UNSAFE_MODULES)
    if sys.platform.startswith("linux") and not loaded:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _run_pool(
    misses: list[str],
    cfg: FeaturesConfig,
    sample_rate: int,
    root: str,
    workers: int,
    conditions: Mapping[str, tuple[str, Condition]],
) -> Iterator[_Outcome]:
    """Outcomes of ``misses`` extracted by ``workers`` processes, in completion order."""
    # Small batches amortise inter-process overhead; a bounded window of in-flight
    # batches keeps memory flat for any number of files.
    size = max(1, min(16, len(misses) // (4 * workers)))
    pending = _batches(misses, size)
    context = _worker_context()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        running: set[Future[list[_Outcome]]] = set()
        while True:
            while len(running) < 2 * workers and (batch := next(pending, None)) is not None:
                mine = {p: conditions[p] for p in batch if p in conditions}
                running.add(pool.submit(_extract_batch, batch, cfg, sample_rate, root, mine))
            if not running:
                return
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                yield from future.result()


def extract_all(
    paths: Sequence[str],
    cfg: FeaturesConfig,
    sample_rate: int,
    *,
    workers: int | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
    log: Log = print,
    conditions: Mapping[str, tuple[str, Condition]] | None = None,
) -> tuple[dict[str, np.ndarray], ExtractionReport]:
    """Frame-level features of every readable file in ``paths``, through the cache.

    A path that is a key of ``conditions`` names a file in a recording condition
    (``(source file, ser.perturb.Condition)``, train-time augmentation): its features
    are those of the source's audio in that condition, cached under their own key.

    Returns ``{path: float32 [frames, feature_dims(cfg)]}`` in input order for every
    file that worked, and a report; a bad file is a warning line and a ``failed``
    entry, never an exception. ``workers`` (default ``cfg.workers``; 0 = one per
    core, 1 = this process) extract the cache misses, in processes forked from this
    one or spawned (``_worker_context``): a script calling this needs the
    ``if __name__ == "__main__":`` guard.
    ``cache_dir`` defaults to ``cfg.cache_dir``. Raises ``CacheError`` for an
    unwritable cache directory and ``ConfigError`` for a config that cannot run at
    ``sample_rate``, before any work; and ``CacheError`` at the first entry that
    cannot be stored (disk full, permissions changed), since every later one would
    fail too: entries already stored stay valid. Temporary files left by killed
    writers are deleted when there are misses to extract.
    """
    start = time.perf_counter()
    unique = list(dict.fromkeys(str(p) for p in paths))
    quiet = not progress or not sys.stderr.isatty()
    with tqdm(total=len(unique), desc="features", unit="file", disable=quiet) as bar:
        tally = _Tally(bar, log)
        cache = FeatureCache(cache_dir or cfg.cache_dir, log=tally.say)
        # Hashing and loading hits stay in this process, so an all-hit run never pays
        # for starting workers; unchanged files are not even re-read (DigestIndex).
        index = DigestIndex(cache.root)
        misses = _load_hits(unique, cfg, sample_rate, cache, index, tally, conditions or {})
        hits = len(tally.found)
        if misses:
            _extract_misses(misses, cfg, sample_rate, cache, workers, tally, conditions or {})
        index.save()
    return tally.results(unique, hits, seconds=time.perf_counter() - start)


@dataclass
class _Tally:
    """The results of one ``extract_all`` as they come in, with its progress bar and log."""

    bar: tqdm
    log: Log
    found: dict[str, np.ndarray] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def say(self, line: str) -> None:
        """Log ``line`` without breaking the progress bar."""
        with self.bar.external_write_mode():
            self.log(line)

    def add(self, path: str, features: np.ndarray) -> None:
        self.found[path] = features
        self.bar.update()

    def fail(self, path: str, reason: str) -> None:
        self.failed.append((path, reason))
        self.say(f"warning: skipped {path}: {reason}")
        self.bar.update()

    def results(
        self, unique: list[str], hits: int, seconds: float
    ) -> tuple[dict[str, np.ndarray], ExtractionReport]:
        """The features in the order of ``unique``, and the report (failures in that order)."""
        order = {path: i for i, path in enumerate(unique)}
        report = ExtractionReport(
            total=len(unique),
            hits=hits,
            extracted=len(self.found) - hits,
            failed=sorted(self.failed, key=lambda item: order[item[0]]),
            seconds=seconds,
        )
        return {path: self.found[path] for path in unique if path in self.found}, report


def _load_hits(
    unique: list[str],
    cfg: FeaturesConfig,
    sample_rate: int,
    cache: FeatureCache,
    index: DigestIndex,
    tally: _Tally,
    conditions: Mapping[str, tuple[str, Condition]],
) -> list[str]:
    """Add every file already in ``cache`` to ``tally``; the paths still to extract."""
    dims = feature_dims(cfg)
    config_part = _config_part(cfg, sample_rate)
    misses: list[str] = []
    for path in unique:
        source, condition = conditions.get(path, (path, None))
        try:
            digest = index.digest(source)
        except OSError as exc:
            tally.fail(path, _reason(exc, source))
            continue
        if condition is not None:
            digest = condition_digest(digest, condition)
        array = cache.get(_key(digest, config_part), dims)
        if array is None:
            misses.append(path)
        else:
            tally.add(path, array)
    return misses


def _extract_misses(
    misses: list[str],
    cfg: FeaturesConfig,
    sample_rate: int,
    cache: FeatureCache,
    workers: int | None,
    tally: _Tally,
    conditions: Mapping[str, tuple[str, Condition]],
) -> None:
    """Extract and cache ``misses``, adding each to ``tally``; ``CacheError`` at the first
    entry that cannot be stored."""
    cache.sweep()
    _check_extractable(cfg, sample_rate)
    outcomes = _outcomes(misses, cfg, sample_rate, cache, workers, conditions)
    # In this process too: the small filterbank products run several times
    # faster on one BLAS thread than with a pool spinning on busy cores.
    with _one_blas_thread(), contextlib.closing(outcomes):
        for outcome in outcomes:
            if outcome.cache_error:
                raise CacheError(
                    f"feature cache directory {cache.root} cannot be written "
                    f"({outcome.cache_error}); entries stored so far are kept. "
                    "Free some space or set features.cache_dir to a writable directory"
                )
            if outcome.features is None:
                tally.fail(outcome.path, outcome.error or "unknown error")
            else:
                tally.add(outcome.path, outcome.features)


def _outcomes(
    misses: list[str],
    cfg: FeaturesConfig,
    sample_rate: int,
    cache: FeatureCache,
    workers: int | None,
    conditions: Mapping[str, tuple[str, Condition]],
) -> Iterator[_Outcome]:
    """The outcomes of ``misses``, from this process or a pool, as they are ready."""
    n = workers if workers is not None else cfg.workers
    # A worker spends ~1.5 s importing librosa: only worth it for enough files.
    n = min(n or os.cpu_count() or 1, max(1, len(misses) // _MIN_FILES_PER_WORKER))
    if n == 1:
        return (_extract_one(path, cfg, sample_rate, cache, conditions) for path in misses)
    return _run_pool(misses, cfg, sample_rate, str(cache.root), n, conditions)
