"""An app factory for ``uvicorn --factory``: the service of the run directory named by
``SER_TEST_RUN_DIR``, as each worker process of a multi-worker server builds it.

    SER_TEST_RUN_DIR=RUN python -m uvicorn tests.support.tiny_app:tiny_app --factory --workers 2
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from ser.serving.app import create_app

RUN_DIR_ENV = "SER_TEST_RUN_DIR"


def tiny_app() -> FastAPI:
    """The service of ``$SER_TEST_RUN_DIR``, loaded at the worker's start-up."""
    run_dir = os.environ.get(RUN_DIR_ENV)
    if not run_dir:
        raise RuntimeError(f"{RUN_DIR_ENV} is not set: the run directory to serve")
    return create_app(run_dir=run_dir)
