"""Speaker sessions in Redis, shared by every worker process of ``ser serve --workers N``.

``RedisSessionStore`` implements ``sessions.SessionStore`` on a Redis server
(``--session-store redis://host:port/db``). Each session is one hash, filed under the
SHA-256 of its token (never the token itself) in a namespace of the served model:
its owner (the API key id), the clips counted and, for a speaker-normalised model,
the sums of the clips' raw pooled vectors and of their squares (float64 bytes). A
sorted set of the sessions by last use keeps the most recent ``max_sessions`` of all
workers together. Every step that reads and writes is one Lua script, so it is atomic
across workers:

- a session expires ``session_idle_seconds`` after its last use (a Redis TTL,
  renewed on every use);
- counting a clip reads the statistics, lets ``Predictor.prepare_speech`` count the
  clip into them in this process, and saves them only if the session's count is still
  the one read; if another worker counted a clip meanwhile, the clip is prepared again
  on the new statistics. Each clip is therefore normalised exactly as by a single
  process's session that saw the clips in the order Redis took them.

Sessions outlive worker restarts (they are in Redis) but not a Redis restart without
persistence. When Redis cannot be reached every session call raises
``SessionStoreUnavailable`` within about a second (short timeouts, one retry), the
service answers 503, and requests without a session are not affected.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

import numpy as np

from ser.config import ConfigError
from ser.inference import SpeakerSession, SpeakerStatistics
from ser.serving.sessions import (
    MemorySessionStore,
    Prepared,
    Session,
    SessionEnded,
    SessionStore,
    SessionStoreUnavailable,
    new_token,
    token_digest,
)
from ser.serving.settings import ServingSettings, redis_address

# Seconds to wait for Redis to accept a connection, and then for each answer: a dead
# store must not hold a request for long.
CONNECT_TIMEOUT = 0.5
ANSWER_TIMEOUT = 0.5
# Tries of a clip against other workers adding to the same session at the same moment.
COUNT_ATTEMPTS = 20
VECTOR = np.dtype("<f8")

# Redis's clock in milliseconds, so that every worker orders sessions by one clock.
_NOW_MS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""
# KEYS: session, index. ARGV: idle ms, max sessions, index member, session key prefix,
# then the session's fields and values. Files the session, drops the idle ones from the
# index and pushes the least recently used out beyond max sessions.
_CREATE = (
    _NOW_MS
    + """
local idle = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[1], idle)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - idle)
redis.call('ZADD', KEYS[2], now, ARGV[3])
redis.call('PEXPIRE', KEYS[2], idle)
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[2])
if over > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #oldest, 2 do
    redis.call('DEL', ARGV[4] .. oldest[i])
  end
end
return 1
"""
)
# KEYS: session, index. ARGV: owner, idle ms, index member. The session's fields when
# it is live and the owner's (then marked used now), else nil.
_FIND = (
    _NOW_MS
    + """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return false
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return redis.call('HGETALL', KEYS[1])
"""
)
# KEYS: session. ARGV: count read, new count, sum, sum of squares, idle ms, writer id.
# 1 saved (or already saved by this writer: a retried call), 0 the count changed
# meanwhile, -1 the session ended.
_SAVE = """
local count = redis.call('HGET', KEYS[1], 'count')
if not count then
  return -1
end
if count ~= ARGV[1] then
  if count == ARGV[2] and redis.call('HGET', KEYS[1], 'writer') == ARGV[6] then
    return 1
  end
  return 0
end
redis.call('HSET', KEYS[1], 'count', ARGV[2], 'sum', ARGV[3], 'sum_sq', ARGV[4], 'writer', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""
# KEYS: index. ARGV: idle ms. The number of live sessions.
_LIVE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
return redis.call('ZCARD', KEYS[1])
"""
)


def open_session_store(
    settings: ServingSettings,
    new_speaker: Callable[[], SpeakerSession | None],
    namespace: str,
) -> SessionStore:
    """The store ``settings.session_store`` names: this process's memory when None,
    else Redis, with the sessions of the model ``namespace`` (its model id)."""
    if settings.session_store is None:
        return MemorySessionStore(new_speaker, settings.max_sessions, settings.session_idle_seconds)
    return RedisSessionStore(
        settings.session_store,
        new_speaker,
        settings.max_sessions,
        settings.session_idle_seconds,
        namespace,
    )


def redis_client(url: str) -> Any:
    """A client of the Redis at ``url`` with short timeouts and one immediate retry (a
    connection the server closed is opened again); ``ConfigError`` without the package."""
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        raise ConfigError(
            f"session_store {redis_address(url)}: needs the Python package 'redis' "
            "(pip install 'ser[redis]', or pip install redis)"
        ) from None
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=ANSWER_TIMEOUT,
        retry=Retry(NoBackoff(), 1),
    )


def check_session_store(url: str) -> None:
    """Ask the Redis at ``url`` for a PING; ``SessionStoreUnavailable`` saying why not
    (``ConfigError`` without the package)."""
    client = redis_client(url)
    import redis

    try:
        client.ping()
    except redis.RedisError as exc:
        raise _unavailable(url, exc) from None
    finally:
        client.close()


def _unavailable(url: str, exc: Exception) -> SessionStoreUnavailable:
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    return SessionStoreUnavailable(
        f"session store {redis_address(url)} unavailable ({reason}): speaker sessions "
        "cannot be started or used until it answers again; requests without ?session= "
        "are served as usual"
    )


class RedisSessionStore:
    """Speaker sessions in Redis (see the module's docstring)."""

    def __init__(
        self,
        url: str,
        new_speaker: Callable[[], SpeakerSession | None],
        limit: int,
        idle_seconds: float,
        namespace: str,
    ) -> None:
        self.url = url
        self.new_speaker = new_speaker
        self.limit = limit
        self.idle_seconds = idle_seconds
        self.prefix = f"ser:{namespace}:session:"
        self.index = f"ser:{namespace}:sessions"
        self.client = redis_client(url)
        self._scripts = {
            name: self.client.register_script(source)
            for name, source in (
                ("create", _CREATE),
                ("find", _FIND),
                ("save", _SAVE),
                ("live", _LIVE),
            )
        }

    @property
    def idle_ms(self) -> int:
        return max(1, round(self.idle_seconds * 1000))

    def __len__(self) -> int:
        """Live sessions of this model, all workers together."""
        return int(self._run("live", [self.index], [self.idle_ms]))

    def create(self, owner: str | None) -> Session:
        token, speaker = new_token(), self.new_speaker()
        member = token_digest(token).hex()
        fields: list[Any] = ["owner", json.dumps(owner), "count", 0]
        if speaker is not None:
            fields += _vector_fields(speaker.statistics())
        keys = [self.prefix + member, self.index]
        self._run("create", keys, [self.idle_ms, self.limit, member, self.prefix, *fields])
        return Session(token, owner, speaker, 0.0)

    def find(self, token: str, owner: str | None) -> Session | None:
        member = token_digest(token).hex()
        keys = [self.prefix + member, self.index]
        found = self._run("find", keys, [json.dumps(owner), self.idle_ms, member])
        if found is None:
            return None
        fields = dict(zip(found[::2], found[1::2], strict=True))
        return Session(token, owner, self._speaker(fields), 0.0)

    def update_speaker(
        self, session: Session, prepare: Callable[[SpeakerSession], Prepared]
    ) -> tuple[Prepared, int]:
        """``prepare`` on the statistics last read, saved if no other worker counted a
        clip of the session meanwhile; else read again and prepared again."""
        with session.lock:
            for _ in range(COUNT_ATTEMPTS):
                read = session.speaker.statistics()
                speaker = self.new_speaker().restore(read)
                result = prepare(speaker)
                if speaker.count == read.count or self._save(session.token, read, speaker):
                    session.speaker = speaker
                    return result, speaker.count
                session.speaker = self._reread(session.token)
        raise SessionStoreUnavailable(
            f"session store {redis_address(self.url)}: {COUNT_ATTEMPTS} tries to count a "
            "clip all met another request of the same session; send a session's clips "
            "one after another"
        )

    # ------------------------------------------------------------------ Redis
    def _save(self, token: str, read: SpeakerStatistics, speaker: SpeakerSession) -> bool:
        """Save ``speaker`` if the session still has the count ``read``; False if another
        request counted a clip meanwhile, ``SessionEnded`` if the session ended."""
        new = speaker.statistics()
        key = self.prefix + token_digest(token).hex()
        writer = secrets.token_hex(8)
        args = [read.count, new.count, *_vector_fields(new)[1::2], self.idle_ms, writer]
        saved = int(self._run("save", [key], args))
        if saved < 0:
            raise SessionEnded(token)
        return saved == 1

    def _reread(self, token: str) -> SpeakerSession:
        fields = self._call(self.client.hgetall, self.prefix + token_digest(token).hex())
        speaker = self._speaker(fields) if fields else None
        if speaker is None:
            raise SessionEnded(token)
        return speaker

    def _speaker(self, fields: dict[bytes, bytes]) -> SpeakerSession | None:
        """The speaker statistics a session's Redis fields hold (None: not normalised)."""
        speaker = self.new_speaker()
        if speaker is None or b"sum" not in fields:
            return None
        stats = SpeakerStatistics(
            int(fields[b"count"]),
            np.frombuffer(fields[b"sum"], VECTOR),
            np.frombuffer(fields[b"sum_sq"], VECTOR),
        )
        return speaker.restore(stats)

    def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        return self._call(self._scripts[script], keys=keys, args=args)

    def _call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``function`` of the Redis client; its failures as ``SessionStoreUnavailable``."""
        import redis

        try:
            return function(*args, **kwargs)
        except redis.RedisError as exc:
            raise _unavailable(self.url, exc) from None


def _vector_fields(stats: SpeakerStatistics) -> list[Any]:
    """The Redis fields of a speaker's sums: ``sum`` and ``sum_sq`` as float64 bytes."""
    return [
        "sum",
        np.asarray(stats.total, VECTOR).tobytes(),
        "sum_sq",
        np.asarray(stats.total_sq, VECTOR).tobytes(),
    ]
