"""How much work the service takes on, from whom, and the headers every answer carries.

One owner for what the server turns away before a route runs, and why:

- ``UploadGate`` + ``UploadAdmission``: at most ``max_active_uploads`` upload requests
  (``POST /predict``, ``/predict/batch``) are read, decoded and answered at once. Up to
  ``upload_queue`` more wait their turn with their bodies unread (uvicorn stops reading
  a connection whose body nobody asks for), and a request beyond that is answered 503
  with ``Retry-After`` at once. Memory therefore grows with the admitted requests only,
  however many arrive.
- ``RateLimiter`` + ``RateLimit``: ``rate_limit_per_minute`` requests a minute per API
  key (``request.state.api_key_id``, set by an authentication middleware outside this
  one) or else per client address; beyond it 429 with ``Retry-After``. ``/health``,
  ``/ready`` and static files are exempt.
- ``Occupancy``: a count of things in progress with its high-water mark and, when it
  has a cap, the number turned away; used for open live streams (``max_streams``, the
  stream closes with 1013) and for clips being decoded (shown on ``/health``).
- ``SecurityHeaders``: ``X-Content-Type-Options: nosniff`` and a Content-Security-Policy
  that allows the pages only their own scripts and styles, on every HTTP response.

Refusals are JSON ``{"detail": ..., "field": null}`` like the API's other errors.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Self

from starlette.datastructures import MutableHeaders
from starlette.requests import Request

from ser.serving.settings import ServingSettings

UPLOAD_PATHS = ("/predict", "/predict/batch")
# Never rate limited: liveness and readiness probes, and the files a page loads (one page view loads
# several; the page itself is counted).
RATE_EXEMPT_PATHS = ("/health", "/ready", "/favicon.ico")
RATE_EXEMPT_PREFIXES = ("/static/", "/static-offline-docs/")
# ReDoc (fastapi-offline's redoc.standalone.js) adds two <style> elements: an empty one
# that its styled-components then fill through the CSSOM, and perfect-scrollbar's fixed
# stylesheet. These hashes of their contents admit exactly those two and no other inline
# style; the page tests in Chromium fail if another ReDoc release changes them.
REDOC_STYLE_HASHES = (
    "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='",
    "'sha256-QMIg+bpjm3JdElJ388KYke01izlUW0UoNOeKjpMxdgc='",
)
# The pages (live page, /docs, /redoc) run only scripts served from this origin (no
# inline script anywhere), use its stylesheets and talk only to it (the live stream
# included: 'self' covers ws: on the same host and port). Element styles set from a
# script (the bar widths) are not inline styles and need no exception; ReDoc runs its
# search in a worker made from a blob.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; "
    f"style-src 'self' {' '.join(REDOC_STYLE_HASHES)}; img-src 'self' data:; "
    "connect-src 'self'; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
# Smoothing of the mean time an admitted upload holds its slot (for Retry-After).
HOLD_SMOOTHING = 0.2
# Clients whose rate is tracked at once; the least recently seen is forgotten first.
MAX_TRACKED_CLIENTS = 100_000


async def send_error(send, status: int, detail: str, headers: Iterable[tuple[str, str]] = ()):
    """Answer an HTTP request from ASGI middleware with the API's JSON error body."""
    body = json.dumps({"detail": detail, "field": None}).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


# ------------------------------------------------------------------ counting
class Occupancy:
    """How many of something are in progress, the most there have been at once, and how
    many were turned away for finding ``cap`` already in progress (thread-safe: clips
    are decoded in worker threads)."""

    def __init__(self, cap: int | None = None) -> None:
        self.cap = cap
        self.now = 0
        self.peak = 0
        self.refused = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        """Count one more in progress, unless ``cap`` are already (then count a refusal)."""
        with self._lock:
            if self.cap is not None and self.now >= self.cap:
                self.refused += 1
                return False
            self.now += 1
            self.peak = max(self.peak, self.now)
            return True

    def leave(self) -> None:
        with self._lock:
            self.now -= 1

    def __enter__(self) -> Self:
        """Count one in progress for a ``with`` block (an occupancy without a cap)."""
        if not self.try_enter():
            raise RuntimeError(f"more than {self.cap} at once")
        return self

    def __exit__(self, *exc: object) -> None:
        self.leave()


# ------------------------------------------------------------------ bounded work
class Overloaded(Exception):
    """Every upload slot is taken and the queue behind them is full."""

    def __init__(self, message: str, wait_seconds: float) -> None:
        super().__init__(message)
        self.wait_seconds = wait_seconds


class UploadGate:
    """``capacity`` upload slots and a first-come-first-served queue of ``queue_size``
    requests waiting for one; a request finding both full is refused (``Overloaded``).
    Used from the event loop only."""

    def __init__(self, capacity: int, queue_size: int, clock: Callable[[], float] = time.monotonic):
        self.capacity = capacity
        self.queue_size = queue_size
        self.active = 0
        self.peak_active = 0
        self.refused = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._clock = clock
        self._mean_hold = 1.0  # seconds, until the first admitted request finishes

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def estimated_wait(self) -> float:
        """Seconds until a queue place is likely to free up: the queue ahead, served
        ``capacity`` at a time at the recent mean time per request."""
        return self._mean_hold * (self.waiting + 1) / self.capacity

    async def acquire(self) -> float:
        """Wait for a slot (first come, first served); returns the clock at admission."""
        if not self._waiters and self.active < self.capacity:
            self.active += 1
            self.peak_active = max(self.peak_active, self.active)
            return self._clock()
        if self.waiting >= self.queue_size:
            self.refused += 1
            raise Overloaded(
                f"server busy: {self.capacity} uploads are being processed and "
                f"{self.waiting} more are queued (settings max_active_uploads, upload_queue); "
                "retry later",
                self.estimated_wait(),
            )
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # resolved by ``_hand_over``, which passes a slot on
        except asyncio.CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif not waiter.cancelled():  # the slot arrived as the client left: pass it on
                self._hand_over()
            raise
        return self._clock()

    def release(self, admitted_at: float) -> None:
        """Give the slot taken at ``admitted_at`` to the next waiter, or free it."""
        held = self._clock() - admitted_at
        self._mean_hold += HOLD_SMOOTHING * (held - self._mean_hold)
        self._hand_over()

    def _hand_over(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves on: ``active`` stays the same
                return
        self.active -= 1


class UploadAdmission:
    """ASGI middleware: upload requests wait for an ``UploadGate`` slot before their body
    is read, and hold it until their answer is sent; refused ones get 503."""

    def __init__(self, app, gate: UploadGate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            admitted_at = await self.gate.acquire()
        except Overloaded as busy:
            wait = retry_after(busy.wait_seconds)
            await send_error(send, 503, str(busy), [("retry-after", wait)])
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.release(admitted_at)


# ------------------------------------------------------------------ rate limits
def client_key(request: Request) -> str:
    """Whom a request counts against: its API key when one authenticated it, else the
    address it came from (behind a proxy, that of the proxy unless uvicorn is told to
    trust its forwarding headers)."""
    key_id = getattr(request.state, "api_key_id", None)
    if key_id:
        return f"key {key_id}"
    return f"address {request.client.host if request.client else 'unknown'}"


class RateLimiter:
    """A token bucket per client: ``per_minute`` requests a minute, refilled evenly, in
    bursts of up to a minute's worth. A bucket left alone for a minute is full again,
    the same as a new one, so forgetting the least recently seen clients (beyond
    ``max_clients``) loses nothing but their last minute."""

    def __init__(
        self,
        per_minute: int,
        max_clients: int = MAX_TRACKED_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = per_minute
        self.max_clients = max_clients
        self.refused = 0
        self._per_second = per_minute / 60.0
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._clock = clock

    def wait_seconds(self, client: str) -> float:
        """Take one request from ``client``'s bucket: 0 if it may go ahead, else the
        seconds until its next request would be allowed (nothing is taken then)."""
        now = self._clock()
        tokens, last = self._buckets.pop(client, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - last) * self._per_second)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self._per_second
            self.refused += 1
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


def rate_exempt(path: str) -> bool:
    return path in RATE_EXEMPT_PATHS or path.startswith(RATE_EXEMPT_PREFIXES)


class RateLimit:
    """ASGI middleware: HTTP requests beyond a client's rate get 429 with ``Retry-After``."""

    def __init__(self, app, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or rate_exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        who = client_key(Request(scope))
        wait = self.limiter.wait_seconds(who)
        if wait:
            detail = (
                f"too many requests from {who}: at most {self.limiter.per_minute} a minute "
                f"(setting rate_limit_per_minute); retry in {retry_after(wait)} s"
            )
            await send_error(send, 429, detail, [("retry-after", retry_after(wait))])
            return
        await self.app(scope, receive, send)


# ------------------------------------------------------------------ headers
class SecurityHeaders:
    """ASGI middleware: ``nosniff`` and the Content-Security-Policy on every HTTP response."""

    def __init__(self, app, policy: str = CONTENT_SECURITY_POLICY) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Content-Security-Policy"] = self.policy
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ------------------------------------------------------------------ together
@dataclass
class ServiceLimits:
    """The state of every limit of one app: shared by its middleware, its routes and
    ``/health``."""

    uploads: UploadGate
    rates: RateLimiter | None  # None: rate limiting off
    streams: Occupancy
    decoding: Occupancy

    @classmethod
    def from_settings(cls, settings: ServingSettings) -> ServiceLimits:
        per_minute = settings.rate_limit_per_minute
        return cls(
            uploads=UploadGate(settings.max_active_uploads, settings.upload_queue),
            rates=RateLimiter(per_minute) if per_minute else None,
            streams=Occupancy(settings.max_streams),
            decoding=Occupancy(),
        )
