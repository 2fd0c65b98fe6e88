"""The ``vllm`` caption backend: an in-process vLLM engine with a multimodal model on a GPU Ray
actor (``pip install curate[vllm]``).

Each request is one conversation for ``LLM.chat``: a user message holding the image as an
``image_url`` part (a base64 ``data:`` URL, which vLLM decodes itself) and the prompt as a
``text`` part, so any model vLLM serves for image input with a chat template works (Qwen2-VL,
LLaVA, SmolVLM, ...). Every request carries its own seed (``SamplingParams.seed``), so a
caption does not depend on what it was batched with.
"""

from __future__ import annotations

from typing import Any

from curate.recaption.backend_openai import image_message
from curate.rewrite.backend_vllm import VLLMBackend
from curate.rewrite.backends import GenRequest, GenResult


class VLLMCaptionBackend(VLLMBackend):
    name = "vllm"

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        params = [self._params(r) for r in requests]
        conversations: list[Any] = [image_message(r.image or b"", self.cfg.chat_prompt())
                                    for r in requests]
        outs = self.llm.chat(conversations, sampling_params=params, use_tqdm=False)
        results = []
        for o in outs:
            if not o.outputs:
                results.append(GenResult(text=""))
                continue
            first = o.outputs[0]  # a final newline marks a caption that ended (not cut)
            end = "" if getattr(first, "finish_reason", None) == "length" else "\n"
            results.append(GenResult(text=first.text.split("\n", 1)[0] + end))
        return results
