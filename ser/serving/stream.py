"""Live stream protocol of ``WS /stream``.

The client sends binary messages of mono PCM (16 kHz 16-bit little-endian unless a
``config`` message says otherwise). Every ``stream_hop`` seconds of new audio, once
``stream_window`` seconds have arrived, the server answers for the last window:

    {"type": "prediction", "start": 1.5, "end": 3.5, "emotion": "angry",
     "confidence": 0.71, "probabilities": {...}, "voiced": 0.43, "flat": 0.0,
     "rms_db": -21.3, "session_clips": null}
    {"type": "no_speech", "start": 2.0, "end": 4.0, "emotion": null, "confidence": null,
     "probabilities": null, "voiced": 0.0, "flat": 0.0, "rms_db": -63.0,
     "session_clips": null}

the same fields as ``POST /predict``; whether a window holds speech is decided by
``ser.speech`` with the server's ``speech_*`` settings (``no_speech`` for silence, noise
and music-like tones).

Text messages from the client (JSON):

    {"type": "config", "encoding": "pcm_s16le" | "pcm_f32le", "sample_rate": 16000}
        before any audio; the server resamples other rates to the model's;
    {"type": "end"}  the server answers for the audio after the last window (if
        any), sends {"type": "end", "windows": n} and closes the connection.

On bad input the server sends {"type": "error", "message": ...} and closes with
code 1003 (unsupported data), 1007 (malformed PCM) or 1009 (too much audio); the
same way, with 1013 (try again later) when ``max_streams`` streams are already open,
and with 1008 (policy) after ``stream_idle_seconds`` without a message.
Times are seconds from the first sample received.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ser.serving.settings import ServingSettings

ENCODINGS = {"pcm_s16le": ("<i2", 32768.0), "pcm_f32le": ("<f4", 1.0)}
MIN_RATE, MAX_RATE = 8000, 48000
# The closing flush answers only for a tail at least this long (seconds).
MIN_TAIL_SECONDS = 0.25

CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID = 1007
CLOSE_TOO_BIG = 1009
CLOSE_IDLE = 1008
CLOSE_TRY_LATER = 1013


class StreamError(ValueError):
    """A protocol violation; ``code`` is the WebSocket close code to use."""

    def __init__(self, message: str, code: int = CLOSE_UNSUPPORTED) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class StreamWindow:
    """One window of received audio to answer for, with its place in the stream."""

    start: float  # seconds
    end: float
    wave: np.ndarray  # float32 [samples] at the client's rate


class StreamSession:
    """The audio state of one connection: decodes chunks and says which windows are due."""

    def __init__(self, settings: ServingSettings, sample_rate: int = 16000) -> None:
        self.settings = settings
        self.encoding = "pcm_s16le"
        self.sample_rate = sample_rate
        self.received = 0  # samples since the start
        self.windows_sent = 0
        self._buffer = np.zeros(0, np.float32)
        self._buffer_start = 0  # absolute index of _buffer[0]
        self._next_end = self._window  # absolute index where the next window ends
        self._last_end = 0  # end of the last window answered
        self._pending = b""

    @property
    def _window(self) -> int:
        return max(1, round(self.settings.stream_window * self.sample_rate))

    @property
    def _hop(self) -> int:
        return max(1, round(self.settings.stream_hop * self.sample_rate))

    def configure(self, message: dict[str, Any]) -> None:
        """Apply a ``config`` message: the encoding and sample rate of the audio to come."""
        if self.received or self._pending:
            raise StreamError("config must come before any audio")
        unknown = set(message) - {"type", "encoding", "sample_rate"}
        if unknown:
            raise StreamError(
                f"config: unknown key(s) {sorted(unknown)}; valid: encoding, sample_rate"
            )
        encoding = message.get("encoding", self.encoding)
        if encoding not in ENCODINGS:
            raise StreamError(f"config.encoding: {encoding!r} is not one of {sorted(ENCODINGS)}")
        rate = message.get("sample_rate", self.sample_rate)
        if not isinstance(rate, int) or isinstance(rate, bool) or not MIN_RATE <= rate <= MAX_RATE:
            raise StreamError(
                f"config.sample_rate: {rate!r} must be an integer from {MIN_RATE} to {MAX_RATE} Hz"
            )
        self.encoding, self.sample_rate = encoding, rate
        self._next_end = self._window

    def handle_text(self, text: str) -> str:
        """Apply a text message; returns its type (``config`` or ``end``)."""
        try:
            message = json.loads(text)
        except json.JSONDecodeError:
            raise StreamError(f"text message is not JSON: {text[:80]!r}") from None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "config":
            self.configure(message)
        elif kind != "end":
            raise StreamError(
                f"text message type {kind!r} is not 'config' or 'end'; send audio as binary"
            )
        return kind

    def _decode(self, data: bytes) -> np.ndarray:
        dtype, scale = ENCODINGS[self.encoding]
        width = np.dtype(dtype).itemsize
        if len(data) % width:
            raise StreamError(
                f"binary message of {len(data)} bytes is not whole {self.encoding} samples "
                f"({width} bytes each)",
                CLOSE_INVALID,
            )
        wave = np.frombuffer(data, dtype=dtype).astype(np.float32) / scale
        if not np.isfinite(wave).all():
            raise StreamError("audio contains NaN or infinite samples", CLOSE_INVALID)
        return wave

    def feed(self, data: bytes) -> list[StreamWindow]:
        """One binary message -> the windows that became due (oldest first)."""
        self._check_message_length(len(data))
        wave = self._decode(data)
        self._check_stream_length(wave.shape[0])
        self._buffer = np.concatenate([self._buffer, wave])
        self.received += wave.shape[0]
        due = []
        while self.received >= self._next_end:
            due.append(self._cut(self._next_end - self._window, self._next_end))
            self._next_end += self._hop
        self._drop_unneeded()
        return due

    def _check_message_length(self, size: int) -> None:
        seconds = size / np.dtype(ENCODINGS[self.encoding][0]).itemsize / self.sample_rate
        if seconds > self.settings.stream_max_chunk_seconds:
            raise StreamError(
                f"binary message holds {seconds:.1f} s of audio; send at most "
                f"{self.settings.stream_max_chunk_seconds:g} s per message",
                CLOSE_TOO_BIG,
            )

    def _check_stream_length(self, new_samples: int) -> None:
        if (self.received + new_samples) / self.sample_rate > self.settings.stream_max_seconds:
            raise StreamError(
                f"stream longer than {self.settings.stream_max_seconds:g} s "
                "(setting stream_max_seconds); open a new connection",
                CLOSE_TOO_BIG,
            )

    def _drop_unneeded(self) -> None:
        """Keep what the next window needs and, for ``flush``, the last full window."""
        keep_from = max(0, min(self._next_end, self.received) - self._window)
        if keep_from > self._buffer_start:
            self._buffer = self._buffer[keep_from - self._buffer_start :]
            self._buffer_start = keep_from

    def flush(self) -> list[StreamWindow]:
        """At the end of the stream: the last ``stream_window`` seconds, if they hold audio
        no window has covered yet (at least ``MIN_TAIL_SECONDS`` of it)."""
        tail = (self.received - self._last_end) / self.sample_rate
        if self.received == 0 or tail < MIN_TAIL_SECONDS:
            return []
        start = max(0, self.received - self._window, self._buffer_start)
        return [self._cut(start, self.received)]

    def _cut(self, start: int, end: int) -> StreamWindow:
        self._last_end = end
        wave = self._buffer[start - self._buffer_start : end - self._buffer_start]
        return StreamWindow(start / self.sample_rate, end / self.sample_rate, wave.copy())
