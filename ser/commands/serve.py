"""``ser serve RUN_DIR``: the HTTP API, live WebSocket stream and web page (uvicorn)."""

from __future__ import annotations

import argparse

from ser.cli import add_runtime_arg, add_tensorflow_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a trained run: REST API, live microphone stream and web page",
        description="Load RUN_DIR once and serve POST /predict, /predict/batch, GET /health, "
        "/model, /docs, WS /stream and the live page at /.",
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
        help="require one of these API keys (one a line) on every route but /health, the "
        "page and the docs; keys in $SER_API_KEYS count too (default: no keys, open)",
    )
    p.add_argument(
        "--model-threads",
        type=int,
        help="TensorFlow threads for the model (default 1; 0 = all cores)",
    )
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    add_runtime_arg(p, "auto")
    add_tensorflow_args(p, on_demand=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    import uvicorn

    from ser.inference import Predictor, tune_for_inference
    from ser.serving.app import create_app, warm_batch_sizes
    from ser.serving.auth import load_api_keys
    from ser.serving.settings import load_settings

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
    )
    api_keys = load_api_keys(args.api_key_file)
    print(_access_line(api_keys, args.host), flush=True)
    tune_for_inference()
    predictor = Predictor.load(
        args.run_dir, tf_threads=settings.model_threads, runtime=args.runtime
    )
    started = time.time()
    if predictor.runtime != "keras":
        predictor.warm_up()
        name = {"numpy": "NumPy", "onnx": "ONNX Runtime"}[predictor.runtime]
        print(f"loaded {predictor.model_id} ({name}: nothing to compile)", flush=True)
    else:
        print(f"loaded {predictor.model_id}; compiling the model ...", flush=True)
        predictor.warm_up(warm_batch_sizes(settings.max_batch_windows))
        print(f"compiled in {time.time() - started:.1f} s", flush=True)
    app = create_app(predictor, settings=settings, api_keys=api_keys)
    print(
        f"serving {predictor.model_id} ({predictor.cfg.model.type}, labels: "
        f"{', '.join(predictor.labels)}) at http://{args.host}:{args.port}/  "
        f"(API docs: /docs)",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _access_line(api_keys, host: str) -> str:
    """Who may use the server, as its start-up output says it (key ids, never keys)."""
    if api_keys is None:
        return f"no API keys: anyone who can reach {host} may use the API"
    return (
        f"API keys required on every route but /health, the page and the docs: "
        f"{len(api_keys.ids)} key(s), ids {', '.join(api_keys.ids)}"
    )
