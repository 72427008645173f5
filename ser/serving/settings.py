"""Deployment settings of the HTTP service: limits, CORS, live-stream windows, speech check.

These describe a deployment, not a trained run, so they are not part of the run's
``run.yaml``: ``ser serve`` builds them from its flags (or a YAML file given with
``--settings``), with the same strictness as the training config: an unknown key
or a value out of range fails at start-up, naming the key.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ser.config import ConfigError
from ser.speech import DEFAULT_THRESHOLDS, SpeechThresholds


class ServingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Uploads (POST /predict, /predict/batch).
    # Per file, in MiB (2**20 bytes); larger files get 413.
    max_upload_mb: float = Field(default=10.0, gt=0)
    max_clip_seconds: float = Field(default=120.0, gt=0)  # longer clips get 422
    max_batch_files: int = Field(default=16, ge=1)  # more files in one batch request get 422
    # Browser origins allowed to call the API from other pages; empty = CORS off.
    cors_origins: list[str] = []
    # Live stream (WS /stream).
    stream_window: float = Field(default=2.0, gt=0, le=30)  # seconds per prediction window
    stream_hop: float = Field(default=0.5, gt=0)  # seconds between window starts
    stream_max_seconds: float = Field(default=3600.0, gt=0)  # per connection
    stream_max_chunk_seconds: float = Field(default=5.0, gt=0)  # per binary message
    # Speech check (``ser.speech``) before every prediction, uploads and stream windows:
    # a clip is speech when at least ``speech_min_voiced`` of its 10 ms frames lie in
    # voiced runs and at most ``speech_max_flat`` of those lie in flat-pitched (tonal)
    # runs; other clips get ``no_speech``. ``speech_check: false`` predicts everything.
    speech_check: bool = True
    speech_min_voiced: float = Field(default=DEFAULT_THRESHOLDS.min_voiced, gt=0, le=1)
    speech_max_flat: float = Field(default=DEFAULT_THRESHOLDS.max_flat, ge=0, le=1)
    # Inference: requests waiting for the model are run together, up to this many windows.
    max_batch_windows: int = Field(default=32, ge=1, le=32)
    # Speaker sessions (``POST /sessions``, ``?session=<token>`` on /predict, see
    # ``sessions.py``): the most recently used this many are kept, each until it has been
    # idle this many seconds.
    max_sessions: int = Field(default=1000, ge=1)
    session_idle_seconds: float = Field(default=1800.0, gt=0)
    # TensorFlow threads for the model (0 = TensorFlow's default, one per core). One
    # leaves the other cores to decoding, features and HTTP; applied by `ser serve`.
    model_threads: int = Field(default=1, ge=0)

    @model_validator(mode="after")
    def _hop_fits(self) -> ServingSettings:
        if self.stream_hop > self.stream_window:
            raise ValueError(
                f"stream_hop ({self.stream_hop}) must be <= stream_window ({self.stream_window})"
            )
        return self

    @property
    def max_upload_bytes(self) -> int:
        """``max_upload_mb`` in bytes (binary megabytes, MiB)."""
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def speech_thresholds(self) -> SpeechThresholds:
        """The speech detector's thresholds with this deployment's settings."""
        return replace(
            DEFAULT_THRESHOLDS,
            min_voiced=self.speech_min_voiced,
            max_flat=self.speech_max_flat,
        )


def load_settings(
    path: str | os.PathLike[str] | None = None, **overrides: object
) -> ServingSettings:
    """Settings from an optional YAML file, then keyword overrides (None = not given)."""
    tree: dict[str, object] = {}
    source = str(path) if path else "serving settings"
    if path:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"{file}: settings file not found")
        try:
            raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: top level must be a mapping of settings")
        tree.update(raw)
    tree.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServingSettings.model_validate(tree)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            if err["type"] == "extra_forbidden":
                valid = ", ".join(ServingSettings.model_fields)
                lines.append(f"{where}: unknown setting (valid: {valid})")
            else:
                lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError(f"{source}: invalid:\n  " + "\n  ".join(lines)) from None
