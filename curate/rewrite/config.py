"""The ``rewrite:`` section of a pipeline: LLM caption rewrites of the selected samples.

::

    rewrite:
      backend: transformers        # transformers | openai | vllm
      model: demo/rewriter         # local directory or hub name (served model name for openai)
      rewrites: 2                  # rewrites per kept caption
      examples: 3                  # in-context examples per prompt (LaCLIP uses 3)
      prompt: completion           # completion (LaCLIP's format) | chat (instruction models)
      sampling: {temperature: 0.9, top_p: 0.9, max_tokens: 48}
      max_attempts: 3              # a rejected rewrite is regenerated up to this many times
      validation: {min_words: 2, max_words: null, min_known_words: 0.5, require_english: true}
      openai: {base_url: "http://127.0.0.1:8000/v1", concurrency: 16, timeout: 60}
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from curate.stages.base import Params


class Sampling(Params):
    temperature: float = Field(default=0.9, ge=0)  # 0: greedy
    top_p: float = Field(default=0.9, gt=0, le=1)
    max_tokens: int = Field(default=48, gt=0)

    def as_json(self) -> str:
        return json.dumps(self.model_dump(), sort_keys=True)


class Validation(Params):
    min_words: int = Field(default=2, ge=1)
    max_words: int | None = Field(default=None, gt=0)  # default: 3x the source, at least 40
    min_known_words: float = Field(default=0.5, ge=0, le=1)  # share of real words (0: off)
    require_english: bool = True  # an English caption's rewrite must be English


class TransformersOptions(Params):
    device: str = "auto"  # auto: cuda when the worker has a GPU, else cpu
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    threads: int | None = Field(default=None, gt=0)  # torch threads per worker (CPU)


class OpenAIOptions(Params):
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str | None = "OPENAI_API_KEY"  # the key is read from this variable, if set
    concurrency: int = Field(default=16, gt=0)  # requests in flight per worker
    timeout: float = Field(default=60.0, gt=0)  # seconds per request
    retries: int = Field(default=4, ge=0)  # per request, on timeouts, 429 and 5xx
    backoff: float = Field(default=0.5, ge=0)  # first retry delay in seconds, doubled each time


class VLLMOptions(Params):
    tensor_parallel_size: int = Field(default=1, gt=0)  # GPUs per worker
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    dtype: str = "auto"
    max_model_len: int | None = Field(default=2048, gt=0)
    enforce_eager: bool = False


class RewriteConfig(Params):
    backend: Literal["transformers", "openai", "vllm"]
    model: str
    revision: str | None = None  # hub revision (transformers, vllm)
    rewrites: int = Field(default=1, ge=1, le=16)
    examples: int = Field(default=3, ge=0)
    examples_file: str | None = None  # default: curate's own meta examples
    prompt: Literal["completion", "chat"] = "completion"
    seed: int = 0
    max_attempts: int = Field(default=3, ge=1)
    sampling: Sampling = Sampling()
    validation: Validation = Validation()
    batch_size: int = Field(default=32, gt=0)  # requests per call to a worker
    workers: int | None = Field(default=None, gt=0)  # default: one per GPU, else one
    cache: str | None = None  # SQLite file; default STORE/rewrite_cache.sqlite (shared)
    transformers: TransformersOptions = TransformersOptions()
    openai: OpenAIOptions = OpenAIOptions()
    vllm: VLLMOptions = VLLMOptions()

    def provenance(self) -> dict[str, Any]:
        return {"backend": self.backend, "prompt_format": self.prompt,
                "sampling": self.sampling.as_json()}
