"""The ``openai`` caption backend: any OpenAI-compatible server that accepts images.

Each request is one ``/v1/chat/completions`` call whose user message holds the image as an
``image_url`` part with a ``data:`` URL (base64 of the image's bytes as stored, with its MIME
type sniffed from them) and the prompt as a ``text`` part, the format vLLM serve, TGI, llama.cpp
server, ``transformers serve`` and hosted APIs take. Concurrency, timeouts, retries with
backoff, and errors as results are the rewrite backend's (``curate.rewrite.backend_openai``);
an answer cut at ``max_tokens`` (``finish_reason: length``) is marked unfinished, as the
transformers backend marks it.
"""

from __future__ import annotations

import base64
from typing import Any

from curate.rewrite.backend_openai import OpenAIBackend
from curate.rewrite.backends import GenRequest

_MAGIC = ((b"\xff\xd8", "image/jpeg"), (b"\x89PNG", "image/png"), (b"GIF8", "image/gif"),
          (b"BM", "image/bmp"))


def mime_type(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((m for magic, m in _MAGIC if data.startswith(magic)), "image/jpeg")


def data_url(data: bytes) -> str:
    return f"data:{mime_type(data)};base64,{base64.b64encode(data).decode('ascii')}"


def image_message(image: bytes, prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(image)}},
        {"type": "text", "text": prompt}]}]


class OpenAICaptionBackend(OpenAIBackend):
    name = "openai"
    section = "recaption"

    def _body(self, req: GenRequest) -> tuple[str, dict[str, Any]]:
        s = self.cfg.sampling
        body: dict[str, Any] = {"model": self.cfg.model, "max_tokens": s.max_tokens,
                                "temperature": s.temperature, "top_p": s.top_p,
                                "seed": req.seed % (1 << 31), "n": 1,
                                "messages": image_message(req.image or b"",
                                                          self.cfg.chat_prompt())}
        return "/chat/completions", body

    def _text(self, choice: dict[str, Any]) -> str:
        """The caption, with a final newline unless the server cut it at max_tokens."""
        text = super()._text(choice).split("\n", 1)[0]
        return text if choice.get("finish_reason") == "length" else text + "\n"
