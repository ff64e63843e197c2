"""A tiny local stand-in for the Hugging Face Hub and plain file hosts, for offline download tests.

It implements just the endpoints huggingface_hub 0.3x's ``snapshot_download`` uses:
``GET /api/models/{repo}/revision/{rev}`` (repo info with the file list and commit sha) and
``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` (with ETag, X-Repo-Commit, Content-Length and
HTTP Range support). Any other path is looked up among plain files (the Whisper file, voice wavs).
Every request is recorded so tests can check what was (not) fetched and whether Range was used.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass(frozen=True)
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    range: str | None


def free_port() -> int:
    """A port nothing listens on right now (for 'server down' tests and for starting the server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeHub:
    """Serve fake hub repos and plain files on 127.0.0.1 from a background thread.

    Use as a context manager: ``with FakeHub() as hub: hub.url`` is the base URL.
    """

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.files: dict[str, bytes] = {}
        # path -> byte count: the next GET of that path sends only that many bytes, then hangs up
        self.cut_once: dict[str, int] = {}
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- content -----------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> None:
        self.repos[repo_id] = dict(files)

    def add_file(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``path`` (leading slash optional); returns its full URL."""
        path = "/" + path.lstrip("/")
        self.files[path] = data
        return self.url + path

    def commit(self, repo_id: str) -> str:
        """A stable 40-hex commit sha derived from the repo's content (changes when content does)."""
        h = hashlib.sha1(repo_id.encode())
        for name in sorted(self.repos[repo_id]):
            h.update(name.encode() + b"\0" + self.repos[repo_id][name])
        return h.hexdigest()

    # -- request log ---------------------------------------------------------------------------
    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def requests(self, method: str | None = None, contains: str = "") -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if (method is None or s.method == method) and contains in s.path]

    def clear(self) -> None:
        with self._lock:
            self.seen.clear()

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep test output quiet
        pass

    def do_GET(self) -> None:
        self._handle(body=True)

    def do_HEAD(self) -> None:
        self._handle(body=False)

    # -- routing -------------------------------------------------------------------------------
    def _handle(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.fake.record(Seen(self.command, path, self.headers.get("Range")))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path)
        if m:
            return self._repo_info(m.group(1), m.group(2), body)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m and m.group(1) in self.fake.repos:
            return self._resolve(m.group(1), m.group(2), m.group(3), body)
        if path in self.fake.files:
            data = self.fake.files[path]
            cut = self.fake.cut_once.pop(path, None) if body else None
            return self._send_bytes(data, hashlib.sha256(data).hexdigest(), {}, body, cut)
        return self._error(404, "EntryNotFound", f"no such path {path}", body)

    def _repo_info(self, repo_id: str, rev: str, body: bool) -> None:
        if repo_id not in self.fake.repos:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found", body)
        sha = self.fake.commit(repo_id)
        if rev not in ("main", sha):
            return self._error(404, "RevisionNotFound", f"Revision {rev} not found", body)
        info = {
            "id": repo_id,
            "modelId": repo_id,
            "sha": sha,
            "private": False,
            "siblings": [{"rfilename": name} for name in sorted(self.fake.repos[repo_id])],
        }
        payload = json.dumps(info).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def _resolve(self, repo_id: str, rev: str, name: str, body: bool) -> None:
        sha = self.fake.commit(repo_id)
        if rev not in ("main", sha):
            return self._error(404, "RevisionNotFound", f"Revision {rev} not found", body)
        files = self.fake.repos[repo_id]
        if name not in files:
            return self._error(404, "EntryNotFound", f"{name} not in {repo_id}", body)
        data = files[name]
        self._send_bytes(data, hashlib.sha256(data).hexdigest(), {"X-Repo-Commit": sha}, body)

    # -- responses -----------------------------------------------------------------------------
    def _send_bytes(
        self, data: bytes, etag: str, extra: dict[str, str], body: bool, cut: int | None = None
    ) -> None:
        start, status, full = 0, 200, len(data)
        m = _RANGE.match(self.headers.get("Range") or "")
        if m:
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data, status = data[start : end + 1], 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{etag}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{full}")
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if body and cut is not None:
            self.wfile.write(data[:cut])  # promised more: the client sees a dropped connection
            self.close_connection = True
        elif body:
            self.wfile.write(data)

    def _error(self, code: int, error_code: str, message: str, body: bool) -> None:
        payload = json.dumps({"error": message}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Error-Code", error_code)
        self.send_header("X-Error-Message", message)
        self.end_headers()
        if body:
            self.wfile.write(payload)
