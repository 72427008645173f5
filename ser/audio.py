"""Audio decoding, the one place: a file or uploaded bytes -> float32 mono at a rate.

``decode`` and ``load_audio`` read any format soundfile reads (WAV, FLAC, OGG, MP3,
AIFF, ...) in-process, mix to mono, resample to the asked rate and validate the
result; training, evaluation and the corpus readers load audio through them only.
Containers soundfile cannot open (m4a, aac, webm, ...) go through ``ffmpeg`` when it
is installed (``ffmpeg_path``): ``load_any_audio`` is soundfile first, then ffmpeg,
for files (``ser data convert``); ``decode_file_with_ffmpeg`` decodes a local file
and ``decode_bytes_with_ffmpeg`` decodes bytes held in memory (uploads to the HTTP
service, ``ser predict``'s fallback) with ffmpeg kept to pipes and audio demuxers.
Every failure is an ``AudioError`` whose message names the file and the reason, so
callers can skip a bad file with a useful warning. ``to_mono`` and ``resample`` are
the pure steps around them.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import soundfile as sf


class AudioError(ValueError):
    """An unreadable or unusable audio file; the message names the file and why."""


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _name(source: str | os.PathLike[str] | IO[bytes]) -> str:
    return (
        str(source)
        if isinstance(source, (str, os.PathLike))
        else getattr(source, "name", "<upload>")
    )


def audio_info(path: str | os.PathLike[str]) -> AudioInfo:
    """Header facts of an audio file without decoding it."""
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for non-audio
        raise AudioError(f"{path}: not readable as audio ({_reason(exc, path)})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    return AudioInfo(info.samplerate, info.channels, info.frames, info.format, info.subtype)


def _reason(exc: Exception, source: object = None) -> str:
    if isinstance(source, (str, os.PathLike)):
        try:  # libsndfile says only "System error" when the OS refused the file
            with open(source, "rb"):
                pass
        except OSError as refused:
            return refused.strerror or str(refused)
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return text.replace("Error opening", "cannot open")[:200]


def to_mono(wave: np.ndarray) -> np.ndarray:
    """[samples] or [samples, channels] -> float32 [samples] (channel mean)."""
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    return np.ascontiguousarray(wave, dtype=np.float32)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling (soxr through librosa); a no-op when the rates match."""
    if orig_sr == target_sr:
        return wave
    import librosa  # deferred: importing librosa costs ~1 s

    return librosa.resample(wave, orig_sr=orig_sr, target_sr=target_sr).astype(np.float32)


def decode(
    source: str | os.PathLike[str] | IO[bytes], sample_rate: int, min_samples: int = 1
) -> np.ndarray:
    """Read ``source`` (a path or a binary file object) to float32 mono at ``sample_rate``."""
    name = _name(source)
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        raise AudioError(f"{name}: is a directory, not an audio file")
    try:
        wave, sr = sf.read(source, dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(f"{name}: not readable as audio ({_reason(exc, source)})") from None
    if wave.shape[0] == 0:
        raise AudioError(f"{name}: empty audio (0 samples)")
    if not np.isfinite(wave).all():
        raise AudioError(f"{name}: contains NaN or infinite samples")
    mono = to_mono(wave)
    if np.isfinite(mono).all():
        mono = resample(mono, int(sr), sample_rate)
    if not np.isfinite(mono).all():  # float samples near the float32 limit overflow
        raise AudioError(
            f"{name}: samples up to {float(np.abs(wave).max()):.3g} overflow when mixed to "
            "mono or resampled (audio is expected within about [-1, 1])"
        )
    if mono.shape[0] < min_samples:
        raise AudioError(
            f"{name}: too short ({mono.shape[0]} samples at {sample_rate} Hz, need {min_samples})"
        )
    return mono


def load_audio(path: str | os.PathLike[str], sample_rate: int, min_samples: int = 1) -> np.ndarray:
    """float32 mono waveform of ``path`` at ``sample_rate`` Hz, in [-1, 1] for PCM input."""
    return decode(path, sample_rate, min_samples)


# ---------------------------------------------------------------- MP3, in-process
# The bit rates (kbit/s) MP3 can carry, by the MPEG version a sample rate implies:
# MPEG-1 from 32 kHz, MPEG-2 from 16 kHz, MPEG-2.5 below.
MP3_KBPS_RANGES = ((32000, (32.0, 320.0)), (16000, (8.0, 160.0)), (0, (8.0, 64.0)))


@functools.cache  # asked for every MP3 copy; the library does not change in a process
def mp3_in_process() -> bool:
    """Whether soundfile's libsndfile writes MP3 (1.1 and later, as its wheels ship it),
    so an MP3 round trip needs no ffmpeg: the one check of it."""
    return "MP3" in sf.available_formats()


def encode_mp3(wave: np.ndarray, sample_rate: int, kbps: float) -> bytes:
    """float32 mono ``wave`` at ``sample_rate`` as constant-bit-rate MP3 of about ``kbps``
    kbit/s, encoded in memory by libsndfile's LAME (``mp3_in_process``).

    libsndfile takes a compression level in [0, 1] that it maps linearly onto the bit
    rates of the MPEG version of the sample rate (``MP3_KBPS_RANGES``), highest first;
    LAME then takes the nearest rate it has, as ffmpeg's ``-b:a KBPSk`` does. A rate
    beyond the version's range gives its nearest end. Raises ``AudioError`` with
    libsndfile's reason (e.g. a sample rate MP3 does not have).
    """
    low, high = next(span for floor, span in MP3_KBPS_RANGES if sample_rate >= floor)
    # + 0.5: libsndfile truncates the rate it computes to whole kbit/s.
    # Clamped to the range's ends; a level of exactly 1 is refused, so its lowest rate
    # is asked for as low + 0.5, like every other rate.
    level = (high - (float(kbps) + 0.5)) / (high - low)
    level = min(max(level, 0.0), (high - low - 0.5) / (high - low))
    out = io.BytesIO()
    try:
        sf.write(
            out,
            np.clip(np.asarray(wave, np.float32), -1.0, 1.0),
            sample_rate,
            format="MP3",
            subtype="MPEG_LAYER_III",
            compression_level=level,
            bitrate_mode="CONSTANT",
        )
    except Exception as exc:
        raise AudioError(f"MP3 at {sample_rate} Hz, {kbps:g} kbit/s: {_reason(exc)}") from None
    return out.getvalue()


# ---------------------------------------------------------------- ffmpeg, for containers
# Containers libsndfile does not read; only ffmpeg decodes them.
FFMPEG_EXTENSIONS = frozenset(
    {
        ".m4a",
        ".aac",
        ".mp4",
        ".webm",
        ".weba",
        ".mka",
        ".mkv",
        ".mov",
        ".3gp",
        ".3gpp",
        ".amr",
        ".wma",
        ".ac3",
    }
)
FFMPEG_INSTALL = (
    "install ffmpeg (Debian/Ubuntu: apt-get install ffmpeg; macOS: brew install ffmpeg; "
    "Windows: winget install ffmpeg) and run the command again"
)
# Demuxers ffmpeg may pick for bytes from elsewhere (names as `ffmpeg -demuxers` prints
# them): an uploaded playlist must not make it open files or URLs.
FFMPEG_DEMUXERS = "matroska,webm,ogg,mov,mp4,m4a,mp3,aac,wav,flac,aiff,caf"
FFMPEG_BYTES_TIMEOUT = 60.0  # seconds; bytes are at most an upload or one file
FFMPEG_FILE_TIMEOUT = 600.0  # seconds; a local file may be a long recording


def ffmpeg_path() -> str | None:
    """The ffmpeg executable on PATH, or None: the one check of whether ffmpeg is there."""
    return shutil.which("ffmpeg")


def _run_ffmpeg(
    arguments: list[str], data: bytes | None, timeout: float
) -> subprocess.CompletedProcess[bytes]:
    """ffmpeg (quiet, no prompts) with ``arguments``; ``data`` on its stdin.

    Returns the ``subprocess.CompletedProcess``; raises ``OSError`` when ffmpeg
    cannot start and ``subprocess.TimeoutExpired`` after ``timeout`` seconds.
    """
    command = [ffmpeg_path() or "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]
    return subprocess.run(
        command + arguments, input=data, capture_output=True, timeout=timeout, check=False
    )


def _last_line(stderr: bytes) -> str | None:
    """ffmpeg's last non-blank line of error output (its reason), or None when silent."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line]
    return lines[-1][:200] if lines else None


def _f32_samples(stdout: bytes) -> np.ndarray:
    """float32 [samples] from ffmpeg's raw little-endian float output (a torn tail dropped)."""
    usable = len(stdout) - len(stdout) % 4
    return np.frombuffer(stdout[:usable], dtype="<f4").astype(np.float32)


def decode_bytes_with_ffmpeg(data: bytes, sample_rate: int, max_seconds: float) -> np.ndarray:
    """float32 mono [samples] at ``sample_rate`` from any container ffmpeg reads, in memory.

    ffmpeg reads only its stdin and only audio container formats, and decodes a
    little past ``max_seconds``: enough to tell that a clip is too long. The result
    may be empty or hold non-finite samples; callers check. Raises ``AudioError``
    with ffmpeg's reason (no file name: the caller names the bytes).
    """
    arguments = [
        "-protocol_whitelist",
        "pipe",
        "-format_whitelist",
        FFMPEG_DEMUXERS,
        "-i",
        "pipe:0",
        "-t",
        f"{max_seconds + 0.5:.3f}",
        "-vn",
        "-ac",
        "1",
        "-ar",
        str(sample_rate),
        "-f",
        "f32le",
        "pipe:1",
    ]
    try:
        done = _run_ffmpeg(arguments, data, FFMPEG_BYTES_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AudioError(f"ffmpeg did not finish within {FFMPEG_BYTES_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise AudioError(_last_line(done.stderr) or "no output")
    return _f32_samples(done.stdout)


def encode_with_ffmpeg(wave: np.ndarray, sample_rate: int, codec_arguments: list[str]) -> bytes:
    """float32 mono ``wave`` at ``sample_rate`` encoded by ffmpeg with ``codec_arguments``
    (e.g. ``["-c:a", "libmp3lame", "-b:a", "32k", "-f", "mp3"]``), in memory.

    Raises ``AudioError`` with ffmpeg's reason when it is missing or refuses.
    """
    if ffmpeg_path() is None:
        raise AudioError(f"ffmpeg is needed to encode audio: {FFMPEG_INSTALL}")
    pcm = np.ascontiguousarray(wave, dtype="<f4").tobytes()
    arguments = ["-f", "f32le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0"]
    try:
        done = _run_ffmpeg([*arguments, *codec_arguments, "pipe:1"], pcm, FFMPEG_BYTES_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AudioError(f"ffmpeg did not finish within {FFMPEG_BYTES_TIMEOUT:.0f} s") from None
    if done.returncode != 0 or not done.stdout:
        raise AudioError(_last_line(done.stderr) or "no output")
    return done.stdout


def decode_file_with_ffmpeg(path: str | os.PathLike[str], sample_rate: int) -> np.ndarray:
    """float32 mono [samples] at ``sample_rate`` of the first audio stream of ``path``.

    Raises ``AudioError`` naming the file: ffmpeg missing or stuck, its reason for
    refusing the file, no samples, or NaN/infinite samples.
    """
    arguments = [
        "-i",
        str(path),
        "-map",
        "0:a:0",
        "-ac",
        "1",
        "-ar",
        str(sample_rate),
        "-f",
        "f32le",
        "-acodec",
        "pcm_f32le",
        "-",
    ]
    try:
        done = _run_ffmpeg(arguments, None, FFMPEG_FILE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AudioError(f"{path}: ffmpeg could not run ({exc})") from None
    if done.returncode != 0:
        reason = _last_line(done.stderr) or f"exit code {done.returncode}"
        raise AudioError(f"{path}: not readable as audio (ffmpeg: {reason})")
    wave = _f32_samples(done.stdout)
    if wave.size == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    if not np.isfinite(wave).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    return wave


def load_any_audio(path: str | os.PathLike[str], sample_rate: int) -> np.ndarray:
    """float32 mono [samples] at ``sample_rate`` Hz from any format soundfile or ffmpeg reads.

    Soundfile first (as ``load_audio``); a container only ffmpeg reads, or a file
    soundfile refuses (a WAV with a codec libsndfile lacks, a misnamed container),
    goes through ffmpeg when it is installed. Raises ``AudioError`` naming the file
    and the reason (including "needs ffmpeg"); when both decoders refuse a file
    that is not a known container, the reason is soundfile's.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    if path.suffix.lower() in FFMPEG_EXTENSIONS:
        if ffmpeg_path() is None:
            raise AudioError(
                f"{path}: {path.suffix.lower()} files need ffmpeg, which is not installed; "
                + FFMPEG_INSTALL
            )
        return decode_file_with_ffmpeg(path, sample_rate)
    try:
        return decode(path, sample_rate)
    except AudioError as first:
        # ffmpeg would only find the same emptiness or the same NaNs.
        if ffmpeg_path() is None or "empty audio" in str(first) or "NaN" in str(first):
            raise
        try:
            return decode_file_with_ffmpeg(path, sample_rate)
        except AudioError:
            raise first from None
