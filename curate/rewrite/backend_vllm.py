"""The ``vllm`` rewrite backend: an in-process vLLM engine on a GPU Ray actor.

Install with ``pip install curate[vllm]`` on GPU machines (vLLM brings its own CUDA torch).
Each worker holds one ``vllm.LLM`` on ``vllm.tensor_parallel_size`` GPUs and hands it whole
batches; vLLM's continuous batching schedules them. Every request carries its own seed
(``SamplingParams.seed``), so a rewrite does not depend on what it was batched with.
"""

from __future__ import annotations

from typing import Any

from curate.errors import CurateError
from curate.rewrite.backends import Backend, GenRequest, GenResult


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, cfg: Any, device: str) -> None:
        super().__init__(cfg, device)
        self.llm: Any = None

    def setup(self) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise CurateError("the vllm rewrite backend needs vLLM",
                              "pip install 'curate[vllm]' on a GPU machine, or use the "
                              "transformers or openai backend") from exc
        opts = self.cfg.vllm
        self.llm = LLM(model=self.cfg.model, revision=self.cfg.revision,
                       tensor_parallel_size=opts.tensor_parallel_size,
                       gpu_memory_utilization=opts.gpu_memory_utilization, dtype=opts.dtype,
                       max_model_len=opts.max_model_len, enforce_eager=opts.enforce_eager,
                       seed=self.cfg.seed)

    def _params(self, req: GenRequest) -> Any:
        from vllm import SamplingParams

        s = self.cfg.sampling
        return SamplingParams(n=1, temperature=s.temperature, top_p=s.top_p,
                              max_tokens=s.max_tokens, seed=req.seed % (1 << 63),
                              stop=["\n"])

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        params = [self._params(r) for r in requests]
        if self.cfg.prompt == "chat":
            outs = self.llm.chat([r.prompt for r in requests], sampling_params=params,
                                 use_tqdm=False)
        else:
            outs = self.llm.generate([r.prompt for r in requests], sampling_params=params,
                                     use_tqdm=False)
        return [GenResult(text=o.outputs[0].text if o.outputs else "") for o in outs]

    def close(self) -> None:
        self.llm = None
