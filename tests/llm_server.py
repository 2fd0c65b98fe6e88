"""A real OpenAI-compatible server for the tests: ``transformers serve`` on 127.0.0.1, serving a
local model directory, in a subprocess (so a test can kill it mid-run)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# transformers imports torchvision, which needs curate's fix next to a CPU torch.
_LAUNCH = (
    "import sys; from curate.lib.torch_compat import ensure_torchvision; ensure_torchvision(); "
    "from transformers.cli.transformers import main; "
    "sys.argv = ['transformers', 'serve', *sys.argv[1:]]; main()"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LLMServer:
    def __init__(self, model: Path, log: Path, port: int | None = None) -> None:
        self.model, self.log_path = model, log
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120) -> LLMServer:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, str(self.model), "--host", "127.0.0.1", "--port",
             str(self.port), "--device", "cpu", "--log-level", "info"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health",
                                            timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"transformers serve did not start: {self.log_path.read_text()}")

    def completions_served(self) -> int:
        log = self.log_path.read_text(errors="replace")
        return log.count('"POST /v1/completions HTTP/1.1" 200')

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None
        if hasattr(self, "_log"):
            self._log.close()
