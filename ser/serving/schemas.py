"""Pydantic models of the API's responses (they also make the OpenAPI docs at /docs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Distribution = dict[str, float]


class WindowOut(BaseModel):
    start: float = Field(description="window start, seconds from the start of the clip")
    end: float = Field(description="window end, seconds")
    emotion: str
    confidence: float = Field(description="probability of `emotion` in this window (4 decimals)")
    probabilities: Distribution


class PredictionOut(BaseModel):
    filename: str | None = Field(
        None, description="the uploaded file's name as sent by the client (text only)"
    )
    type: Literal["prediction", "no_speech"] = Field(
        description="`no_speech` when the speech check found no speech (silence, noise, "
        "music-like tones): then `emotion`, `confidence` and `probabilities` are null"
    )
    emotion: str | None = Field(
        description="the overall label: the top emotion of the clip's distribution"
    )
    confidence: float | None = Field(description="probability of `emotion` (4 decimals)")
    probabilities: Distribution | None = Field(
        description="the clip's distribution over the model's labels (4 decimals); for a "
        "clip longer than the window, the mean of its windows' distributions"
    )
    voiced: float | None = Field(
        None,
        description="speech check: share of 10 ms frames in voiced runs (null when the "
        "check is off)",
    )
    flat: float | None = Field(
        None,
        description="speech check: share of the voiced frames in flat-pitched (tonal) runs",
    )
    rms_db: float | None = Field(None, description="speech check: the clip's RMS level, dBFS")
    duration: float = Field(description="clip duration in seconds")
    model_id: str = Field(description="run name and a hash of the model weights")
    window_seconds: float = Field(description="the model's window (data.max_seconds)")
    windowed: bool = Field(description="true when the clip was cut into sliding windows")
    session: str | None = Field(
        None,
        description="the speaker session's token (the new one for `?session=new`); null "
        "without a session",
    )
    session_clips: int | None = Field(
        None,
        description="with `session` and a speaker-normalised model: clips (windows) of this "
        "session counted so far, this one included; null otherwise",
    )
    timeline: list[WindowOut] | None = Field(
        None, description="one entry per sliding window (clips longer than the window only)"
    )


class BatchItemOut(BaseModel):
    filename: str | None
    status: int = Field(description="200, or the 4xx this file alone would have received")
    prediction: PredictionOut | None = None
    error: str | None = None


class BatchOut(BaseModel):
    model_id: str
    session: str | None = Field(
        None, description="the speaker session's token, as in `PredictionOut`"
    )
    results: list[BatchItemOut]


class SessionOut(BaseModel):
    session: str = Field(
        description="the session's token (128 random bits): send it as `?session=` with "
        "this API key; no one else can use or read the session"
    )
    speaker_normalised: bool = Field(
        description="whether this model normalises by speaker; if not, clips are predicted "
        "alike with or without the session and `session_clips` stays null"
    )
    idle_seconds: float = Field(
        description="the session ends after this long without a request naming it"
    )


class LoadOut(BaseModel):
    """Work in progress, its high-water marks since start-up, and what was turned away."""

    uploads_limit: int = Field(description="max_active_uploads: upload requests served at once")
    uploads_active: int = Field(description="upload requests being read, decoded or answered")
    uploads_active_peak: int = Field(description="most upload requests served at once")
    uploads_queued: int = Field(description="upload requests waiting for a slot")
    uploads_queue_size: int = Field(description="upload_queue: most that may wait")
    uploads_refused: int = Field(description="upload requests answered 503")
    decoding: int = Field(description="clips being decoded and made into features now")
    decoding_peak: int = Field(description="most clips decoded at once")
    rate_limit_per_minute: int | None = Field(description="per key or address; null: off")
    rate_limited: int = Field(description="requests answered 429")
    streams_limit: int = Field(description="max_streams: live streams open at once")
    streams_open: int
    streams_open_peak: int
    streams_refused: int = Field(description="streams closed at once with 1013")


class HealthOut(BaseModel):
    status: Literal["ok"]
    model_id: str
    runtime: Literal["numpy", "onnx", "keras"] = Field(
        description="what runs the model (ser serve --runtime)"
    )
    uptime_seconds: float
    worker_pid: int = Field(
        description="the process that answered: one of the workers of `ser serve --workers N`"
    )
    inference_batches: int = Field(description="model calls since start-up")
    inference_windows: int = Field(description="windows predicted since start-up")
    load: LoadOut


class ReadyOut(BaseModel):
    status: Literal["ready", "warming_up", "failed"] = Field(
        description="ready: the model is loaded and warmed up (compiled where the runtime "
        "compiles); warming_up: not yet (503); failed: the warm-up failed (503)"
    )
    model_id: str
    runtime: Literal["numpy", "onnx", "keras"]
    warm_up_seconds: float | None = Field(None, description="how long the warm-up took")
    detail: str | None = Field(None, description="why the warm-up failed")


class ErrorOut(BaseModel):
    detail: str = Field(description="what was wrong, naming the field or file")
    field: str | None = Field(None, description="the request field at fault, if any")


class InputOut(BaseModel):
    mode: Literal["sequence", "pooled"]
    dim: int = Field(description="feature values per frame (sequence) or per clip (pooled)")
    max_frames: int = Field(description="frames per window (sequence models)")
    sample_rate: int
    hop_seconds: float = Field(description="seconds between feature frames")


class StreamOut(BaseModel):
    url: str = "/stream"
    encoding: str = "pcm_s16le"
    sample_rate: int = 16000
    window_seconds: float
    hop_seconds: float
    speech_check: bool = Field(description="windows without speech get `no_speech`")
    speech_min_voiced: float
    speech_max_flat: float


class ModelInfoOut(BaseModel):
    model_id: str
    run: str
    model_type: str
    parameters: int
    labels: list[str]
    window_seconds: float
    input: InputOut
    features: dict[str, Any] = Field(description="the run's features config")
    config: dict[str, Any] = Field(description="summary of the run's config")
    metrics: dict[str, Any] | None = Field(
        None,
        description="test metrics from training (summary.json) and, when the run was "
        "evaluated, the evaluation's ranking (report.json)",
    )
    stream: StreamOut
