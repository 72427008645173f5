"""Getting a process ready to serve, and ``ser serve --workers N``'s worker processes.

``loaded_predictor`` is what every serving process does once before it answers: tune
the process for inference, load the run and say so (the app's inference thread then
warms the model up once, after the port opens: ``GET /ready``). ``ser serve`` calls it
once in its own process; with ``--workers N`` uvicorn spawns N processes that accept
connections on one socket (their metrics added up through ``metrics.py``'s
multiprocess mode), and each builds its app with ``worker_app``, the factory uvicorn
imports (``WORKER_APP``), from what ``ser serve`` put in the ``SER_SERVE_WORKER``
environment variable (``worker_environment``): the run directory, the runtime, the
settings and the API key file (keys are read by each worker, never passed on). Each worker loads its own copy of the model; speaker
sessions are shared only through a session store outside them (``shared_sessions.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from ser.inference import Predictor, tune_for_inference
from ser.serving.settings import ServingSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

WORKER_ENV = "SER_SERVE_WORKER"
WORKER_APP = "ser.serving.workers:worker_app"


def loaded_predictor(
    run_dir: str,
    settings: ServingSettings,
    runtime: str,
    say: Callable[[str], None] = print,
) -> Predictor:
    """Tune this process (``tune_for_inference``) and load ``run_dir``, telling ``say``
    what was loaded. The model is warmed up later, once, by the app's inference thread
    (``create_app(..., tuned=True)``), so the port opens before a Keras model compiles."""
    tune_for_inference()
    predictor = Predictor.load(run_dir, tf_threads=settings.model_threads, runtime=runtime)
    name = {"numpy": "NumPy", "onnx": "ONNX Runtime", "keras": "Keras"}[predictor.runtime]
    say(f"loaded {predictor.model_id} ({name}); GET /ready answers 200 once it is warmed up")
    return predictor


def worker_environment(
    run_dir: str, settings: ServingSettings, runtime: str, api_key_file: str | None
) -> dict[str, str]:
    """The environment variable that tells ``worker_app`` what to serve."""
    job = {
        "run_dir": str(run_dir),
        "runtime": runtime,
        "settings": settings.model_dump(mode="json"),
        "api_key_file": api_key_file,
    }
    return {WORKER_ENV: json.dumps(job)}


def worker_app() -> FastAPI:
    """One worker process's app: the job of ``worker_environment``, ready to serve."""
    from ser.serving.app import create_app
    from ser.serving.auth import load_api_keys

    try:
        job = json.loads(os.environ[WORKER_ENV])
    except (KeyError, ValueError):
        raise RuntimeError(
            f"{WORKER_APP} is started by `ser serve --workers N`, which sets {WORKER_ENV}"
        ) from None
    settings = ServingSettings.model_validate(job["settings"])
    pid = os.getpid()
    predictor = loaded_predictor(
        job["run_dir"],
        settings,
        job["runtime"],
        say=lambda line: print(f"worker {pid}: {line}", flush=True),
    )
    api_keys = load_api_keys(job["api_key_file"])
    return create_app(predictor, settings=settings, api_keys=api_keys, tuned=True)
