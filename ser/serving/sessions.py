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
sessions in this process. A store shared by several processes can replace it.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ser.inference import SpeakerSession

TOKEN_BYTES = 16  # 128 bits
# ``?session=new`` asks for a new session; no token equals it (tokens are 22 characters).
NEW_SESSION = "new"


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


def _digest(token: str) -> bytes:
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
        session = Session(secrets.token_urlsafe(TOKEN_BYTES), owner, self.new_speaker(), now)
        with self._lock:
            self._drop_idle(now)
            self._sessions[_digest(session.token)] = session
            while len(self._sessions) > self.limit:
                self._sessions.popitem(last=False)
        return session

    def find(self, token: str, owner: str | None) -> Session | None:
        now = self.clock()
        with self._lock:
            self._drop_idle(now)
            key = _digest(token)
            session = self._sessions.get(key)
            if session is None or session.owner != owner:
                return None
            session.last_used = now
            self._sessions.move_to_end(key)
            return session

    def _drop_idle(self, now: float) -> None:
        """End the sessions idle for ``idle_seconds`` (the oldest-used come first)."""
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if now - oldest.last_used < self.idle_seconds:
                return
            self._sessions.popitem(last=False)
