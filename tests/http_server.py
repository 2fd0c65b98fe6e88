"""A local HTTP server on 127.0.0.1 for img2dataset ingest tests.

Routes: ``/img/<name>`` serves the registered image bytes; ``/slow/<name>`` serves them after a
delay; ``/page/<name>`` serves an HTML page (not an image); anything else is a 404.
``requested()`` is the access log: the path of every request so far, in arrival order.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    server: LocalServer  # type: ignore[assignment]

    def do_GET(self) -> None:
        self.server.record(self.path)
        parts = self.path.strip("/").split("/", 1)
        kind, name = [*parts, ""][:2]
        data = self.server.images.get(name)
        if kind == "slow" and data is not None:
            time.sleep(self.server.slow_seconds)
        if kind in ("img", "slow") and data is not None:
            self._send(200, "image/jpeg", data)
        elif kind == "page":
            self._send(200, "text/html", b"<html><body>not an image</body></html>")
        else:
            self._send(404, "text/plain", b"not found")

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    def log_message(self, format: str, *args: object) -> None:
        pass


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, images: dict[str, bytes], slow_seconds: float = 5.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.images = images
        self.slow_seconds = slow_seconds
        self._requests: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def record(self, path: str) -> None:
        with self._lock:
            self._requests.append(path)

    def requested(self) -> list[str]:
        """The path of every request so far (a copy), in the order they arrived."""
        with self._lock:
            return list(self._requests)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
