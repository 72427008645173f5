"""The content-addressed feature cache and ``extract_all`` on tiny generated files."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser.audio import load_audio
from ser.config import ConfigError, FeaturesConfig
from ser.features import cache as cache_module
from ser.features.cache import (
    CacheError,
    DigestIndex,
    ExtractionReport,
    FeatureCache,
    cache_key,
    extract_all,
    file_digest,
)
from ser.features.extractors import extract_features
from tests.support import ROOT
from tests.support.fakes import make_emodb
from tests.support.tiny_run import tiny_overrides

SR = 16000


def write_tone(path: Path, freq: float, seconds: float = 0.3, sr: int = SR) -> str:
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.5 * np.sin(2 * np.pi * freq * t), sr, subtype="PCM_16")
    return str(path)


@pytest.fixture
def wavs(tmp_path: Path) -> list[str]:
    folder = tmp_path / "audio"
    folder.mkdir()
    return [write_tone(folder / f"{i}.wav", 200.0 + 150 * i) for i in range(4)]


def config(tmp_path: Path, **fields) -> FeaturesConfig:
    return FeaturesConfig.model_validate({"cache_dir": str(tmp_path / "cache"), **fields})


def run(paths, cfg, **kwargs):
    lines: list[str] = []
    kwargs = {"workers": 1, "progress": False, **kwargs}
    features, report = extract_all(paths, cfg, SR, log=lines.append, **kwargs)
    return features, report, lines


def entries(cfg: FeaturesConfig) -> list[Path]:
    """Feature entries and any stray files; the digest index is not an entry."""
    return sorted(
        p for p in Path(cfg.cache_dir).rglob("*") if p.is_file() and p.name != DigestIndex.FILE
    )


def assert_no_temp_files(cfg: FeaturesConfig) -> None:
    for path in entries(cfg):
        assert path.suffix == ".npy" and not path.name.startswith("."), path


# ------------------------------------------------------------------------ keys
def test_file_digest_is_a_hash_of_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = os.urandom(3 * (1 << 20) + 17)  # several read chunks, ragged end
    path.write_bytes(data)
    assert file_digest(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert file_digest(path) != hashlib.sha256(data).hexdigest()


def test_cache_key_covers_only_what_changes_features(tmp_path: Path) -> None:
    base = config(tmp_path, extractors=["mfcc", "mel"])
    key = cache_key("d" * 40, base, SR)

    def same(**fields) -> bool:
        return cache_key("d" * 40, base.model_copy(update=fields), SR) == key

    assert same(mode="pooled", pooling=["max"], cache_dir="elsewhere", workers=7)
    assert same(chroma=base.chroma.model_copy(update={"n_chroma": 24}))  # not chosen
    assert not same(extractors=["mel", "mfcc"])
    assert not same(mfcc=base.mfcc.model_copy(update={"n_mfcc": 20}))
    assert not same(mel=base.mel.model_copy(update={"fmin": 50.0}))
    assert not same(frame=base.frame.model_copy(update={"hop_length": 80}))
    assert cache_key("e" * 40, base, SR) != key
    assert cache_key("d" * 40, base, 22050) != key


def test_trimming_is_in_the_key_only_when_set(tmp_path: Path) -> None:
    cfg = config(tmp_path, extractors=["mfcc", "mel"])
    key = cache_key("d" * 40, cfg, SR)
    # The key from before trim_db existed (EXTRACTOR_VERSION "1"): untrimmed caches stay valid.
    assert key == "a7311f57601522b2cc96c6f150de2b5a661339d4f9de502471706bc3215dba25"
    assert cache_key("d" * 40, cfg.model_copy(update={"trim_db": None}), SR) == key
    at_30 = cache_key("d" * 40, cfg.model_copy(update={"trim_db": 30.0}), SR)
    assert at_30 != key
    assert cache_key("d" * 40, cfg.model_copy(update={"trim_db": 40.0}), SR) not in (key, at_30)
    assert cache_key("d" * 40, cfg.model_copy(update={"speech_span": None}), SR) == key
    spanned = cache_key("d" * 40, cfg.model_copy(update={"speech_span": 0.15}), SR)
    assert spanned not in (key, at_30)
    foreground = cfg.model_copy(update={"speech_span": 0.15, "speech_span_foreground_db": 16.0})
    assert cache_key("d" * 40, foreground, SR) not in (key, at_30, spanned)


def test_cache_key_includes_extractor_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path)
    key = cache_key("d" * 40, cfg, SR)
    monkeypatch.setattr(cache_module, "EXTRACTOR_VERSION", "next")
    assert cache_key("d" * 40, cfg, SR) != key


# ---------------------------------------------------------------- FeatureCache
def test_put_get_round_trip_and_sharding(tmp_path: Path) -> None:
    store = FeatureCache(tmp_path / "new" / "cache")  # created on demand
    key = "ab" + "0" * 38
    assert store.get(key) is None
    array = np.arange(12, dtype=np.float32).reshape(4, 3)
    store.put(key, array)
    assert store.path_for(key) == tmp_path / "new" / "cache" / "ab" / f"{key}.npy"
    np.testing.assert_array_equal(store.get(key, dims=3), array)
    assert store.get(key).dtype == np.float32


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[:-5]),  # truncated
        lambda p: p.write_bytes(p.read_bytes() + b"x"),  # trailing bytes
        lambda p: p.write_bytes(b"not an npy file"),
        lambda p: np.save(p, np.zeros((2, 2), np.float64)),  # wrong dtype
        lambda p: np.save(p, np.full((2, 3), np.nan, np.float32)),
    ],
    ids=["truncated", "trailing", "garbage", "float64", "nan"],
)
def test_corrupt_entry_is_deleted_with_a_warning(tmp_path: Path, damage) -> None:
    store = FeatureCache(tmp_path)
    key = "cd" * 20
    store.put(key, np.ones((5, 3), np.float32))
    damage(store.path_for(key))
    with pytest.warns(RuntimeWarning, match="corrupt cache entry"):
        assert store.get(key) is None
    assert not store.path_for(key).exists()


def test_wrong_width_is_corrupt(tmp_path: Path) -> None:
    lines: list[str] = []
    store = FeatureCache(tmp_path, log=lines.append)
    store.put("ef" * 20, np.ones((5, 3), np.float32))
    assert store.get("ef" * 20, dims=4) is None
    assert "expected 4 feature columns" in lines[0]


def test_failed_put_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FeatureCache(tmp_path)

    def broken_save(file, *args, **kwargs):
        file.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(OSError):
        store.put("12" * 20, np.ones((2, 2), np.float32))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_unwritable_cache_root_is_a_clear_error(tmp_path: Path, wavs: list[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = config(tmp_path, cache_dir=str(blocker / "cache"))
    with pytest.raises(CacheError, match="a-file/cache"):
        extract_all(wavs, cfg, SR, workers=1, progress=False)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_cache_root_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    try:
        with pytest.raises(CacheError, match="not writable"):
            FeatureCache(root)
    finally:
        root.chmod(0o700)


# ----------------------------------------------------------------- extract_all
def test_second_run_is_all_hits_with_identical_arrays(tmp_path: Path, wavs: list[str]) -> None:
    cfg = config(tmp_path, extractors=["mfcc", "chroma"])
    first, report, lines = run(wavs, cfg)
    assert (report.total, report.hits, report.extracted, report.failed) == (4, 0, 4, [])
    assert list(first) == wavs and lines == []
    for path, array in first.items():
        assert array.dtype == np.float32 and array.shape == (31, 52)
        np.testing.assert_array_equal(array, extract_features(load_audio(path, SR), SR, cfg))

    second, report, _ = run(wavs, cfg)
    assert (report.hits, report.extracted) == (4, 0)
    for path in wavs:
        np.testing.assert_array_equal(second[path], first[path])
    assert len(entries(cfg)) == 4
    assert_no_temp_files(cfg)


def test_config_changes_that_matter_miss_and_others_hit(tmp_path: Path, wavs: list[str]) -> None:
    cfg = config(tmp_path)
    run(wavs, cfg)
    _, report, _ = run(wavs, config(tmp_path, mfcc={"n_mfcc": 20}))
    assert (report.hits, report.extracted) == (0, 4)
    _, report, _ = run(wavs, config(tmp_path, chroma={"n_chroma": 24}))  # chroma not chosen
    assert (report.hits, report.extracted) == (4, 0)
    _, report, _ = run(wavs, config(tmp_path, mode="pooled", pooling=["max"]))
    assert (report.hits, report.extracted) == (4, 0)


def test_trimmed_features_are_cached_apart_from_untrimmed(tmp_path: Path) -> None:
    folder = tmp_path / "audio"
    folder.mkdir()
    paths = []
    for i in range(2):  # half a second of silence either side of a tone
        t = np.arange(SR // 2) / SR
        core = 0.5 * np.sin(2 * np.pi * 300 * (i + 1) * t)
        wave = np.concatenate([np.zeros(SR // 2), core, np.zeros(SR // 2)])
        sf.write(folder / f"{i}.wav", wave, SR, subtype="PCM_16")
        paths.append(str(folder / f"{i}.wav"))
    whole, _, _ = run(paths, config(tmp_path))
    trimmed, report, _ = run(paths, config(tmp_path, trim_db=30))
    assert (report.hits, report.extracted) == (0, 2)
    for path in paths:
        assert trimmed[path].shape[0] < 0.4 * whole[path].shape[0]
        expected = extract_features(load_audio(path, SR), SR, config(tmp_path, trim_db=30))
        np.testing.assert_allclose(trimmed[path], expected, rtol=1e-5, atol=1e-4)  # BLAS threads
    _, report, _ = run(paths, config(tmp_path))
    assert report.hits == 2


def test_changed_audio_at_the_same_path_misses(tmp_path: Path, wavs: list[str]) -> None:
    cfg = config(tmp_path)
    before, _, _ = run(wavs, cfg)
    write_tone(Path(wavs[0]), 3000.0)
    after, report, _ = run(wavs, cfg)
    assert (report.hits, report.extracted) == (3, 1)
    assert not np.array_equal(before[wavs[0]], after[wavs[0]])


def test_corrupt_entry_is_recomputed(tmp_path: Path, wavs: list[str]) -> None:
    cfg = config(tmp_path)
    before, _, _ = run(wavs, cfg)
    victim = Path(entries(cfg)[0])
    victim.write_bytes(victim.read_bytes()[:100])
    after, report, lines = run(wavs, cfg)
    assert (report.hits, report.extracted, report.failed) == (3, 1, [])
    assert any("corrupt cache entry" in line and victim.name in line for line in lines)
    for path in wavs:
        np.testing.assert_array_equal(after[path], before[path])
    _, report, _ = run(wavs, cfg)
    assert report.hits == 4


def test_bad_files_are_reported_and_skipped(tmp_path: Path, wavs: list[str]) -> None:
    folder = Path(wavs[0]).parent
    (folder / "empty.wav").write_bytes(b"")
    (folder / "notes.wav").write_text("this is not audio\n")
    sf.write(folder / "zero.wav", np.zeros((0,), np.float32), SR)
    bad = [str(folder / name) for name in ("empty.wav", "notes.wav", "zero.wav", "missing.wav")]
    paths = [wavs[0], *bad, *wavs[1:]]
    cfg = config(tmp_path)

    features, report, lines = run(paths, cfg)
    assert list(features) == wavs
    assert (report.total, report.extracted) == (8, 4)
    assert [path for path, _ in report.failed] == bad
    assert all(reason and not reason.startswith(path) for path, reason in report.failed)
    for path in bad:
        assert any(line.startswith(f"warning: skipped {path}: ") for line in lines)
    assert report.summary().startswith("features: 8 files, 0 cache hits, 4 extracted, 4 failed (")

    _, report, _ = run(paths, cfg)
    assert (report.hits, report.extracted, len(report.failed)) == (4, 0, 4)
    assert_no_temp_files(cfg)


def test_unusable_config_fails_once_before_extracting(tmp_path: Path, wavs: list[str]) -> None:
    # at 8 kHz the default contrast bands (200 Hz * 2**5 = 6.4 kHz) pass Nyquist
    cfg = config(tmp_path, extractors=["contrast"])
    with pytest.raises(ConfigError, match="8000 Hz"):
        extract_all(wavs, cfg, 8000, workers=1, progress=False, log=pytest.fail)


def test_duplicate_paths_are_extracted_once(tmp_path: Path, wavs: list[str]) -> None:
    features, report, _ = run([wavs[0], wavs[1], wavs[0]], config(tmp_path))
    assert list(features) == wavs[:2] and report.total == 2


def test_parallel_workers_match_one_process(
    tmp_path: Path, wavs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module, "_MIN_FILES_PER_WORKER", 1)  # use the pool for 5 files
    folder = Path(wavs[0]).parent
    (folder / "bad.wav").write_bytes(b"RIFF....")
    paths = [*wavs, str(folder / "bad.wav")]
    serial, _, _ = run(paths, config(tmp_path / "a"), workers=1)
    cfg = config(tmp_path / "b")
    parallel, report, lines = run(paths, cfg, workers=2)
    assert (report.extracted, [p for p, _ in report.failed]) == (4, [paths[-1]])
    assert any("bad.wav" in line for line in lines)
    assert list(parallel) == list(serial) == wavs
    for path in wavs:
        np.testing.assert_array_equal(parallel[path], serial[path])
    assert len(entries(cfg)) == 4
    assert_no_temp_files(cfg)


@pytest.mark.parametrize("loaded", [None, "tensorflow", "onnxruntime", "torch"])
def test_workers_fork_only_from_a_process_without_threaded_runtimes(
    monkeypatch: pytest.MonkeyPatch, loaded: str | None
) -> None:
    for name in cache_module._FORK_UNSAFE_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    if loaded:
        monkeypatch.setitem(sys.modules, loaded, types.ModuleType(loaded))
    expected = "fork" if loaded is None and sys.platform.startswith("linux") else "spawn"
    assert cache_module._worker_context().get_start_method() == expected


# Runs ``ser train`` (args after -c) with ``_worker_context`` recording how each pool
# of extraction workers started and whether TensorFlow was loaded by then.
_RECORD_WORKER_STARTS = """
import sys
import ser.features.cache as cache
real, starts = cache._worker_context, []
def recorded():
    context = real()
    starts.append((context.get_start_method(), "tensorflow" in sys.modules))
    return context
cache._worker_context = recorded
from ser.cli import main
code = main(["train", *sys.argv[1:]])
print("worker starts:", starts)
sys.exit(code)
"""


def test_ser_train_extracts_once_in_forked_workers_before_tensorflow(tmp_path: Path) -> None:
    make_emodb(tmp_path / "corpora")  # 35 clips: enough for two workers
    sets = tiny_overrides(tmp_path / "corpora", tmp_path, corpora="[emodb]")
    sets = [s for s in sets if not s.startswith("features.workers=")] + ["features.workers=2"]
    proc = subprocess.run(
        [sys.executable, "-c", _RECORD_WORKER_STARTS, "--config", "base.yaml"]
        + [arg for s in sets for arg in ("--set", s)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "worker starts: [('fork', False)]" in proc.stdout, proc.stdout[-3000:]
    assert proc.stdout.count("features: 35 files, 0 cache hits, 35 extracted") == 1
    # Training uses the features extracted before TensorFlow's import: no second read.
    assert "35 cache hits" not in proc.stdout, proc.stdout[-3000:]


def test_report_summary() -> None:
    report = ExtractionReport(total=4535, hits=4535, extracted=0, failed=[], seconds=1.23)
    expected = "features: 4535 files, 4535 cache hits, 0 extracted, 0 failed (1.2 s)"
    assert report.summary() == expected


def test_digest_index_skips_rehashing_unchanged_files_and_notices_changes(tmp_path: Path) -> None:
    audio = tmp_path / "a.bin"
    audio.write_bytes(b"one")
    index = DigestIndex(tmp_path)
    first = index.digest(str(audio))
    index.save()
    again = DigestIndex(tmp_path)
    assert again.digest(str(audio)) == first and not again.changed
    audio.write_bytes(b"two!")  # new size and mtime
    assert again.digest(str(audio)) == hashlib.sha256(b"two!").hexdigest()
    (tmp_path / DigestIndex.FILE).write_text("{not json")
    assert DigestIndex(tmp_path).entries == {}


def test_fast_npy_reader_matches_numpy_and_falls_back(tmp_path: Path) -> None:
    import io

    from ser.features.cache import _read_float32_npy

    a = np.random.default_rng(0).normal(size=(37, 5)).astype(np.float32)
    for array in (a, np.asfortranarray(a), a.astype(np.float64)):
        buf = io.BytesIO()
        np.save(buf, array)
        buf.seek(0)
        out = _read_float32_npy(buf)
        np.testing.assert_array_equal(out, array)
        assert out.dtype == array.dtype and buf.read(1) == b""
    buf = io.BytesIO()
    np.save(buf, a)
    with pytest.raises(EOFError):
        _read_float32_npy(io.BytesIO(buf.getvalue()[:-4]))


def test_a_revised_extractor_changes_only_its_own_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EXTRACTOR_REVISIONS: entries of configs with the revised extractor get new keys;
    entries of every other config keep theirs (so their caches stay valid)."""
    with_prosody = config(tmp_path, extractors=["mfcc", "prosody"])
    without = config(tmp_path, extractors=["mfcc", "mel"])
    keys = cache_key("d" * 40, with_prosody, SR), cache_key("d" * 40, without, SR)
    monkeypatch.setitem(cache_module.EXTRACTOR_REVISIONS, "prosody", 99)
    assert cache_key("d" * 40, with_prosody, SR) != keys[0]
    assert cache_key("d" * 40, without, SR) == keys[1]
