"""``ser data convert`` on tiny generated recordings (ffmpeg tests skip without ffmpeg)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser import audio
from ser.cli import main
from ser.datatools import DataToolError
from ser.datatools.convert import convert
from tests.support.fakes import write_bytes, write_empty_wav, write_tone

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None,
    reason="ffmpeg is not installed (apt-get install ffmpeg); m4a/aac need it",
)


def run(sources, to, rate=16000, **kw):
    lines: list[str] = []
    report = convert(
        [str(s) for s in sources], to, rate, progress=False, log=lines.append, workers=2, **kw
    )
    return report, lines


def peak_hz(wave: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[np.argmax(spectrum)])


def assert_wav(path: Path, rate: int = 16000) -> np.ndarray:
    info = sf.info(str(path))
    assert (info.format, info.subtype, info.channels, info.samplerate) == (
        "WAV",
        "PCM_16",
        1,
        rate,
    )
    wave, _ = sf.read(str(path), dtype="float32")
    return wave


@pytest.fixture
def no_ffmpeg(monkeypatch):
    monkeypatch.setattr(audio, "ffmpeg_path", lambda: None)


def test_stereo_44k_float_becomes_mono_16bit_16k_keeping_name_and_pitch(tmp_path):
    src = write_tone(
        tmp_path / "in" / "phone take.wav",
        seconds=1.0,
        sr=44100,
        channels=2,
        subtype="FLOAT",
        hz=440.0,
        noise=0.0,
    )
    report, _ = run([src], tmp_path / "out")
    out = tmp_path / "out" / "phone take.wav"
    assert report.converted == [(str(src), str(out))] and report.failed == []
    wave = assert_wav(out)
    assert len(wave) == 16000
    assert abs(peak_hz(wave, 16000) - 440.0) < 2.0
    assert np.max(np.abs(wave)) == pytest.approx(0.3, abs=0.01)  # level kept, not normalised


def test_mp3_written_by_soundfile_needs_no_ffmpeg(tmp_path, no_ffmpeg):
    src = write_tone(tmp_path / "voice.mp3", seconds=1.0, sr=44100, channels=2, hz=330.0, noise=0)
    report, _ = run([src], tmp_path / "out", rate=22050)
    wave = assert_wav(tmp_path / "out" / "voice.wav", 22050)
    assert report.failed == [] and abs(len(wave) - 22050) < 2500  # mp3 adds codec padding
    assert abs(peak_hz(wave, 22050) - 330.0) < 3.0


def test_folders_keep_their_layout_and_non_audio_is_ignored(tmp_path):
    src = tmp_path / "phone"
    write_tone(src / "alice" / "a.flac")
    write_tone(src / "bob" / "b.ogg", sr=48000)
    write_bytes(src / "notes.txt", b"recorded in the kitchen")
    write_tone(src / ".hidden" / "c.wav")
    report, _ = run([src], tmp_path / "out")
    assert sorted(
        Path(o).relative_to(tmp_path / "out").as_posix() for _, o in report.converted
    ) == [
        "alice/a.wav",
        "bob/b.wav",
    ]
    assert report.ignored == 1 and report.failed == []


def test_symlinked_sub_folders_are_converted_once(tmp_path):
    write_tone(tmp_path / "elsewhere" / "carol" / "c.wav")
    src = tmp_path / "phone"
    write_tone(src / "alice" / "a.flac")
    (src / "carol").symlink_to(tmp_path / "elsewhere" / "carol")
    (src / "alice" / "loop").symlink_to(src)  # a link back up is not walked again
    report, _ = run([src], tmp_path / "out")
    converted = sorted(
        Path(o).relative_to(tmp_path / "out").as_posix() for _, o in report.converted
    )
    assert converted == ["alice/a.wav", "carol/c.wav"] and report.failed == []


def test_second_run_skips_converted_files_and_redoes_changed_ones(tmp_path):
    a = write_tone(tmp_path / "in" / "a.flac", sr=48000)
    b = write_tone(tmp_path / "in" / "b.flac", sr=48000)
    first, _ = run([tmp_path / "in"], tmp_path / "out")
    assert len(first.converted) == 2
    second, _ = run([tmp_path / "in"], tmp_path / "out")
    assert second.converted == [] and len(second.skipped) == 2
    # A source re-recorded after its conversion is converted again.
    earlier = b.stat().st_mtime_ns - 10**9  # the output predates the source's last change
    os.utime(tmp_path / "out" / "b.wav", ns=(earlier, earlier))
    third, _ = run([tmp_path / "in"], tmp_path / "out")
    assert third.converted == [(str(b), str(tmp_path / "out" / "b.wav"))]
    assert third.skipped == [(str(a), str(tmp_path / "out" / "a.wav"))]
    # A half-written output (e.g. from a crash) is not mistaken for a finished one.
    write_bytes(tmp_path / "out" / "a.wav", b"RIFF")
    fourth, _ = run([tmp_path / "in"], tmp_path / "out")
    assert [s for s, _ in fourth.converted] == [str(a)]


def test_output_folder_inside_the_source_folder_is_not_read_back(tmp_path):
    write_tone(tmp_path / "in" / "a.mp3", sr=44100)
    write_tone(tmp_path / "in" / "sub" / "b.flac")
    first, _ = run([tmp_path / "in"], tmp_path / "in" / "converted")
    second, _ = run([tmp_path / "in"], tmp_path / "in" / "converted")
    assert len(first.converted) == 2 and first.failed == []
    assert second.converted == [] and len(second.skipped) == 2 and second.failed == []


def test_bad_files_are_named_with_reasons_and_the_rest_converts(tmp_path, capsys):
    good = write_tone(tmp_path / "in" / "good.wav")
    write_bytes(tmp_path / "in" / "text.wav", b"not audio at all")
    write_empty_wav(tmp_path / "in" / "empty.wav")
    report, lines = run([tmp_path / "in", tmp_path / "missing.mp3"], tmp_path / "out")
    assert report.converted == [(str(good), str(tmp_path / "out" / "good.wav"))]
    reasons = dict(report.failed)
    assert reasons[str(tmp_path / "missing.mp3")] == "no such file or folder"
    assert reasons[str(tmp_path / "in" / "empty.wav")] == "empty audio (0 samples)"
    assert reasons[str(tmp_path / "in" / "text.wav")].startswith("not readable as audio")
    assert any(
        line.startswith(f"warning: skipped {tmp_path / 'in' / 'text.wav'}:") for line in lines
    )
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind

    # CLI: something usable -> 0; nothing usable -> 1; no audio at all -> 2.
    assert main(["data", "convert", str(tmp_path / "in"), "--to", str(tmp_path / "o2")]) == 0
    assert "1 converted" in capsys.readouterr().out
    bad = tmp_path / "in" / "text.wav"
    assert main(["data", "convert", str(bad), "--to", str(tmp_path / "o3")]) == 1
    write_bytes(tmp_path / "docs" / "readme.txt", b"x")
    assert main(["data", "convert", str(tmp_path / "docs"), "--to", str(tmp_path / "o4")]) == 2
    assert "no audio files found" in capsys.readouterr().err


def test_m4a_without_ffmpeg_says_to_install_it(tmp_path, no_ffmpeg):
    src = write_bytes(tmp_path / "memo.m4a", b"\x00\x00\x00\x20ftypM4A ")
    report, _ = run([src], tmp_path / "out")
    reason = dict(report.failed)[str(src)]
    assert ".m4a files need ffmpeg, which is not installed" in reason
    assert "apt-get install ffmpeg" in reason


@needs_ffmpeg
@pytest.mark.parametrize("ext, codec", [(".m4a", "aac"), (".webm", "libopus")])
def test_formats_soundfile_cannot_read_go_through_ffmpeg(tmp_path, ext, codec):
    wav = write_tone(tmp_path / "x.wav", seconds=1.0, sr=44100, channels=2, hz=440.0, noise=0)
    src = tmp_path / "in" / f"memo{ext}"
    src.parent.mkdir()
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a", codec, str(src)],
        check=True,
    )
    report, _ = run([src], tmp_path / "out")
    assert report.failed == []
    wave = assert_wav(tmp_path / "out" / "memo.wav")
    assert abs(len(wave) - 16000) < 1600 and abs(peak_hz(wave, 16000) - 440.0) < 3.0


def test_clashing_names_and_in_place_overwrites_are_refused(tmp_path):
    a = write_tone(tmp_path / "in" / "take.flac")
    b = write_tone(tmp_path / "in" / "take.ogg")
    report, _ = run([tmp_path / "in"], tmp_path / "out")
    assert [s for s, _ in report.converted] == [str(a)]
    assert "same output name as" in dict(report.failed)[str(b)]

    loud = write_tone(tmp_path / "own" / "x.wav", sr=44100, channels=2)
    before = loud.read_bytes()
    report, _ = run([tmp_path / "own"], tmp_path / "own")
    assert "would overwrite the input itself" in dict(report.failed)[str(loud)]
    assert loud.read_bytes() == before


def test_samples_beyond_full_scale_are_clipped_with_a_note(tmp_path):
    src = tmp_path / "hot.wav"
    sf.write(src, np.full((1600, 1), 1.5, np.float32), 16000, subtype="FLOAT")
    report, lines = run([src], tmp_path / "out")
    assert lines == [f"note: {src}: 1600 samples beyond full scale were clipped"]
    assert report.notes == [f"{src}: 1600 samples beyond full scale were clipped"]
    assert np.max(assert_wav(tmp_path / "out" / "hot.wav")) <= 1.0


def test_rate_outside_range_is_rejected(tmp_path):
    with pytest.raises(DataToolError, match="--rate 100"):
        run([write_tone(tmp_path / "a.wav")], tmp_path / "out", rate=100)
