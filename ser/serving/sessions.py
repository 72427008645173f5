"""Speaker sessions that no one but their holder can touch.

A speaker session gathers one speaker's clips so that a speaker-normalised model
normalises each clip by that speaker's statistics so far (``ser.inference.SpeakerSession``).
The server issues the session's name: a token of 128 random bits, answered by
``POST /sessions`` or by the first ``/predict?session=new``. The token is the only way
to add to a session or to read its count, and it works only with the API key that
made the session (with no keys configured, every client is the same owner). A session
ends when it has been idle for ``session_idle_seconds`` or when ``max_sessions`` newer
ones push it out; an unknown, ended or other key's token is answered alike, so a
client learns nothing from guessing.

``SessionStore`` is the interface the service uses; ``MemorySessionStore`` keeps the
sessions in this process. ``shared_sessions.RedisSessionStore`` keeps them in Redis, so
that the worker processes of ``ser serve --workers N`` share them; a store that cannot
be reached raises ``SessionStoreUnavailable`` (the service answers 503).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from ser.inference import SpeakerSession

TOKEN_BYTES = 16  # 128 bits
# ``?session=new`` asks for a new session; no token equals it (tokens are 22 characters).
NEW_SESSION = "new"
Prepared = TypeVar("Prepared")


class SessionStoreUnavailable(Exception):
    """The session store cannot be reached or failed; the message names it and why."""


class SessionEnded(Exception):
    """The session ended (idle, or pushed out by newer ones) while a request used it."""


@dataclass
class Session:
    """One speaker session: who owns it, the speaker statistics (None for a model that
    does not normalise by speaker) and the lock that guards them (requests prepare
    features in worker threads)."""

    token: str
    owner: str | None
    speaker: SpeakerSession | None
    last_used: float
    lock: threading.Lock = field(default_factory=threading.Lock)


class SessionStore(Protocol):
    """Where the service keeps its speaker sessions."""

    idle_seconds: float

    def create(self, owner: str | None) -> Session:
        """A new session of ``owner`` (an API key id, or None) with a fresh token."""
        ...

    def find(self, token: str, owner: str | None) -> Session | None:
        """The live session ``token`` of ``owner``, marked as used now; None when there
        is none (never issued, ended, or another owner's)."""
        ...

    def update_speaker(
        self, session: Session, prepare: Callable[[SpeakerSession], Prepared]
    ) -> tuple[Prepared, int]:
        """Run ``prepare`` on the session's speaker statistics (it counts clips into
        them) as one step that no other request of the session interleaves with, keep
        what it counted, and return its result and the session's count after it.
        ``SessionEnded`` when the session ended meanwhile. Only for a session whose
        ``speaker`` is not None."""
        ...


def new_token() -> str:
    """A fresh session token: ``TOKEN_BYTES`` random bytes, URL-safe."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(token: str) -> bytes:
    """The key a session is filed under: its token's SHA-256."""
    # Sessions are filed under the token's hash: the store holds no usable token, and a
    # lookup's time does not depend on how much of a guessed token is right.
    return hashlib.sha256(token.encode()).digest()


class MemorySessionStore:
    """Sessions in this process's memory, least recently used first."""

    def __init__(
        self,
        new_speaker: Callable[[], SpeakerSession | None],
        limit: int,
        idle_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.new_speaker = new_speaker
        self.limit = limit
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._drop_idle(self.clock())
            return len(self._sessions)

    def create(self, owner: str | None) -> Session:
        now = self.clock()
        session = Session(new_token(), owner, self.new_speaker(), now)
        with self._lock:
            self._drop_idle(now)
            self._sessions[token_digest(session.token)] = session
            while len(self._sessions) > self.limit:
                self._sessions.popitem(last=False)
        return session

    def find(self, token: str, owner: str | None) -> Session | None:
        now = self.clock()
        with self._lock:
            self._drop_idle(now)
            key = token_digest(token)
            session = self._sessions.get(key)
            if session is None or session.owner != owner:
                return None
            session.last_used = now
            self._sessions.move_to_end(key)
            return session

    def update_speaker(
        self, session: Session, prepare: Callable[[SpeakerSession], Prepared]
    ) -> tuple[Prepared, int]:
        """``prepare`` on the session's own statistics, under the session's lock."""
        with session.lock:
            result = prepare(session.speaker)
            return result, session.speaker.count

    def _drop_idle(self, now: float) -> None:
        """End the sessions idle for ``idle_seconds`` (the oldest-used come first)."""
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if now - oldest.last_used < self.idle_seconds:
                return
            self._sessions.popitem(last=False)
