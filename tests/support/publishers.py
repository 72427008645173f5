"""A local HTTP server on 127.0.0.1 standing in for the corpus publishers (never the
internet), for the download tests and the fetch-before-training tests.

The server serves small archives and API answers built by each test, can cut a
response short once, can ignore range requests, and records every request.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ser.datatools.sources import SOURCES


@dataclass
class ServerState:
    routes: dict[str, bytes] = field(default_factory=dict)
    truncate_once: dict[str, int] = field(default_factory=dict)  # path -> bytes sent then close
    ranges: bool = True
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    bytes_sent: int = 0


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        state.requests.append((path, self.headers.get("Range")))
        body = state.routes.get(path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        wanted = self.headers.get("Range")
        if wanted and state.ranges:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        cut = state.truncate_once.pop(path, None)
        if cut is not None:
            payload = payload[:cut]
        self.wfile.write(payload)
        state.bytes_sent += len(payload)


@contextmanager
def publisher() -> Iterator[ThreadingHTTPServer]:
    """The server, running; ``.base`` is its URL and ``.state`` what it serves and saw."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = ServerState()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"  # type: ignore[attr-defined]
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (the port was just released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def zip_tree(folder: Path, archive: Path, prefix: str = "", junk: bool = False) -> bytes:
    """Zip every file under ``folder`` (names relative to it, under ``prefix``)."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
        if junk:  # what macOS adds to archives
            zf.writestr("__MACOSX/._Actor_01", b"\x00\x05\x16\x07")
            zf.writestr(prefix + "Actor_01/._03-01-01-01-01-01-01.wav", b"\x00\x05\x16\x07")
    return archive.read_bytes()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def serve_zenodo(server, archive: bytes, published_md5: str | None = None) -> object:
    """Route a Zenodo-like record and its file; returns the RAVDESS source pointed at them."""
    key = "Audio_Speech_Actors_01-24.zip"
    file_path = f"/records/1188976/files/{key}/content"
    record = {
        "id": 1188976,
        "files": [
            {
                "key": "Audio_Song_Actors_01-24.zip",
                "size": 1,
                "checksum": "md5:0",
                "links": {"self": server.base + "/wrong"},
            },
            {
                "key": key,
                "size": len(archive),
                "checksum": f"md5:{published_md5 or md5(archive)}",
                "links": {"self": server.base + file_path},
            },
        ],
    }
    server.state.routes["/api/records/1188976"] = json.dumps(record).encode()
    server.state.routes[file_path] = archive
    return replace(SOURCES.get("ravdess"), url=server.base + "/api/records/1188976")
