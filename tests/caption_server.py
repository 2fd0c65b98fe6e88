"""A minimal real OpenAI-compatible server that accepts images, for the tests: ``POST
/v1/chat/completions`` with a user message holding an ``image_url`` part (a base64 ``data:``
URL) and a ``text`` part, answered by a local caption model through curate's transformers
caption backend, on 127.0.0.1 in a subprocess (so a test can kill it mid-run).

``transformers serve`` was not used: it serves chat models whose processor has a chat
template, and the tiny BLIP captioner has none."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from llm_server import free_port


def _serve(model: str, port: int) -> None:
    from curate.recaption.backend_transformers import TransformersCaptionBackend
    from curate.recaption.config import CaptionSampling, RecaptionConfig
    from curate.rewrite.backends import GenRequest

    backend = TransformersCaptionBackend(RecaptionConfig(backend="transformers", model=model),
                                         "cpu")
    backend.setup()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: Any) -> None:
            sys.stderr.write(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}\n")
            sys.stderr.flush()

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(200 if self.path == "/health" else 404, {"status": "ok"})

        def do_POST(self) -> None:
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": "not found"})
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            parts = body["messages"][-1]["content"]
            urls = [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]
            if len(urls) != 1 or not urls[0].startswith("data:image/"):
                self._send(400, {"error": "one image_url part with a data: URL is needed"})
                return
            image = base64.b64decode(urls[0].split(",", 1)[1])
            backend.cfg = backend.cfg.model_copy(update={"sampling": CaptionSampling(
                temperature=body.get("temperature", 0.7), top_p=body.get("top_p", 0.9),
                max_tokens=body.get("max_tokens", 40))})
            with lock:
                r = backend.generate([GenRequest("", seed=int(body.get("seed", 0)),
                                                 image=image)])[0]
            if r.error is not None:
                self._send(400, {"error": r.error})
                return
            self._send(200, {"object": "chat.completion", "model": body.get("model"),
                             "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                 "role": "assistant", "content": r.text}}]})

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


class CaptionServer:
    def __init__(self, model: Path, log: Path, port: int | None = None) -> None:
        self.model, self.log_path = model, log
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120) -> CaptionServer:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.model), str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"caption server exited: {self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health",
                                            timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"caption server did not start: {self.log_path.read_text()}")

    def served(self) -> int:
        return self.log_path.read_text(errors="replace").count("POST /v1/chat/completions 200")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None
        if hasattr(self, "_log"):
            self._log.close()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from curate.lib.torch_compat import ensure_torchvision

    ensure_torchvision()
    _serve(sys.argv[1], int(sys.argv[2]))
