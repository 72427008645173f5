"""Uploaded bytes -> float32 mono wave at the model's rate, or a client error.

What is HTTP-specific lives here: clip length limits, naming the upload in
messages, and mapping decoding failures to 415/422 (``UploadProblem``); decoding
itself is ``ser.audio``'s. Uploads are decoded from memory and the client's file
name is only ever echoed back as text: no path is ever built from it. (Starlette's
form parser keeps a part over 1 MB in an anonymous temporary file, unlinked when
created and closed after the request; nothing else touches the disk.) Formats
soundfile reads (WAV, FLAC, OGG Vorbis/Opus, MP3, AIFF, ...) decode in-process;
others (WebM/Opus from browsers' MediaRecorder, M4A) go through ``ffmpeg`` over
pipes when it is installed (``ser.audio.decode_bytes_with_ffmpeg``), limited to the
pipe protocol and to audio container demuxers so that an uploaded playlist cannot
make it open files or URLs.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from ser.audio import AudioError, decode, decode_bytes_with_ffmpeg, ffmpeg_path

MIN_SECONDS = 0.1


@dataclass
class UploadProblem(Exception):
    """A client error: HTTP ``status`` and a message naming the ``field`` and the reason."""

    status: int
    field: str
    message: str

    def __str__(self) -> str:
        return self.message


def display_name(field: str, filename: str | None) -> str:
    """How messages name an upload: ``file 'clip.wav'`` (the name is text, never a path)."""
    if not filename:
        return field
    name = filename.replace("\r", " ").replace("\n", " ")
    return f"{field} {name[:200]!r}"


def decode_upload(
    data: bytes,
    filename: str | None,
    sample_rate: int,
    max_seconds: float,
    field: str = "file",
) -> np.ndarray:
    """Uploaded bytes -> float32 mono [samples] at ``sample_rate``.

    Raises ``UploadProblem``: 422 for empty, too short, too long or damaged audio,
    415 for bytes that no available decoder recognises as audio.
    """
    name = display_name(field, filename)
    if not data:
        raise UploadProblem(422, field, f"{name}: empty upload (0 bytes)")
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as exc:  # soundfile raises several types for non-audio
        wave = _decode_other(data, name, field, sample_rate, max_seconds, exc)
    else:
        if info.frames <= 0 or info.samplerate <= 0:
            raise UploadProblem(422, field, f"{name}: the audio holds no samples")
        _check_length(info.frames / info.samplerate, name, field, max_seconds)
        source = io.BytesIO(data)
        source.name = name  # used in ser.audio's messages only
        try:
            wave = decode(source, sample_rate)
        except AudioError as exc:
            raise UploadProblem(422, field, f"damaged audio: {exc}") from None
    if wave.shape[0] == 0:
        raise UploadProblem(422, field, f"{name}: the audio holds no samples")
    if not np.isfinite(wave).all():
        raise UploadProblem(422, field, f"{name}: contains NaN or infinite samples")
    _check_length(wave.shape[0] / sample_rate, name, field, max_seconds)
    return wave


def _check_length(seconds: float, name: str, field: str, max_seconds: float) -> None:
    if seconds > max_seconds:
        raise UploadProblem(
            422,
            field,
            f"{name}: clip is {seconds:.1f} s long; this server accepts at most "
            f"{max_seconds:g} s (setting max_clip_seconds)",
        )
    if seconds < MIN_SECONDS:
        raise UploadProblem(
            422,
            field,
            f"{name}: clip is {seconds * 1000:.0f} ms long; need at least "
            f"{MIN_SECONDS * 1000:.0f} ms of audio",
        )


def _decode_other(
    data: bytes, name: str, field: str, sample_rate: int, max_seconds: float, first: Exception
) -> np.ndarray:
    reason = str(first).strip().splitlines()[-1] if str(first).strip() else type(first).__name__
    reason = re.sub(r"^Error opening <.*?>: ", "", reason)[:200]
    if ffmpeg_path() is None:
        raise UploadProblem(
            415,
            field,
            f"{name}: not readable as audio ({reason}); send WAV, FLAC, OGG, MP3 or AIFF "
            "(WebM and M4A need ffmpeg on the server)",
        )
    try:
        return decode_bytes_with_ffmpeg(data, sample_rate, max_seconds)
    except AudioError as exc:
        raise UploadProblem(
            415, field, f"{name}: not readable as audio (soundfile: {reason}; ffmpeg: {exc})"
        ) from None
