"""The ``transformers`` rewrite backend: a causal LM from a local directory or the hub, batched.

One ``generate`` call per batch (left padding, KV cache). Sampling is done by a logits
processor that draws each row's token from that row's own seeded generator (temperature and
top-p applied first), so a request's rewrite depends on its seed, not on the batch it landed in
or the order of the run. A row stops at its first newline (a rewrite is one line) or at an
end-of-sequence token.
"""

from __future__ import annotations

from typing import Any

from curate.errors import CurateError
from curate.rewrite.backends import Backend, GenRequest, GenResult
from curate.rewrite.config import RewriteConfig


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, cfg: RewriteConfig, device: str) -> None:
        super().__init__(cfg, device)
        self.model: Any = None
        self.tokenizer: Any = None

    def setup(self) -> None:
        from curate.lib.torch_compat import ensure_torchvision

        ensure_torchvision()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        opts = self.cfg.transformers
        if opts.threads:
            torch.set_num_threads(opts.threads)
        dev = opts.device if opts.device != "auto" else (
            "cuda" if self.device == "cuda" and torch.cuda.is_available() else "cpu")
        if opts.dtype != "auto":
            dtype = getattr(torch, opts.dtype)
        elif dev.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
        try:
            tok = AutoTokenizer.from_pretrained(self.cfg.model, revision=self.cfg.revision)
            model = AutoModelForCausalLM.from_pretrained(self.cfg.model,
                                                         revision=self.cfg.revision, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise CurateError(
                f"rewrite model {self.cfg.model!r} could not be loaded: "
                f"{str(exc).splitlines()[0]}",
                "give a local directory with config.json, weights and tokenizer, or a hub "
                "name that is in the local Hugging Face cache (or reachable)") from exc
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        if self.cfg.prompt == "chat" and not getattr(tok, "chat_template", None):
            raise CurateError(f"rewrite model {self.cfg.model!r} has no chat template",
                              "use `prompt: completion` for a base model")
        self.model = model.to(dev).eval()
        self.tokenizer = tok
        self.dev = dev
        vocab = model.get_output_embeddings().weight.shape[0]
        pieces = tok.batch_decode([[i] for i in range(len(tok))])
        stop = torch.zeros(vocab, dtype=torch.bool)
        for i, piece in enumerate(pieces):
            if "\n" in piece and i < vocab:
                stop[i] = True
        eos = model.generation_config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if tok.eos_token_id is not None:
            eos_ids.append(tok.eos_token_id)
        if not eos_ids:
            raise CurateError(f"rewrite model {self.cfg.model!r} has no end-of-sequence token")
        for e in eos_ids:
            stop[e] = True
        self.stop = stop.to(dev)
        self.eos = eos_ids[0]

    def _texts(self, requests: list[GenRequest]) -> list[str]:
        if self.cfg.prompt == "chat":
            return [self.tokenizer.apply_chat_template(r.prompt, tokenize=False,
                                                       add_generation_prompt=True)
                    for r in requests]
        return [str(r.prompt) for r in requests]

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        if not requests:
            return []
        enc = self.tokenizer(self._texts(requests), return_tensors="pt", padding=True,
                             add_special_tokens=self.cfg.prompt != "chat").to(self.dev)
        s = self.cfg.sampling
        sampler = SeededSampler([r.seed for r in requests], s.temperature, s.top_p, self.stop,
                                self.eos)
        gen_cfg = GenerationConfig(max_new_tokens=s.max_tokens, do_sample=False,
                                   pad_token_id=self.tokenizer.pad_token_id,
                                   eos_token_id=self.eos)
        with torch.inference_mode():
            out = self.model.generate(**enc, generation_config=gen_cfg,
                                      logits_processor=LogitsProcessorList([sampler]))
        new = out[:, enc["input_ids"].shape[1]:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [GenResult(text=t) for t in texts]

    def close(self) -> None:
        self.model = None


class SeededSampler:
    """Temperature + top-p sampling with one seeded generator per row, as a logits processor
    for greedy ``generate``: it returns scores whose argmax is the sampled token. Rows that
    produced a stop token (newline or end of sequence) are held at end of sequence."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, stop: Any,
                 eos: int) -> None:
        import torch

        self.gens = [torch.Generator().manual_seed(s % (1 << 63)) for s in seeds]
        self.temperature, self.top_p = temperature, top_p
        self.stop, self.eos = stop, eos
        self.done = torch.zeros(len(seeds), dtype=torch.bool)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        scores = scores.float()
        if self.temperature == 0:
            chosen = scores.argmax(dim=-1)
        else:
            probs = torch.softmax(scores / self.temperature, dim=-1)
            if self.top_p < 1:
                sorted_p, order = probs.sort(dim=-1, descending=True)
                # keep the smallest prefix whose mass reaches top_p (always the first token)
                drop = (sorted_p.cumsum(dim=-1) - sorted_p) >= self.top_p
                sorted_p = sorted_p.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
            probs = probs / probs.sum(dim=-1, keepdim=True)
            u = torch.stack([torch.rand((), generator=g) for g in self.gens]).to(probs.device)
            cdf = probs.cumsum(dim=-1)
            chosen = torch.searchsorted(cdf, u.unsqueeze(-1).to(cdf.dtype)).squeeze(-1)
            chosen = chosen.clamp(max=probs.shape[-1] - 1)
        done = self.done.to(chosen.device)
        chosen = torch.where(done, torch.full_like(chosen, self.eos), chosen)
        self.done = (done | self.stop[chosen]).cpu()
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, chosen.unsqueeze(-1), 0.0)
        return out
