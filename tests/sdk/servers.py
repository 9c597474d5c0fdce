"""Servers the SDK tests talk to over real sockets on 127.0.0.1.

- `LiveServer`: any WSGI app (the platform's own) under werkzeug's threaded server, which
  can be stopped and started again on the same port (connection refused in between).
- `ScriptedServer`: a tiny HTTP server whose answers a test scripts per request (500s, 429
  with Retry-After, a part PUT failing once, a slow answer), recording every request.
- `FakePlatform`: scripted answers for the upload endpoints whose presigned URLs point back
  at the same server, standing in for the object store.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from werkzeug.serving import make_server


class LiveServer:
    def __init__(self, app, port: int = 0) -> None:
        self.app = app
        self.port = port
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self._server = make_server("127.0.0.1", self.port, self.app, threaded=True)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self):
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 202
    body: object = field(default_factory=lambda: {"event_id": 1, "job_status": "running"})
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hold: threading.Event | None = None  # answer only once the test sets it (a hung platform)


class ScriptedServer:
    """`script(path_fragment, [Reply, Reply, ...])`: the next requests whose path contains
    the fragment get these replies in turn; after that, `default(request)` answers."""

    def __init__(self, default: Callable[[Request], Reply] | None = None) -> None:
        self.requests: list[Request] = []
        self._scripts: list[tuple[str, list[Reply]]] = []
        self._lock = threading.Lock()
        self.default = default or (lambda request: Reply())
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 16              # headers and body in one write…
            disable_nagle_algorithm = True  # …and no 40 ms Nagle/delayed-ACK stall

            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(self.command, self.path, dict(self.headers), body,
                                  time.monotonic())
                reply = outer._reply_for(request)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.hold is not None:
                    reply.hold.wait(120)
                data = (reply.body if isinstance(reply.body, bytes)
                        else json.dumps(reply.body).encode())
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if "Content-Type" not in reply.headers:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_PUT = do_GET = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def script(self, fragment: str, replies: list[Reply]) -> None:
        with self._lock:
            self._scripts.append((fragment, list(replies)))

    def _reply_for(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            for fragment, replies in self._scripts:
                if fragment in request.path and replies:
                    return replies.pop(0)
        return self.default(request)

    def matching(self, fragment: str, method: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests
                    if fragment in r.path and (method is None or r.method == method)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


PART = 5 * 1024 * 1024


class FakePlatform:
    """get-upload-url grants pointing at /store/…; the 'store' keeps what it receives."""

    def __init__(self, server: ScriptedServer, multipart: bool, part_size: int = PART) -> None:
        self.server = server
        self.multipart = multipart
        self.part_size = part_size
        self.grants: list[dict] = []
        server.default = self.answer

    def answer(self, request):
        if request.path.endswith("/get-upload-url"):
            body = request.json()
            grant = {"upload_id": f"u{len(self.grants) + 1}", "expires_at": "2030-01-01T00:00:00",
                     "s3_uri": f"s3://training/jobs/7/{body['filename']}"}
            if self.multipart:
                count = -(-body["size"] // self.part_size)
                grant.update(part_size=self.part_size, parts=[
                    {"part_number": n,
                     "url": f"{self.server.url}/store/{grant['upload_id']}?partNumber={n}"
                            f"&X-Amz-Signature=secret{n}"} for n in range(1, count + 1)])
            else:
                grant.update(upload_url=f"{self.server.url}/store/{grant['upload_id']}"
                                        "?X-Amz-Signature=sig",
                             headers={"Content-Length": str(body["size"]),
                                      "x-amz-checksum-sha256": "base64-of-the-digest",
                                      "Content-Type": body.get("content_type",
                                                               "application/octet-stream")})
            self.grants.append(grant)
            return Reply(200, grant)
        if request.path.startswith("/store/"):
            etag = '"' + hashlib.md5(request.body).hexdigest() + '"'
            return Reply(200, b"", headers={"ETag": etag})
        if request.path.endswith("/upload-complete"):
            return Reply(202, {"event_id": 9, "upload_id": request.json()["upload_id"],
                               "job_status": "running"})
        return Reply(202)
