"""The interface every rewrite backend implements, and how a backend is chosen.

A backend turns a batch of requests (a prompt, or chat messages, plus a per-request sampling
seed) into one completion or one error per request. It never validates or retries on content:
the rewrite driver does that. Backends run inside Ray actors (``curate.rewrite.engine``'s
``GenWorker``), so a GPU backend gets its devices from Ray's ``num_gpus``. The caption
backends (``curate.recaption``) implement the same interface, with an image in each request.

* ``transformers``: a local model directory or hub name, batched ``generate`` on CPU or GPU;
* ``openai``: any OpenAI-compatible HTTP endpoint (vLLM serve, llama.cpp server, TGI,
  ``transformers serve``, hosted APIs), async with bounded concurrency, retries and timeouts;
* ``vllm``: an in-process vLLM engine on a GPU actor (``pip install curate[vllm]``).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.rewrite.config import RewriteConfig

Prompt = str | list[dict[str, str]]


@dataclass(frozen=True)
class GenRequest:
    prompt: Prompt  # completion text, or chat messages when the prompt format is chat
    seed: int  # sampling seed of this request (derived from run seed, uid, rewrite, attempt)
    image: bytes | None = None  # the encoded image a caption is asked for (curate.recaption)


@dataclass(frozen=True)
class GenResult:
    text: str | None  # the raw completion (the driver keeps its first line)
    error: str | None = None  # a transport or engine failure; such results are not cached


class Backend(ABC):
    name: str

    def __init__(self, cfg: Any, device: str) -> None:
        self.cfg = cfg  # a RewriteConfig, or a RecaptionConfig for the caption backends
        self.device = device

    @abstractmethod
    def setup(self) -> None:
        """Load the model or open the connection (called once per worker)."""

    @abstractmethod
    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """One result per request, in order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what setup took."""


def make_backend(cfg: RewriteConfig, device: str) -> Backend:
    if cfg.backend == "transformers":
        from curate.rewrite.backend_transformers import TransformersBackend

        return TransformersBackend(cfg, device)
    if cfg.backend == "openai":
        from curate.rewrite.backend_openai import OpenAIBackend

        return OpenAIBackend(cfg, device)
    from curate.rewrite.backend_vllm import VLLMBackend

    return VLLMBackend(cfg, device)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def model_identity(cfg: Any) -> str:
    """What the cache keys a generation by. A local directory is identified by a digest of its
    config, tokenizer and weight files (names, sizes, first and last MiB), so retraining a model
    in place never serves stale generations; a hub name by name and revision; a served model by the
    name the server gives it."""
    path = Path(cfg.model)
    if cfg.backend != "openai" and path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = f.relative_to(path).as_posix()
            size = f.stat().st_size
            h.update(f"{rel}\0{size}\0".encode())
            with open(f, "rb") as fh:
                if f.suffix in _WEIGHT_SUFFIXES and size > 2 << 20:
                    h.update(fh.read(1 << 20))
                    fh.seek(-(1 << 20), 2)
                    h.update(fh.read(1 << 20))
                else:
                    h.update(fh.read())
        return f"{path.name}#{h.hexdigest()[:16]}"
    if cfg.backend == "openai":
        return f"served:{cfg.model}"
    return f"{cfg.model}@{cfg.revision or 'default'}"
