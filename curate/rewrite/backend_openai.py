"""The ``openai`` rewrite backend: any OpenAI-compatible HTTP server.

``/v1/completions`` for LaCLIP's completion prompts, ``/v1/chat/completions`` for chat prompts.
A batch is sent as concurrent requests (at most ``openai.concurrency`` in flight per worker)
over one ``httpx.AsyncClient``. Each request has a timeout and is retried with exponential
backoff on timeouts, connection errors, 429 and 5xx answers; any other answer (400, 401, 404...)
is an error at once. A request that still fails comes back as an error result (not cached), so
the driver records it and a later run asks again.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from curate.errors import CurateError
from curate.rewrite.backends import Backend, GenRequest, GenResult

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class OpenAIBackend(Backend):
    name = "openai"
    section = "rewrite"  # the pipeline section named in errors

    def setup(self) -> None:
        import httpx  # noqa: F401 - fail here, not mid-run, when it is missing

        opts = self.cfg.openai
        self.base = opts.base_url.rstrip("/")
        if not self.base.startswith(("http://", "https://")):
            raise CurateError(f"{self.section}.openai.base_url {opts.base_url!r} is not an "
                              "http(s) URL",
                              "e.g. http://127.0.0.1:8000/v1")
        key = os.environ.get(opts.api_key_env) if opts.api_key_env else None
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def _body(self, req: GenRequest) -> tuple[str, dict[str, Any]]:
        s = self.cfg.sampling
        body: dict[str, Any] = {"model": self.cfg.model, "max_tokens": s.max_tokens,
                                "temperature": s.temperature, "top_p": s.top_p,
                                "seed": req.seed % (1 << 31), "n": 1}
        if self.cfg.prompt == "chat":
            body["messages"] = req.prompt
            return "/chat/completions", body
        body["prompt"] = req.prompt
        body["stop"] = ["\n"]
        return "/completions", body

    def _text(self, choice: dict[str, Any]) -> str:
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        return text if isinstance(text, str) else ""

    async def _one(self, client: Any, sem: asyncio.Semaphore, req: GenRequest) -> GenResult:
        import httpx

        opts = self.cfg.openai
        path, body = self._body(req)
        error = "no attempt"
        for attempt in range(opts.retries + 1):
            if attempt:
                await asyncio.sleep(opts.backoff * 2 ** (attempt - 1))
            async with sem:
                try:
                    r = await client.post(self.base + path, json=body, headers=self.headers)
                except httpx.TimeoutException:
                    error = f"timeout after {opts.timeout:g}s"
                    continue
                except httpx.TransportError as exc:
                    error = f"connection error: {type(exc).__name__}: {exc}".splitlines()[0]
                    continue
            if r.status_code in _RETRY_STATUS:
                error = f"HTTP {r.status_code}: {r.text[:200]}"
                continue
            if r.status_code != 200:
                return GenResult(None, f"HTTP {r.status_code}: {r.text[:200]}")
            try:
                choice = r.json()["choices"][0]
                text = self._text(choice)
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                return GenResult(None, f"unexpected answer ({type(exc).__name__}): "
                                       f"{r.text[:200]}")
            return GenResult(text)
        return GenResult(None, f"{error} ({opts.retries + 1} attempts)")

    async def _all(self, requests: list[GenRequest]) -> list[GenResult]:
        import httpx

        opts = self.cfg.openai
        sem = asyncio.Semaphore(opts.concurrency)
        limits = httpx.Limits(max_connections=opts.concurrency)
        async with httpx.AsyncClient(timeout=opts.timeout, limits=limits) as client:
            return list(await asyncio.gather(*(self._one(client, sem, r) for r in requests)))

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return asyncio.run(self._all(requests))
