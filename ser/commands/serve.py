"""``ser serve RUN_DIR``: the HTTP API, live WebSocket stream and web page (uvicorn)."""

from __future__ import annotations

import argparse

from ser.cli import add_runtime_arg, add_tensorflow_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a trained run: REST API, live microphone stream and web page",
        description="Load RUN_DIR once and serve POST /predict, /predict/batch, GET /health, "
        "/ready, /metrics, /model, /docs, WS /stream and the live page at /.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. checkpoints/best")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--settings", metavar="FILE.yaml", help="serving settings file (keys below)")
    p.add_argument(
        "--max-upload-mb", type=float, help="largest upload per file in MiB (default 10)"
    )
    p.add_argument("--max-clip-seconds", type=float, help="longest clip accepted (default 120)")
    p.add_argument("--max-batch-files", type=int, help="files per /predict/batch (default 16)")
    p.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="allow browser calls from this origin, e.g. https://example.org (repeatable; "
        "default: CORS off)",
    )
    p.add_argument(
        "--max-active-uploads",
        type=int,
        help="upload requests processed at once (default: two per core, fewer if memory is short)",
    )
    p.add_argument(
        "--rate-limit-per-minute",
        type=int,
        help="requests a minute per API key or client address (default 600; 0 = no limit)",
    )
    p.add_argument("--max-streams", type=int, help="live streams open at once (default 32)")
    p.add_argument("--stream-window", type=float, help="live window in seconds (default 2)")
    p.add_argument("--stream-hop", type=float, help="seconds between live windows (default 0.5)")
    p.add_argument(
        "--no-speech-check",
        dest="speech_check",
        action="store_const",
        const=False,
        help="predict every clip and live window, even silence, noise or music (default: "
        "they are answered no_speech)",
    )
    p.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="require one of these API keys (one a line) on every route but /health, "
        "/ready, the page and the docs; keys in $SER_API_KEYS count too (default: no keys, open)",
    )
    p.add_argument(
        "--model-threads",
        type=int,
        help="TensorFlow threads for the model (default 1; 0 = all cores)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes, each loading the model and answering on the same port "
        "(default 1). More than one needs --session-store: speaker sessions kept in one "
        "process's memory would be split across the workers",
    )
    p.add_argument(
        "--session-store",
        metavar="URL",
        help="keep speaker sessions in Redis, e.g. redis://127.0.0.1:6379/0, shared by all "
        "workers and kept across restarts (needs the 'redis' package: pip install "
        "'ser[redis]'; default: this process's memory)",
    )
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    add_runtime_arg(p, "auto")
    add_tensorflow_args(p, on_demand=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ser.serving.app import create_app
    from ser.serving.auth import load_api_keys
    from ser.serving.settings import load_settings
    from ser.serving.workers import loaded_predictor

    settings = load_settings(
        args.settings,
        max_upload_mb=args.max_upload_mb,
        max_clip_seconds=args.max_clip_seconds,
        max_batch_files=args.max_batch_files,
        cors_origins=args.cors_origin,
        max_active_uploads=args.max_active_uploads,
        rate_limit_per_minute=args.rate_limit_per_minute,
        max_streams=args.max_streams,
        stream_window=args.stream_window,
        stream_hop=args.stream_hop,
        speech_check=args.speech_check,
        model_threads=args.model_threads,
        session_store=args.session_store,
    )
    _check_workers(args.workers, settings)
    api_keys = load_api_keys(args.api_key_file)
    print(_access_line(api_keys, args.host), flush=True)
    print(_sessions_line(settings), flush=True)
    if args.workers > 1:
        return _serve_with_workers(args, settings)
    predictor = loaded_predictor(args.run_dir, settings, args.runtime, say=_say)
    app = create_app(predictor, settings=settings, api_keys=api_keys, tuned=True)
    print(
        f"serving {predictor.model_id} ({predictor.cfg.model.type}, labels: "
        f"{', '.join(predictor.labels)}) at http://{args.host}:{args.port}/  "
        f"(API docs: /docs)",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


def _check_workers(workers: int, settings) -> None:
    """Refuse worker counts that cannot work: below one, or several without a shared
    session store (each worker would hold its own sessions, and a session's next
    request would reach another worker, which answers 404)."""
    from ser.config import ConfigError

    if workers < 1:
        raise ConfigError(f"--workers: must be at least 1, got {workers}")
    if workers > 1 and settings.session_store is None:
        raise ConfigError(
            f"--workers {workers}: speaker sessions would be split across the workers "
            "(each keeps its own in memory); give --session-store redis://HOST:PORT/DB "
            "(or session_store in --settings) so that they share them"
        )


def _sessions_line(settings) -> str:
    """Where speaker sessions are kept, as the start-up output says it: the Redis store
    without its credentials, and a warning if it does not answer now (session requests
    get 503 until it does). A missing ``redis`` package is an error (``ConfigError``)."""
    from ser.serving.sessions import SessionStoreUnavailable
    from ser.serving.settings import redis_address
    from ser.serving.shared_sessions import check_session_store

    if settings.session_store is None:
        return "speaker sessions: in this process's memory"
    try:
        check_session_store(settings.session_store)
    except SessionStoreUnavailable as exc:
        return f"warning: {exc}"
    return f"speaker sessions: shared in Redis at {redis_address(settings.session_store)}"


def _serve_with_workers(args: argparse.Namespace, settings) -> int:
    """uvicorn with ``args.workers`` processes, each building its app (``worker_app``)."""
    import os

    import uvicorn

    from ser.runs import check_run_dir
    from ser.serving.metrics import multiprocess_metrics
    from ser.serving.workers import WORKER_APP, worker_environment

    check_run_dir(args.run_dir)  # a wrong path fails here, not in every worker
    settings = _share_default_uploads(settings, args.workers)
    os.environ.update(worker_environment(args.run_dir, settings, args.runtime, args.api_key_file))
    print(
        f"serving {args.run_dir} with {args.workers} worker processes at "
        f"http://{args.host}:{args.port}/  (API docs: /docs)",
        flush=True,
    )
    with multiprocess_metrics():  # GET /metrics adds up the workers' counts
        uvicorn.run(
            WORKER_APP,
            factory=True,
            workers=args.workers,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
        )
    return 0


def _share_default_uploads(settings, workers: int):
    """``settings`` with the default ``max_active_uploads`` (sized for the whole machine's
    cores and memory) divided among ``workers``; a value that was given is kept."""
    if "max_active_uploads" in settings.model_fields_set:
        return settings
    share = max(1, settings.max_active_uploads // workers)
    return settings.model_copy(update={"max_active_uploads": share})


def _access_line(api_keys, host: str) -> str:
    """Who may use the server, as its start-up output says it (key ids, never keys)."""
    if api_keys is None:
        return f"no API keys: anyone who can reach {host} may use the API"
    return (
        f"API keys required on every route but /health, /ready, the page and the docs: "
        f"{len(api_keys.ids)} key(s), ids {', '.join(api_keys.ids)}"
    )
