"""The ``recaption:`` section of a pipeline: synthetic captions of the selected samples' images.

::

    recaption:
      backend: transformers        # transformers | openai | vllm
      model: demo/captioner        # local directory or hub name (served model name for openai)
      captions: 2                  # synthetic captions per kept image (txt_syn0, txt_syn1, ...)
      prompt: null                 # text given with the image (null: the model's own default;
                                   # BLIP: a caption prefix; chat models: the instruction)
      prompt_format: auto          # auto (chat with a chat template, else plain) | plain | chat
      sampling: {temperature: 0.7, top_p: 0.9, max_tokens: 40}
      max_attempts: 3              # a rejected caption is asked again up to this many times
      validation: {min_words: 3, max_words: 60, min_known_words: 0.5, require_english: true,
                   require_finished: true}
      clip: clip                   # the stored clip scorer whose embeddings give ALIP's signals
                                   # (auto: the store's only clip scorer; null: none)
      openai: {base_url: "http://127.0.0.1:8000/v1", concurrency: 16, timeout: 60}
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from curate.lib.imaging import MAX_PIXELS
from curate.rewrite.config import OpenAIOptions, Sampling, TransformersOptions, VLLMOptions
from curate.stages.base import Params

DEFAULT_CHAT_PROMPT = "Describe this image in one sentence."


class CaptionSampling(Sampling):
    temperature: float = Field(default=0.7, ge=0)  # 0: greedy
    top_p: float = Field(default=0.9, gt=0, le=1)
    max_tokens: int = Field(default=40, gt=0)


class CaptionValidation(Params):
    min_words: int = Field(default=3, ge=1)
    max_words: int = Field(default=60, gt=0)
    min_known_words: float = Field(default=0.5, ge=0, le=1)  # share of real words (0: off)
    require_english: bool = True  # the caption must be English (fasttext)
    require_finished: bool = True  # a caption cut at max_tokens is rejected (unfinished)


class RecaptionConfig(Params):
    backend: Literal["transformers", "openai", "vllm"]
    model: str
    revision: str | None = None  # hub revision (transformers, vllm)
    captions: int = Field(default=1, ge=1, le=16)
    prompt: str | None = None
    prompt_format: Literal["auto", "plain", "chat"] = "auto"
    seed: int = 0
    max_attempts: int = Field(default=3, ge=1)
    sampling: CaptionSampling = CaptionSampling()
    validation: CaptionValidation = CaptionValidation()
    batch_size: int = Field(default=16, gt=0)  # images per call to a worker
    workers: int | None = Field(default=None, gt=0)  # default: one per GPU, else one
    cache: str | None = None  # SQLite file; default the store's generation cache (shared)
    clip: str | None = "auto"  # label of the stored clip scorer for the ALIP signals
    max_pixels: int = Field(default=MAX_PIXELS, gt=0)  # larger images fail before decoding
    transformers: TransformersOptions = TransformersOptions()
    openai: OpenAIOptions = OpenAIOptions()
    vllm: VLLMOptions = VLLMOptions()

    def provenance(self) -> dict[str, Any]:
        return {"backend": self.backend, "prompt": self.prompt,
                "prompt_format": self.prompt_format, "sampling": self.sampling.as_json()}

    def chat_prompt(self) -> str:
        return self.prompt if self.prompt is not None else DEFAULT_CHAT_PROMPT

    def sampling_key(self) -> str:
        """What besides model, prompt, image and seed makes a different generation."""
        return json.dumps({"sampling": self.sampling.model_dump(),
                           "prompt_format": self.prompt_format}, sort_keys=True)
