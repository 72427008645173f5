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
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ser.config import ConfigError
from ser.speech import DEFAULT_THRESHOLDS, SpeechThresholds

# Peak memory one admitted upload adds to the server, in MiB: ``per_upload_mb`` of
# ``python -m bench.abuse`` (149.7, ROBUSTNESS.md's "load and abuse" table: an OGG that
# decodes to 119 s of 48 kHz stereo, the larger of its two uploads at the default
# max_upload_mb and max_clip_seconds).
UPLOAD_MEMORY_MB = 150.0
# Share of the memory available at start-up that admitted uploads may take together.
UPLOAD_MEMORY_SHARE = 0.5
MEMINFO = Path("/proc/meminfo")
REDIS_SCHEMES = ("redis", "rediss")
CGROUP = Path("/sys/fs/cgroup")


def _read_number(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 says "max" for no limit


def available_memory_mb() -> float | None:
    """Memory this process may still take, in MiB: the system's available memory, or
    what is left under the container's (cgroup v2) limit if that is less; None when
    neither can be read."""
    found: list[float] = []
    try:
        for line in MEMINFO.read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) / 1024)  # kB
    except (OSError, ValueError, IndexError):
        pass
    limit = _read_number(CGROUP / "memory.max")
    used = _read_number(CGROUP / "memory.current")
    if limit is not None and used is not None:
        found.append(max(0, limit - used) / 2**20)
    return min(found) if found else None


def default_active_uploads() -> int:
    """Uploads processed at once by default: two per core (an admitted upload spends part
    of its time off the cores, receiving its body or waiting for the model), fewer when
    that many would take more than ``UPLOAD_MEMORY_SHARE`` of the available memory."""
    by_cores = 2 * (os.cpu_count() or 1)
    memory = available_memory_mb()
    if memory is None:
        return by_cores
    return max(1, min(by_cores, int(memory * UPLOAD_MEMORY_SHARE / UPLOAD_MEMORY_MB)))


class ServingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Uploads (POST /predict, /predict/batch).
    # Per file, in MiB (2**20 bytes); larger files get 413.
    max_upload_mb: float = Field(default=10.0, gt=0)
    max_clip_seconds: float = Field(default=120.0, gt=0)  # longer clips get 422
    max_batch_files: int = Field(default=16, ge=1)  # more files in one batch request get 422
    # Upload requests read, decoded and answered at once; up to ``upload_queue`` more
    # wait (bodies unread), beyond that 503 with Retry-After (see limits.py).
    max_active_uploads: int = Field(default_factory=default_active_uploads, ge=1)
    upload_queue: int = Field(default=32, ge=0)
    # Requests a minute per API key, or per client address without keys (429 beyond;
    # /health and static files exempt); 0 = no limit.
    rate_limit_per_minute: int = Field(default=600, ge=0)
    # Browser origins allowed to call the API from other pages (scheme://host[:port],
    # never "*"); empty = CORS off.
    cors_origins: list[str] = []
    # Live stream (WS /stream).
    stream_window: float = Field(default=2.0, gt=0, le=30)  # seconds per prediction window
    stream_hop: float = Field(default=0.5, gt=0)  # seconds between window starts
    stream_max_seconds: float = Field(default=3600.0, gt=0)  # per connection
    stream_max_chunk_seconds: float = Field(default=5.0, gt=0)  # per binary message
    max_streams: int = Field(default=32, ge=1)  # open at once; more are closed with 1013
    stream_idle_seconds: float = Field(default=30.0, gt=0)  # silent this long: closed, 1008
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
    # Speaker-normalised models: how much more a session leans on the average training
    # speaker while its clips vary less than that speaker's (e.g. a run of one emotion);
    # ``ser.inference.SpeakerSession``'s ``spread_exponent``. 0 = the plain running blend.
    # docs/served_conditions.md ("Session statistics") measures it.
    session_spread_exponent: float = Field(default=0.0, ge=0, le=16)
    # Where the sessions live: None, this process's memory; ``redis://host:port/db``
    # (``rediss://`` for TLS), a Redis server that every worker process of every server
    # of the same model shares (``shared_sessions.py``); ``max_sessions`` then bounds
    # them all together.
    session_store: str | None = None
    # TensorFlow threads for the model (0 = TensorFlow's default, one per core). One
    # leaves the other cores to decoding, features and HTTP; applied by `ser serve`.
    model_threads: int = Field(default=1, ge=0)

    @field_validator("cors_origins")
    @classmethod
    def _origins_are_named(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if "*" in origin:
                raise ValueError(
                    f"{origin!r} would let any web site call this API from its visitors' "
                    "browsers; list the origins that may, e.g. https://app.example"
                )
            scheme, _, rest = origin.partition("://")
            if scheme not in ("http", "https") or not rest or "/" in rest:
                raise ValueError(
                    f"{origin!r} is not an origin; write scheme://host[:port], "
                    "e.g. https://app.example"
                )
        return origins

    @field_validator("session_store")
    @classmethod
    def _store_is_a_redis_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018  (parsed on access)
        except ValueError:
            raise ValueError("the port must be a number, e.g. redis://host:6379/0") from None
        if parts.scheme not in REDIS_SCHEMES or not parts.hostname:
            raise ValueError(
                "not a Redis URL; write redis://host:port/db (rediss:// for TLS), "
                "e.g. redis://127.0.0.1:6379/0"
            )
        database = parts.path.strip("/")
        if database and not database.isdigit():
            raise ValueError(
                f"the database in {redis_address(url)} must be a number, e.g. redis://host:6379/0"
            )
        return url

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


def redis_address(url: str) -> str:
    """``redis://user:secret@host:port/db`` -> ``redis://host:port/db``: the store named
    in messages and logs without its credentials."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


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
