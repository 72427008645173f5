"""``ser.audio``: soundfile first, ffmpeg for containers (ffmpeg tests skip without ffmpeg)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from ser import audio
from ser.audio import (
    AudioError,
    decode_bytes_with_ffmpeg,
    decode_file_with_ffmpeg,
    ffmpeg_path,
    load_any_audio,
    load_audio,
)
from tests.support.fakes import write_bytes, write_empty_wav, write_tone

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (apt-get install ffmpeg)"
)


@pytest.fixture
def no_ffmpeg(monkeypatch):
    monkeypatch.setattr(audio, "ffmpeg_path", lambda: None)


def peak_hz(wave: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[np.argmax(spectrum)])


def to_container(wav, out) -> bytes:
    """``wav`` re-encoded by ffmpeg into ``out`` (its extension picks the container)."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), str(out)], check=True
    )
    return out.read_bytes()


def test_ffmpeg_path_is_what_path_finds():
    assert ffmpeg_path() == shutil.which("ffmpeg")


def test_soundfile_formats_load_the_same_with_or_without_ffmpeg(tmp_path, no_ffmpeg):
    src = write_tone(tmp_path / "a.flac", seconds=0.5, sr=44100, channels=2, hz=440.0, noise=0)
    wave = load_any_audio(src, 16000)
    np.testing.assert_array_equal(wave, load_audio(src, 16000))
    assert wave.dtype == np.float32 and abs(peak_hz(wave, 16000) - 440.0) < 5.0


def test_missing_file_and_folder_are_named(tmp_path):
    with pytest.raises(AudioError, match=r"gone\.wav: no such file"):
        load_any_audio(tmp_path / "gone.wav", 16000)
    with pytest.raises(AudioError, match=r": not a file"):
        load_any_audio(tmp_path, 16000)


def test_container_without_ffmpeg_says_to_install_it(tmp_path, no_ffmpeg):
    src = write_bytes(tmp_path / "memo.webm", b"\x1a\x45\xdf\xa3 not really")
    with pytest.raises(AudioError, match=r"\.webm files need ffmpeg, which is not installed"):
        load_any_audio(src, 16000)


def test_empty_wav_is_not_retried_through_ffmpeg(tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "decode_file_with_ffmpeg", pytest.fail)
    with pytest.raises(AudioError, match=r"empty audio \(0 samples\)"):
        load_any_audio(write_empty_wav(tmp_path / "empty.wav"), 16000)


@needs_ffmpeg
def test_file_that_neither_decoder_reads_keeps_soundfiles_reason(tmp_path):
    src = write_bytes(tmp_path / "text.wav")
    with pytest.raises(AudioError) as by_soundfile:
        load_audio(src, 16000)
    with pytest.raises(AudioError) as by_either:
        load_any_audio(src, 16000)
    assert str(by_either.value) == str(by_soundfile.value)
    assert "Format not recognised" in str(by_either.value)


@needs_ffmpeg
def test_m4a_file_decodes_through_ffmpeg_to_mono_at_the_rate(tmp_path):
    wav = write_tone(tmp_path / "x.wav", seconds=1.0, sr=44100, channels=2, hz=440.0, noise=0)
    to_container(wav, tmp_path / "memo.m4a")
    for wave in (
        decode_file_with_ffmpeg(tmp_path / "memo.m4a", 16000),
        load_any_audio(tmp_path / "memo.m4a", 16000),
    ):
        assert wave.dtype == np.float32 and wave.ndim == 1
        assert abs(len(wave) - 16000) < 1600 and abs(peak_hz(wave, 16000) - 440.0) < 3.0


@needs_ffmpeg
def test_damaged_file_through_ffmpeg_names_it_and_gives_ffmpegs_reason(tmp_path):
    src = write_bytes(tmp_path / "broken.m4a", b"\x00\x00\x00\x20ftypM4A garbage" * 3)
    for decoder in (decode_file_with_ffmpeg, load_any_audio):
        with pytest.raises(AudioError, match=r"broken\.m4a: not readable as audio \(ffmpeg: .+\)"):
            decoder(src, 16000)


@needs_ffmpeg
def test_webm_bytes_decode_in_memory(tmp_path):
    wav = write_tone(tmp_path / "x.wav", seconds=1.0, sr=48000, hz=330.0, noise=0)
    data = to_container(wav, tmp_path / "rec.webm")
    wave = decode_bytes_with_ffmpeg(data, 16000, max_seconds=30)
    assert wave.dtype == np.float32 and abs(len(wave) - 16000) < 1600
    assert abs(peak_hz(wave, 16000) - 330.0) < 3.0


@needs_ffmpeg
def test_bytes_decoding_stops_a_little_past_the_limit(tmp_path):
    wav = write_tone(tmp_path / "x.wav", seconds=5.0, sr=16000, noise=0)
    data = to_container(wav, tmp_path / "long.webm")
    wave = decode_bytes_with_ffmpeg(data, 16000, max_seconds=1.0)
    assert len(wave) <= int(1.6 * 16000)


@needs_ffmpeg
def test_bytes_that_are_a_playlist_are_refused_without_opening_files(tmp_path):
    secret = write_tone(tmp_path / "secret.wav")
    playlist = f"#EXTM3U\n#EXTINF:1,\n{secret}\n".encode()
    with pytest.raises(AudioError) as raised:
        decode_bytes_with_ffmpeg(playlist, 16000, max_seconds=30)
    assert str(secret) not in str(raised.value) and str(raised.value)
