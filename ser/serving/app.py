"""The FastAPI app: upload prediction, batch, health, model card, live stream, web page.

``create_app(predictor, settings)`` takes a loaded ``Predictor`` (``ser serve`` loads
it through ``Predictor.load`` before binding the port, so a bad run directory fails
at once) or a run directory to load at start-up. Routes:

- ``POST /predict``        one clip (multipart field ``file``) -> ``PredictionOut``
- ``POST /predict/batch``  several clips (fields ``files``) -> ``BatchOut``
  (both take ``?session=<token>`` or ``?session=new``: one speaker's clips, see
  ``sessions.py``); a clip without speech (``ser.speech``) is answered 200 with
  ``type`` ``no_speech`` and a null emotion, and is not counted into its session
- ``POST /sessions``       a new speaker session -> ``SessionOut`` (its token)
- ``GET /health``, ``GET /model``, ``GET /`` (web page), ``GET /favicon.ico``
- ``GET /ready``: 503 until the model is warmed up (compiled), then 200; ``/health``
  answers as soon as the process serves (liveness)
- ``GET /metrics``: Prometheus text (``metrics.py``)
- ``GET /docs`` (Swagger UI), ``GET /redoc`` (ReDoc), ``GET /openapi.json``: the docs
  pages load their scripts from this server (``fastapi-offline``'s files and
  ``static/``), so they work offline and under the pages' Content-Security-Policy
- ``WS /stream``           live PCM -> window predictions (see ``stream.py``); each
  stream is one speaker session

With API keys (``auth.py``) every route but ``/health``, ``/ready``, the page and the
docs needs ``Authorization: Bearer <key>`` (``/metrics`` too). Client errors are JSON
``{"detail": ..., "field": ...}`` with 401 (no or wrong API key), 404 (unknown session),
413 (too large), 415 (not audio) or 422 (empty, damaged, too long, malformed request);
the API does not answer 500 for anything a client sends. A session request while the
session store (Redis, see ``shared_sessions.py``) cannot be reached gets 503 naming it.
How much work is taken on at once and from whom (503, 429, stream close codes 1013 and
1008) and the security headers are ``limits.py``'s.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Sized
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Query, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from ser import runs
from ser.inference import (
    XLA_BATCH_SIZES,
    ClipPrediction,
    Predictor,
    PreparedClip,
    SpeakerSession,
    tune_for_inference,
)
from ser.serving.auth import (
    APIKeys,
    RequireAPIKey,
    credentials_kept_out_of_logs,
    document_bearer_auth,
    stream_key_id,
)
from ser.serving.engine import InferenceEngine
from ser.serving.limits import (
    UPLOAD_PATHS,
    RateLimit,
    SecurityHeaders,
    ServiceLimits,
    UploadAdmission,
    send_error,
)
from ser.serving.metrics import RequestMetrics, ServiceMetrics
from ser.serving.schemas import (
    BatchItemOut,
    BatchOut,
    ErrorOut,
    HealthOut,
    InputOut,
    LoadOut,
    ModelInfoOut,
    PredictionOut,
    ReadyOut,
    SessionOut,
    StreamOut,
    WindowOut,
)
from ser.serving.sessions import (
    NEW_SESSION,
    Session,
    SessionEnded,
    SessionStore,
    SessionStoreUnavailable,
)
from ser.serving.settings import ServingSettings
from ser.serving.shared_sessions import open_session_store
from ser.serving.stream import (
    CLOSE_IDLE,
    CLOSE_TRY_LATER,
    StreamError,
    StreamSession,
    StreamWindow,
)
from ser.serving.uploads import UploadProblem, decode_upload, display_name

STATIC_DIR = Path(__file__).resolve().parent / "static"
FAVICON = "favicon.svg"
SessionQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=64,
        description="a speaker session token issued by this server (`POST /sessions`, or "
        "`new` to start a session with this request; the answer's `session` holds the "
        "token): with a speaker-normalised model, clips sent with the same token are "
        "normalised by that speaker's statistics so far instead of the average training "
        "speaker's. An unknown or ended token, or another API key's, gets 404.",
    ),
]
# Multipart framing around the files (boundaries, headers) on top of the file limit.
FORM_OVERHEAD_BYTES = 64 * 1024
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "session: unknown or ended token, or another key's"},
    413: {"model": ErrorOut, "description": "upload larger than max_upload_mb (MiB)"},
    415: {"model": ErrorOut, "description": "not readable as audio"},
    422: {"model": ErrorOut, "description": "empty, damaged or too long clip; malformed request"},
    429: {"model": ErrorOut, "description": "over rate_limit_per_minute; see Retry-After"},
    503: {
        "model": ErrorOut,
        "description": "max_active_uploads busy and upload_queue full (see Retry-After); "
        "or, with `session`, the session store (Redis) unreachable",
    },
}


def warm_batch_sizes(max_batch_windows: int) -> list[int]:
    """The compiled batch sizes the engine can use when it runs up to ``max_batch_windows``."""
    cap = next((b for b in XLA_BATCH_SIZES if b >= max_batch_windows), XLA_BATCH_SIZES[-1])
    return [b for b in XLA_BATCH_SIZES if b <= cap]


def _finite(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities (e.g. UA with absent classes) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def run_metrics(run_dir: Path) -> dict[str, Any] | None:
    """Test metrics saved by training and, if present, the evaluation's ranking."""
    summary = runs.read_json(run_dir / runs.SUMMARY)
    report = runs.read_json(run_dir / runs.REPORT_JSON)
    out: dict[str, Any] = {}
    if isinstance(summary, dict):
        test = summary.get("test") or {}
        out["training"] = {
            "protocol": summary.get("protocol"),
            "speaker_independent": summary.get("speaker_independent"),
            "best_epoch": summary.get("best_epoch"),
            "test": {k: test.get(k) for k in ("ua", "wa", "macro_f1", "n") if k in test},
            "per_class": test.get("per_class"),
        }
    if isinstance(report, dict):
        out["evaluation"] = {
            "created": report.get("created"),
            "protocol": report.get("protocol"),
            "ranking": report.get("ranking"),
        }
    return _finite(out) or None


def model_info(predictor: Predictor, settings: ServingSettings) -> ModelInfoOut:
    cfg = predictor.cfg
    features = cfg.features.model_dump(mode="json", exclude={"cache_dir", "workers"})
    features = {
        k: v
        for k, v in features.items()
        if k not in ("mfcc", "chroma", "mel", "contrast", "tonnetz") or k in cfg.features.extractors
    }
    return ModelInfoOut(
        model_id=predictor.model_id,
        run=predictor.run_dir.name,
        model_type=cfg.model.label,
        parameters=predictor.parameters,
        labels=list(predictor.labels),
        window_seconds=predictor.window_seconds,
        input=InputOut(
            mode=cfg.features.mode,
            dim=predictor.input_dim,
            max_frames=predictor.max_frames,
            sample_rate=cfg.data.sample_rate,
            hop_seconds=cfg.features.frame.hop_length / cfg.data.sample_rate,
        ),
        features=features,
        config={
            "name": cfg.name,
            "seed": cfg.seed,
            "corpora": list(cfg.data.corpora),
            "emotions": list(predictor.labels),  # the model's own, not every configured one
            "max_seconds": cfg.data.max_seconds,
            "split": cfg.split.method,
            "model": {"type": cfg.model.type, **cfg.model.params.model_dump(mode="json")},
        },
        metrics=run_metrics(predictor.run_dir),
        stream=StreamOut(
            window_seconds=settings.stream_window,
            hop_seconds=settings.stream_hop,
            speech_check=settings.speech_check,
            speech_min_voiced=settings.speech_min_voiced,
            speech_max_flat=settings.speech_max_flat,
        ),
    )


def prediction_out(clip: ClipPrediction, model_id: str, window: float, filename: str | None):
    return PredictionOut(
        filename=filename,
        **clip.summary(),
        duration=round(clip.duration, 4),
        model_id=model_id,
        window_seconds=window,
        windowed=clip.windowed,
        timeline=[WindowOut(**w) for w in clip.timeline()] if clip.windowed else None,
    )


@dataclass
class PreparedUpload:
    """An uploaded clip read, decoded and made into model inputs (or already answered,
    without speech), waiting for the model."""

    filename: str | None
    work: PreparedClip | ClipPrediction
    session_clips: int | None
    session: str | None = None  # the session's token, when the request named one


@dataclass
class Service:
    """What the routes share: the model, its inference thread, the settings, the state
    of the limits, the API keys (None: an open service) and the speaker sessions."""

    predictor: Predictor
    engine: InferenceEngine
    settings: ServingSettings
    info: ModelInfoOut
    started: float
    limits: ServiceLimits
    keys: APIKeys | None = None
    metrics: ServiceMetrics = dataclass_field(default_factory=ServiceMetrics)
    sessions: SessionStore = dataclass_field(init=False)

    def __post_init__(self) -> None:
        self.sessions = open_session_store(self.settings, self.new_speaker, self.predictor.model_id)

    def new_speaker(self) -> SpeakerSession | None:
        """A fresh speaker session with this service's settings (None: the model uses no
        speaker statistics)."""
        return self.predictor.new_session(spread_exponent=self.settings.session_spread_exponent)

    # ------------------------------------------------------------------ sessions
    async def new_session(self, owner: str | None) -> SessionOut:
        # A store in Redis is network I/O: off the event loop (so are the others below).
        session = await run_in_threadpool(self.sessions.create, owner)
        return SessionOut(
            session=session.token,
            speaker_normalised=session.speaker is not None,
            idle_seconds=self.sessions.idle_seconds,
        )

    async def session_for(self, token: str | None, owner: str | None) -> Session | None:
        """The session a request names with ``?session=`` (``new`` starts one), None
        without one; 404 for a token that is not a live session of ``owner``."""
        if token is None:
            return None
        if token == NEW_SESSION:
            return await run_in_threadpool(self.sessions.create, owner)
        session = await run_in_threadpool(self.sessions.find, token, owner)
        if session is None:
            raise self._no_such_session()
        return session

    def _no_such_session(self) -> UploadProblem:
        return UploadProblem(
            404,
            "session",
            "session: no such session (unknown, ended after "
            f"{self.settings.session_idle_seconds:g} s idle or pushed out by newer ones, "
            "or started with another API key); start one with POST /sessions or "
            "?session=new",
        )

    async def count_sessions(self) -> None:
        """Refresh the active sessions gauge, at each scrape (a store that cannot count, or
        cannot be reached now, leaves it as it was)."""
        if isinstance(self.sessions, Sized):
            try:
                self.metrics.set_active_sessions(await run_in_threadpool(len, self.sessions))
            except SessionStoreUnavailable:
                return

    # ------------------------------------------------------------------ speech
    async def answer(self, work: PreparedClip | ClipPrediction) -> ClipPrediction:
        """``Predictor.prepare_speech``'s result -> the clip's prediction (the model runs only for
        speech)."""
        if isinstance(work, ClipPrediction):
            self.metrics.count_no_speech()
            return work
        return self.predictor.finish_clip(work, await self.engine.predict(work.inputs))

    # ------------------------------------------------------------------ uploads
    def _prepare(
        self, data: bytes, filename: str | None, field: str, session: Session | None = None
    ) -> tuple[PreparedClip | ClipPrediction, int | None]:
        rate = self.predictor.sample_rate
        with self.limits.decoding:
            wave = decode_upload(data, filename, rate, self.settings.max_clip_seconds, field)
            try:
                if session is None or session.speaker is None:
                    return self.predictor.prepare_speech(wave), None
                work, count = self.sessions.update_speaker(
                    session, lambda speaker: self.predictor.prepare_speech(wave, session=speaker)
                )
                return work, count if isinstance(work, PreparedClip) else None
            except SessionEnded:
                raise self._no_such_session() from None
            except ValueError as exc:
                raise UploadProblem(
                    422, field, f"{display_name(field, filename)}: no features ({exc})"
                ) from None

    async def prepare_upload(
        self, upload: UploadFile, field: str, session: Session | None = None
    ) -> PreparedUpload:
        """Read an upload (413 over ``max_upload_mb``), decode it and extract its features."""
        filename = (upload.filename or "")[:255] or None
        limit = self.settings.max_upload_bytes
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise UploadProblem(
                413,
                field,
                f"{display_name(field, filename)}: larger than "
                f"{self.settings.max_upload_mb:g} MiB (setting max_upload_mb)",
            )
        work, clips = await run_in_threadpool(self._prepare, data, filename, field, session)
        return PreparedUpload(filename, work, clips, session.token if session else None)

    async def answer_upload(self, prepared: PreparedUpload) -> PredictionOut:
        clip = await self.answer(prepared.work)
        model_id, window = self.predictor.model_id, self.predictor.window_seconds
        out = prediction_out(clip, model_id, window, prepared.filename)
        out.session = prepared.session
        out.session_clips = prepared.session_clips
        return out

    async def predict_upload(
        self, upload: UploadFile, field: str, session: Session | None = None
    ) -> PredictionOut:
        prepared = await self.prepare_upload(upload, field, session)
        self.metrics.observe_request_windows(_model_windows(prepared))
        return await self.answer_upload(prepared)

    async def prepare_batch_item(
        self, upload: UploadFile, session: Session | None
    ) -> PreparedUpload | BatchItemOut:
        """A batch file prepared, or its error as the item to answer."""
        try:
            return await self.prepare_upload(upload, "files", session)
        except UploadProblem as problem:
            return BatchItemOut(
                filename=(upload.filename or "")[:255] or None,
                status=problem.status,
                error=problem.message,
            )

    async def answer_batch_item(self, prepared: PreparedUpload | BatchItemOut) -> BatchItemOut:
        if isinstance(prepared, BatchItemOut):
            return prepared
        prediction = await self.answer_upload(prepared)
        return BatchItemOut(filename=prediction.filename, status=200, prediction=prediction)

    async def predict_batch(self, files: list[UploadFile], session: Session | None) -> BatchOut:
        """Every file of a batch request predicted, each with its own status.

        The files are decoded one after another, since the request holds a single
        upload slot (``limits.UploadGate``); their windows then go to the model together.
        """
        if len(files) > self.settings.max_batch_files:
            raise UploadProblem(
                422,
                "files",
                f"files: {len(files)} files sent; at most "
                f"{self.settings.max_batch_files} per request (setting max_batch_files)",
            )
        prepared = [await self.prepare_batch_item(f, session) for f in files]
        self.metrics.observe_request_windows(sum(_model_windows(p) for p in prepared))
        items = await asyncio.gather(*(self.answer_batch_item(p) for p in prepared))
        return BatchOut(
            model_id=self.predictor.model_id,
            session=session.token if session else None,
            results=list(items),
        )

    def health(self) -> HealthOut:
        """Liveness, the model id, uptime, the inference thread's counters and the load."""
        return HealthOut(
            status="ok",
            model_id=self.predictor.model_id,
            runtime=self.predictor.runtime,
            uptime_seconds=round(time.time() - self.started, 3),
            worker_pid=os.getpid(),
            inference_batches=self.engine.stats.batches,
            inference_windows=self.engine.stats.windows,
            load=self.load(),
        )

    def readiness(self) -> ReadyOut:
        """Whether the model is warmed up (``engine.py``), for ``GET /ready``."""
        stats = self.engine.stats
        status = "ready" if self.engine.ready.is_set() else "warming_up"
        return ReadyOut(
            status="failed" if stats.warm_up_error else status,
            model_id=self.predictor.model_id,
            runtime=self.predictor.runtime,
            warm_up_seconds=None
            if stats.warm_up_seconds is None
            else round(stats.warm_up_seconds, 3),
            detail=stats.warm_up_error,
        )

    def load(self) -> LoadOut:
        """Work in progress now, its high-water marks, and what was turned away."""
        limits = self.limits
        return LoadOut(
            uploads_limit=limits.uploads.capacity,
            uploads_active=limits.uploads.active,
            uploads_active_peak=limits.uploads.peak_active,
            uploads_queued=limits.uploads.waiting,
            uploads_queue_size=limits.uploads.queue_size,
            uploads_refused=limits.uploads.refused,
            decoding=limits.decoding.now,
            decoding_peak=limits.decoding.peak,
            rate_limit_per_minute=limits.rates.per_minute if limits.rates else None,
            rate_limited=limits.rates.refused if limits.rates else 0,
            streams_limit=limits.streams.cap,
            streams_open=limits.streams.now,
            streams_open_peak=limits.streams.peak,
            streams_refused=limits.streams.refused,
        )

    async def run_stream(self, ws: WebSocket) -> None:
        """Serve one ``WS /stream`` connection until it closes; beyond ``max_streams``
        open ones, close it at once with 1013 (try again later)."""
        await ws.accept()
        if not self.limits.streams.try_enter():
            busy = StreamError(
                f"server busy: {self.limits.streams.cap} live streams are open "
                "(setting max_streams); try again later",
                CLOSE_TRY_LATER,
            )
            await _close_with_error(ws, busy)
            return
        self.metrics.stream_opened()
        try:
            await StreamConnection(self, ws).run()
        finally:
            self.metrics.stream_closed()
            self.limits.streams.leave()


class StreamConnection:
    """One accepted ``WS /stream`` connection: the socket, the audio received so far and
    the speaker it is, answered window by window with the service's model."""

    def __init__(self, service: Service, ws: WebSocket) -> None:
        self.service = service
        self.ws = ws
        self.audio = StreamSession(service.settings)
        # One speaker per stream: a speaker-normalised model learns the voice as it goes
        # (speech windows only; windows are prepared one at a time).
        self.speaker = service.new_speaker()

    async def run(self) -> None:
        """From the key check and the ``ready`` message to the close (see ``stream.py``
        for the protocol, ``auth.py`` for the key)."""
        try:
            if self.service.keys is not None:
                self.ws.state.api_key_id = await stream_key_id(self.ws, self.service.keys)
            await self.ws.send_json(self._ready_message())
            while await self._answer_next_message():
                pass
        except StreamError as exc:
            await _close_with_error(self.ws, exc)
        except WebSocketDisconnect:
            return

    def _ready_message(self) -> dict[str, Any]:
        settings = self.service.settings
        return {
            "type": "ready",
            "model_id": self.service.predictor.model_id,
            "labels": self.service.predictor.labels,
            "encoding": self.audio.encoding,
            "sample_rate": self.audio.sample_rate,
            "window": settings.stream_window,
            "hop": settings.stream_hop,
        }

    async def _answer_next_message(self) -> bool:
        """Receive one client message and answer the windows it made due; False once the
        stream is over (the client left, or ended it and the connection was closed)."""
        message = await self._receive()
        if message["type"] == "websocket.disconnect":
            return False
        windows, ending = _windows_due(message, self.audio)
        for window in windows:
            await self.ws.send_json(await self._window_message(window))
            self.audio.windows_sent += 1
        if ending:
            await self.ws.send_json({"type": "end", "windows": self.audio.windows_sent})
            await self.ws.close(1000)
        return not ending

    async def _receive(self) -> dict[str, Any]:
        """The next client message; a client silent for ``stream_idle_seconds`` is a
        ``StreamError`` (close 1008), so an idle connection cannot hold a stream slot."""
        idle = self.service.settings.stream_idle_seconds
        try:
            return await asyncio.wait_for(self.ws.receive(), idle)
        except TimeoutError:
            raise StreamError(
                f"no message for {idle:g} s (setting stream_idle_seconds); closing the idle stream",
                CLOSE_IDLE,
            ) from None

    async def _window_message(self, window: StreamWindow) -> dict[str, Any]:
        """The ``prediction`` or ``no_speech`` message for one window: its span, then
        the fields of ``ClipPrediction.summary`` as ``POST /predict`` has them."""
        service = self.service
        work = await run_in_threadpool(
            service.predictor.prepare_speech, window.wave, self.audio.sample_rate, self.speaker
        )
        summary = (await service.answer(work)).summary()
        counted = self.speaker is not None and summary["type"] == "prediction"
        return {
            "type": summary["type"],
            "start": round(window.start, 3),
            "end": round(window.end, 3),
            **summary,
            "session_clips": self.speaker.count if counted else None,
        }


def _model_windows(prepared: PreparedUpload | BatchItemOut) -> int:
    """The windows an upload sends to the model (none without speech or on an error)."""
    work = getattr(prepared, "work", None)
    return len(work.inputs) if isinstance(work, PreparedClip) else 0


def _windows_due(
    message: dict[str, Any], session: StreamSession
) -> tuple[list[StreamWindow], bool]:
    """The windows a client message makes due, and whether it ends the stream."""
    if message.get("bytes") is not None:
        return session.feed(message["bytes"]), False
    if message.get("text") is not None:
        ending = session.handle_text(message["text"]) == "end"
        return (session.flush() if ending else []), ending
    return [], False


async def _close_with_error(ws: WebSocket, exc: StreamError) -> None:
    """Tell the client what was wrong with its stream, then close with the error's code."""
    try:
        await ws.send_json({"type": "error", "message": str(exc)})
        await ws.close(exc.code, reason=str(exc)[:120])
    except (WebSocketDisconnect, RuntimeError):
        return  # the client left before hearing why


class UploadSizeLimit:
    """ASGI middleware: refuse oversized upload requests with 413 before parsing them.

    The body of an upload route is read into memory up to its limit (never to disk)
    and then handed on; a larger ``Content-Length`` is refused without reading it.
    """

    def __init__(self, app, settings: ServingSettings) -> None:
        self.app = app
        self.settings = settings

    def limit_for(self, path: str) -> int | None:
        files = {"/predict": 1, "/predict/batch": self.settings.max_batch_files}.get(path)
        return (
            None if files is None else files * self.settings.max_upload_bytes + FORM_OVERHEAD_BYTES
        )

    async def _refuse(self, send, size: str) -> None:
        detail = (
            f"request body {size} is larger than this server accepts "
            f"({self.settings.max_upload_mb:g} MiB per file, setting max_upload_mb)"
        )
        await send_error(send, 413, detail, [("connection", "close")])

    async def __call__(self, scope, receive, send) -> None:
        limit = self.limit_for(scope["path"]) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, f"of {int(declared) / 1048576:.1f} MiB")
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(send, f"over {limit / 1048576:.1f} MiB")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts, field = [], None
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")]
        name = ".".join(loc) or "request"
        field = field or (loc[0] if loc else None)
        if error.get("type") == "missing":
            hint = {"file": "one audio file", "files": "one or more audio files"}.get(name)
            what = (
                f"missing; send {hint} as multipart/form-data field '{name}'" if hint else "missing"
            )
            parts.append(f"{name}: {what}")
        else:
            parts.append(f"{name}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request", field


def create_app(
    predictor: Predictor | None = None,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    settings: ServingSettings | None = None,
    api_keys: APIKeys | None = None,
    tuned: bool = False,
) -> FastAPI:
    """The service for ``predictor`` (or the run at ``run_dir``, loaded at start-up),
    open to all or, given ``api_keys``, to holders of one of them. ``tuned``: the caller
    has tuned this process for inference (``ser serve`` and its workers do, before
    loading the model), so start-up does not do it again. The model is warmed up once,
    by the inference thread, after start-up (``GET /ready``)."""
    if predictor is None and run_dir is None:
        raise ValueError("create_app needs a predictor or a run_dir")
    settings = settings or ServingSettings()
    limits = ServiceLimits.from_settings(settings)
    metrics = ServiceMetrics()
    # FastAPI's own /docs and /redoc load Swagger UI and ReDoc from a CDN: blank pages
    # offline. FastAPIOffline serves the files its package ships; the pages that load
    # them are ours (``_add_page_routes``), with no inline script for the CSP to forbid.
    app = FastAPIOffline(
        docs_url=None,
        redoc_url=None,
        title="ser: speech emotion recognition",
        description="Predict the emotion of speech clips with a trained `ser` run: upload "
        "clips, or stream live audio over the `/stream` WebSocket. The page at `/` does both.",
        version="1",
        lifespan=_lifespan(predictor, run_dir, settings, limits, api_keys, metrics, tuned),
    )
    _add_middleware(app, settings, limits, api_keys)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: sees every answer
    _add_error_handlers(app)
    # Registration order is the order of the OpenAPI document and of route matching.
    _add_page_routes(app)
    _add_model_routes(app)
    _add_operations_routes(app)
    _add_prediction_routes(app)
    _add_session_routes(app)
    _add_stream_route(app)
    if api_keys is not None:
        document_bearer_auth(app)
    return app


def _lifespan(
    predictor: Predictor | None,
    run_dir: str | os.PathLike[str] | None,
    settings: ServingSettings,
    limits: ServiceLimits,
    api_keys: APIKeys | None,
    metrics: ServiceMetrics,
    tuned: bool = False,
):
    """Start-up and shut-down: tune the process (unless ``tuned``), load the model, run
    its inference thread (which warms the model up first: ``/ready``), keep keys and
    session tokens out of the server's logs."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not tuned:
            tune_for_inference()
        loaded = predictor or await run_in_threadpool(Predictor.load, run_dir)
        # A copy (sharing the model) with this deployment's speech check.
        loaded = replace(
            loaded,
            speech_check=settings.speech_check,
            speech_thresholds=settings.speech_thresholds,
        )
        metrics.describe_model(loaded.model_id, loaded.cfg.model.label, loaded.runtime)
        engine = InferenceEngine(loaded, settings.max_batch_windows, metrics.observe_model_batch)
        engine.start(warm_up=warm_batch_sizes(settings.max_batch_windows))
        info = model_info(loaded, settings)
        app.state.service = Service(
            loaded, engine, settings, info, time.time(), limits, api_keys, metrics
        )
        try:
            with credentials_kept_out_of_logs():
                yield
        finally:
            engine.close()
            metrics.close()

    return lifespan


def _add_middleware(
    app: FastAPI, settings: ServingSettings, limits: ServiceLimits, api_keys: APIKeys | None
) -> None:
    """Every middleware, innermost first (the last added sees a request first):

    upload size (413) < upload admission (503) < rate limit (429, counted per API key,
    so it sits inside the key check) < API keys (401, when there are keys: strangers
    are refused before their body is read) < CORS (answers preflights, which carry no
    key) < security headers (on every answer, refusals included).
    """
    app.add_middleware(UploadSizeLimit, settings=settings)
    app.add_middleware(UploadAdmission, gate=limits.uploads)
    if limits.rates is not None:
        app.add_middleware(RateLimit, limiter=limits.rates)
    if api_keys is not None:
        app.add_middleware(RequireAPIKey, keys=api_keys)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    app.add_middleware(SecurityHeaders)


def _service(request: Request | WebSocket) -> Service:
    return request.app.state.service


def _key_id(request: Request) -> str | None:
    """The id of the API key the request came with (None when the service has no keys)."""
    return getattr(request.state, "api_key_id", None)


def _add_error_handlers(app: FastAPI) -> None:
    """Client errors as JSON ``{"detail", "field"}`` with 413, 415 or 422; a session store
    that cannot be reached the same way with 503."""

    @app.exception_handler(UploadProblem)
    async def _upload_problem(request: Request, exc: UploadProblem) -> JSONResponse:
        return JSONResponse({"detail": exc.message, "field": exc.field}, status_code=exc.status)

    @app.exception_handler(SessionStoreUnavailable)
    async def _session_store_down(request: Request, exc: SessionStoreUnavailable):
        return JSONResponse({"detail": str(exc), "field": "session"}, status_code=503)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # Starlette answers a multipart body it cannot parse (a part header over 8 KB,
        # CR LF inside a file name, a broken boundary) with a bare 400; answer it like
        # every other malformed upload request of this API.
        if exc.status_code == 400 and request.url.path in UPLOAD_PATHS:
            detail = str(exc.detail).rstrip(".")
            return JSONResponse(
                {
                    "detail": f"the multipart/form-data body could not be parsed ({detail})",
                    "field": None,
                },
                status_code=422,
            )
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, field = _validation_message(exc)
        return JSONResponse({"detail": detail, "field": field}, status_code=422)


def _add_page_routes(app: FastAPI) -> None:
    """``GET /``, the web page; ``/docs`` and ``/redoc``, the API docs; the files they
    load under ``/static``; and the icon browsers ask for at ``/favicon.ico`` on pages
    without one (the JSON routes)."""

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC_DIR / "index.html").read_text(encoding="utf-8"))

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse((STATIC_DIR / "docs.html").read_text(encoding="utf-8"))

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return HTMLResponse((STATIC_DIR / "redoc.html").read_text(encoding="utf-8"))

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / FAVICON, media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def _add_model_routes(app: FastAPI) -> None:
    """``GET /health`` and ``GET /model``."""

    @app.get("/health", response_model=HealthOut, summary="liveness and model id")
    async def health(request: Request) -> HealthOut:
        return _service(request).health()

    @app.get("/model", response_model=ModelInfoOut, summary="labels, features, config, metrics")
    async def model(request: Request) -> ModelInfoOut:
        return _service(request).info


def _add_operations_routes(app: FastAPI) -> None:
    """``GET /ready`` and ``GET /metrics``, for orchestrators and monitoring."""

    @app.get(
        "/ready",
        response_model=ReadyOut,
        responses={503: {"model": ReadyOut, "description": "the model is not warmed up yet"}},
        summary="readiness: 200 once the model is warmed up, 503 before",
    )
    async def ready(request: Request) -> JSONResponse:
        """Readiness, apart from liveness (``/health``): 503 while the inference thread
        warms the model up (compiles it, with ``--runtime keras``) or if that failed, 200
        after. Open without an API key, like ``/health``, for the probes of a load
        balancer or orchestrator."""
        out = _service(request).readiness()
        return JSONResponse(out.model_dump(), status_code=200 if out.status == "ready" else 503)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}},
        summary="Prometheus metrics: requests, latency, batching, sessions, streams, model",
    )
    async def prometheus_metrics(request: Request) -> Response:
        """The metrics of ``ser.serving.metrics`` in Prometheus text format; with worker
        processes, every worker's counts added up. It names the model and shows the
        traffic, so with API keys it needs one like every other route (a scrape config
        sends it with ``authorization: {credentials_file: ...}``). Scrapes are counted in
        ``ser_http_requests_total`` under ``route="/metrics"``."""
        service = _service(request)
        await service.count_sessions()
        body, content_type = service.metrics.exposition()
        return Response(body, media_type=content_type)


def _add_prediction_routes(app: FastAPI) -> None:
    """``POST /predict`` and ``POST /predict/batch``."""

    @app.post(
        "/predict",
        response_model=PredictionOut,
        responses=ERROR_RESPONSES,
        summary="emotion of one clip",
    )
    async def predict(
        request: Request,
        file: Annotated[
            UploadFile,
            File(
                description="one clip: WAV, FLAC, OGG, MP3, AIFF (WebM/M4A when ffmpeg is installed)"
            ),
        ],
        session: SessionQuery = None,
    ) -> PredictionOut:
        service = _service(request)
        speaker = await service.session_for(session, _key_id(request))
        return await service.predict_upload(file, "file", speaker)

    @app.post(
        "/predict/batch",
        response_model=BatchOut,
        responses=ERROR_RESPONSES,
        summary="emotions of several clips; each file gets its own status",
    )
    async def predict_batch(
        request: Request,
        files: Annotated[
            list[UploadFile], File(description="one or more clips (repeat the field)")
        ],
        session: SessionQuery = None,
    ) -> BatchOut:
        service = _service(request)
        speaker = await service.session_for(session, _key_id(request))
        return await service.predict_batch(files, speaker)


def _add_session_routes(app: FastAPI) -> None:
    """``POST /sessions``."""

    @app.post(
        "/sessions",
        response_model=SessionOut,
        status_code=201,
        summary="start a speaker session; its token is the only way to use it",
    )
    async def new_session(request: Request) -> SessionOut:
        return await _service(request).new_session(_key_id(request))


def _add_stream_route(app: FastAPI) -> None:
    """``WS /stream``: live PCM in, window predictions out."""

    @app.websocket("/stream")
    async def stream(ws: WebSocket) -> None:
        await _service(ws).run_stream(ws)
