"""Fixtures shared across test modules.

``run_dir`` is the tiny LSTM run of ``tests.support.tiny_run`` (trained once per test
session, one epoch on generated tones, a 1 s window); ``predictor`` loads it, once per
module so that no module sees another's compiled functions or settings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiny_run import tiny_run


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """The tiny LSTM run directory (serving, predict, stream and robustness tests)."""
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(run_dir):
    """``Predictor.load(run_dir)``: the tiny run as every entry point loads it."""
    from ser.inference import Predictor

    return Predictor.load(run_dir)
