"""A tiny stand-in for the Hugging Face Hub on 127.0.0.1, answering the routes huggingface_hub uses:

    GET  /api/models/{user}/{name}/tree/{rev}?recursive=..   file list (list_repo_files)
    HEAD /{user}/{name}/resolve/{rev}/{file}                  metadata: X-Repo-Commit, ETag, Content-Length
    GET  /{user}/{name}/resolve/{rev}/{file}                  the bytes, honouring `Range: bytes=N-` (206)

(read from huggingface_hub/hf_api.py `_iter_repo_tree_pages`, file_download.py `get_hf_file_metadata` /
`http_get`). Unknown repositories answer 404 with X-Error-Code RepoNotFound, unknown files 404 EntryNotFound,
as the hub does. Plain URLs (`/plain/{file}`) serve the same bytes without the hub headers. `drop_once` names
files whose first GET is cut after half the body (the connection closes), to exercise resume.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.drop_once: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.auth: list[str | None] = []  # Authorization header of each request
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_HEAD(self):
                hub._serve(self, head=True)

            def do_GET(self):
                hub._serve(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _reply(self, h, code, body=b"", headers=None, head=False):
        h.send_response(code)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _serve(self, h, head):
        u = urlparse(h.path)
        path = unquote(u.path)
        self.requests.append(("HEAD" if head else "GET", path, h.headers.get("Range")))
        self.auth.append(h.headers.get("Authorization"))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
        if m:
            files = self.repos.get(m.group(1))
            if files is None:
                return self._reply(h, 404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            body = json.dumps([{"type": "file", "path": n, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                               for n, b in files.items()]).encode()
            return self._reply(h, 200, body, {"Content-Type": "application/json"})
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        plain = re.fullmatch(r"/plain/(.+)", path)
        if m:
            files = self.repos.get(m.group(1))
            if files is None:
                return self._reply(h, 404, b"", {"X-Error-Code": "RepoNotFound"}, head)
            data = files.get(m.group(3))
            if data is None:
                return self._reply(h, 404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, head)
            name = m.group(3)
            extra = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        elif plain:
            name = plain.group(1)
            data = next((f[name] for f in self.repos.values() if name in f), None)
            if data is None:
                return self._reply(h, 404, b"Not Found", {}, head)
            extra = {}
        else:
            return self._reply(h, 404, b"", {}, head)
        extra["Accept-Ranges"] = "bytes"
        start = 0
        rng = h.headers.get("Range")
        if rng and not head:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
        body = data[start:]
        h.send_response(206 if start else 200)
        for k, v in extra.items():
            h.send_header(k, v)
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if head:
            return
        if name in self.drop_once and not start:
            self.drop_once.discard(name)
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        h.wfile.write(body)
