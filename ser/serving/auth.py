"""API keys: who may use the service.

A deployment without keys is open to whoever can reach it (``ser serve`` listens on
loopback unless told otherwise). With keys (``--api-key-file``, one key a line, and/or
the ``SER_API_KEYS`` environment variable) every HTTP request needs
``Authorization: Bearer <key>`` except the open paths: ``/health`` and ``/ready`` (the
probes of load balancers and orchestrators carry no key), the web page and the files it
loads, and the API docs pages with the OpenAPI document they read (their
*Authorize* button then adds the key). A missing or wrong key gets 401 with
``WWW-Authenticate: Bearer``. ``WS /stream`` takes the key in the same header or, as
browsers cannot set headers on a WebSocket, in a first text message
``{"type": "auth", "key": "..."}``; a missing or wrong key closes it with 1008.

Keys are held only as SHA-256 digests and compared with ``hmac.compare_digest``
against every known key, so neither the time taken nor the logs reveal a key. A key is
named by its id, the first 8 hex digits of its SHA-256 (``request.state.api_key_id``),
for logs, rate limits and the ownership of speaker sessions.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from ser.config import ConfigError
from ser.serving.stream import StreamError

API_KEYS_ENV = "SER_API_KEYS"
MIN_KEY_LENGTH = 16
KEY_ID_HEX = 8
# A key goes into an HTTP header: visible ASCII, no spaces.
KEY_PATTERN = re.compile(r"[\x21-\x7e]+")
KEY_ADVICE = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
# What loads without a key: liveness and readiness, the page and its files, the docs
# pages and the OpenAPI document they are drawn from. Everything else, present or
# future, needs one (/metrics included: it names the model and shows the traffic).
OPEN_PATHS = frozenset(
    {
        "/",
        "/health",
        "/ready",
        "/favicon.ico",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
    }
)
OPEN_PREFIXES = ("/static/", "/static-offline-docs/")
# A stream without the header has this long to send its auth message.
AUTH_MESSAGE_SECONDS = 10.0
CLOSE_POLICY = 1008
SECURITY_SCHEME = "APIKey"
LOG = logging.getLogger("uvicorn.error")
# The loggers uvicorn and its WebSocket library write requests, headers and frames to.
SERVER_LOGGERS = ("uvicorn.error", "uvicorn.access")
REDACTED = "[redacted]"
SESSION_IN_QUERY = re.compile(r"(\bsession=)[^&\s\"]+")


def key_id(key: str) -> str:
    """The short, non-reversible name of ``key``: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:KEY_ID_HEX]


def is_open(path: str) -> bool:
    """Whether ``path`` is served without a key."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class APIKeys:
    """The keys a deployment accepts, held as SHA-256 digests."""

    def __init__(self, keys: Iterable[str]) -> None:
        unique = list(dict.fromkeys(keys))
        if not unique:
            raise ValueError("APIKeys needs at least one key")
        self._known = [(hashlib.sha256(k.encode()).digest(), key_id(k)) for k in unique]

    @property
    def ids(self) -> list[str]:
        return [ident for _, ident in self._known]

    def identify(self, presented: str | None) -> str | None:
        """The id of the key ``presented``, or None if it is not one of these keys.

        Every known key is compared, in constant time, whichever matches: the time taken
        says nothing about which key, or how much of one, was right."""
        if presented is None:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for known, ident in self._known:
            if hmac.compare_digest(digest, known):
                found = ident
        return found


# ---------------------------------------------------------------------- loading keys
def _checked_keys(source: str, candidates: Iterable[tuple[str, str]]) -> list[str]:
    """The keys of ``(where, key)`` pairs, or a ConfigError naming the place of a bad
    one (never the key itself)."""
    keys = []
    for where, key in candidates:
        if not KEY_PATTERN.fullmatch(key):
            raise ConfigError(
                f"{source}: {where}: a key may hold only visible ASCII characters, no spaces"
            )
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigError(
                f"{source}: {where} is {len(key)} characters long; use at least "
                f"{MIN_KEY_LENGTH} ({KEY_ADVICE})"
            )
        keys.append(key)
    return keys


def keys_from_file(path: str | os.PathLike[str]) -> list[str]:
    """The keys of an API key file: one a line; blank lines and ``#`` comments skipped."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: API key file not found (--api-key-file)") from None
    except IsADirectoryError:
        raise ConfigError(f"{file}: API key file is a folder, not a file") from None
    except OSError as exc:
        raise ConfigError(f"{file}: API key file cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: API key file is not UTF-8 text") from None
    lines = [(f"line {n}", line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    keys = _checked_keys(str(file), [(w, k) for w, k in lines if k and not k.startswith("#")])
    if not keys:
        raise ConfigError(
            f"{file}: API key file holds no keys (one key a line; blank lines and lines "
            f"starting with # are skipped; {KEY_ADVICE})"
        )
    return keys


def keys_from_env(value: str) -> list[str]:
    """The keys of ``SER_API_KEYS``: separated by commas or whitespace."""
    parts = [p for p in re.split(r"[,\s]+", value) if p]
    if not parts:
        raise ConfigError(f"{API_KEYS_ENV} is set but holds no keys; unset it or add keys")
    return _checked_keys(API_KEYS_ENV, [(f"key {n}", k) for n, k in enumerate(parts, 1)])


def load_api_keys(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> APIKeys | None:
    """The keys of the key file at ``path`` and of ``SER_API_KEYS`` in ``env`` (default
    the process environment), or None when neither is given (an open service)."""
    env = os.environ if env is None else env
    keys = keys_from_file(path) if path else []
    if API_KEYS_ENV in env:
        keys += keys_from_env(env[API_KEYS_ENV])
    return APIKeys(keys) if keys else None


# ---------------------------------------------------------------------- HTTP
def bearer_token(authorization: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer <token>`` header value, else None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _header(scope: Mapping[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def check_authorization(authorization: str | None, keys: APIKeys) -> tuple[str | None, str, str]:
    """``(key id, problem, WWW-Authenticate value)`` for an Authorization header: the id
    when the key is right (problem empty), else None and what was wrong."""
    token = bearer_token(authorization)
    if authorization is None:
        return None, "missing; send 'Authorization: Bearer <API key>'", "Bearer"
    if token is None:
        return None, "expected 'Bearer <API key>'", 'Bearer error="invalid_request"'
    ident = keys.identify(token)
    if ident is None:
        return None, "not an API key this server accepts", 'Bearer error="invalid_token"'
    return ident, "", ""


class RequireAPIKey:
    """ASGI middleware: an HTTP request outside the open paths needs a known key; its id
    goes to ``request.state.api_key_id``. WebSockets pass: ``WS /stream`` checks its own
    (see ``stream_key_id``)."""

    def __init__(self, app, keys: APIKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        ident, problem, challenge = check_authorization(_header(scope, b"authorization"), self.keys)
        if ident is None:
            client = (scope.get("client") or ("unknown",))[0]
            LOG.warning(
                "401 %s %s from %s: Authorization: %s",
                scope["method"],
                scope["path"],
                client,
                problem,
            )
            await _send_401(send, f"Authorization: {problem}", challenge)
            return
        scope.setdefault("state", {})["api_key_id"] = ident
        await self.app(scope, receive, send)


async def _send_401(send, detail: str, challenge: str) -> None:
    body = json.dumps({"detail": detail, "field": "Authorization"}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"www-authenticate", challenge.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def document_bearer_auth(app: FastAPI) -> None:
    """Declare the bearer scheme in the app's OpenAPI document, on every operation that
    needs a key, so that ``/docs`` offers *Authorize* and sends the key it is given."""
    plain_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = plain_openapi()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[SECURITY_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "an API key of this deployment (--api-key-file, SER_API_KEYS)",
        }
        for path, operations in schema.get("paths", {}).items():
            if is_open(path):
                continue
            for operation in operations.values():
                operation["security"] = [{SECURITY_SCHEME: []}]
                operation.setdefault("responses", {})["401"] = {
                    "description": "no API key, or not one this server accepts",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}
                    },
                }
        return schema

    app.openapi = openapi


# ---------------------------------------------------------------------- WebSocket
def _auth_message_key(message: Mapping[str, Any]) -> str:
    """The key of a first stream message ``{"type": "auth", "key": "..."}``."""
    try:
        parsed = json.loads(message.get("text") or "")
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or parsed.get("type") != "auth":
        raise StreamError(
            "this server needs an API key: send Authorization: Bearer <key>, or first the "
            'text message {"type": "auth", "key": "<key>"}',
            CLOSE_POLICY,
        )
    key = parsed.get("key")
    if not isinstance(key, str) or not key:
        raise StreamError("auth.key: missing; a string API key is needed", CLOSE_POLICY)
    return key


async def _first_message_key(ws: WebSocket) -> str:
    """The key of the stream's first message, waited for ``AUTH_MESSAGE_SECONDS``."""
    try:
        message = await asyncio.wait_for(ws.receive(), AUTH_MESSAGE_SECONDS)
    except TimeoutError:
        raise StreamError(
            f"no auth message within {AUTH_MESSAGE_SECONDS:g} s", CLOSE_POLICY
        ) from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return _auth_message_key(message)


async def _stream_key_id(ws: WebSocket, keys: APIKeys) -> str:
    header = ws.headers.get("authorization")
    if header is not None:
        ident, problem, _ = check_authorization(header, keys)
        if ident is None:
            raise StreamError(f"Authorization: {problem}", CLOSE_POLICY)
        return ident
    ident = keys.identify(await _first_message_key(ws))
    if ident is None:
        raise StreamError("auth.key: not an API key this server accepts", CLOSE_POLICY)
    return ident


async def stream_key_id(ws: WebSocket, keys: APIKeys) -> str:
    """The id of the key an accepted ``WS /stream`` client holds, from its Authorization
    header or else its first message; StreamError (close 1008, logged) when there is
    none or it is wrong, WebSocketDisconnect when the client leaves first."""
    try:
        return await _stream_key_id(ws, keys)
    except StreamError as exc:
        client = ws.client.host if ws.client else "unknown"
        LOG.warning("1008 WS %s from %s: %s", ws.url.path, client, exc)
        raise


# ---------------------------------------------------------------------- logs
class RedactCredentials(logging.Filter):
    """Keeps credentials out of the server's logs at every level: the Authorization
    header and the client's WebSocket frames (the auth message), which the WebSocket
    library logs at debug level, and session tokens in logged request paths."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or not args:
            return True
        if record.msg == "< %s: %s" and str(args[0]).lower() == "authorization":
            args = (args[0], REDACTED)
        elif record.msg == "< %s" and str(args[0]).split(" ", 1)[0] in ("TEXT", "BINARY", "CONT"):
            args = (f"{str(args[0]).split(' ', 1)[0]} {REDACTED}",)
        record.args = tuple(
            SESSION_IN_QUERY.sub(rf"\1{REDACTED}", a) if isinstance(a, str) else a for a in args
        )
        return True


@contextmanager
def credentials_kept_out_of_logs() -> Iterator[None]:
    """``RedactCredentials`` on the server's loggers while the block runs."""
    redact = RedactCredentials()
    loggers = [logging.getLogger(name) for name in SERVER_LOGGERS]
    for logger in loggers:
        logger.addFilter(redact)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(redact)
