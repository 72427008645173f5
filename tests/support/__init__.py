"""Helpers the tests share: ``fakes`` (generated corpora and audio files), ``tiny_run``
(a run trained in seconds, its configs and test tones), ``badinputs`` (the catalogue of
awkward inputs) and ``robustlog`` (what ROBUSTNESS.md is rendered from)."""

from __future__ import annotations

import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The project's root folder (configs/, train.py, ...)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
