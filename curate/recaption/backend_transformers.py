"""The ``transformers`` caption backend: an image-captioning or image-text-to-text model from a
local directory or the hub, batched.

Loaded with ``AutoProcessor`` and ``AutoModelForImageTextToText`` (BLIP, vision-encoder-decoder,
Florence-2, LLaVA, Qwen-VL, SmolVLM, ...; ``AutoModelForVision2Seq`` where an older transformers
still has it). Two prompt formats:

* ``plain``: ``processor(images=..., text=prompt)``; the prompt (if any) is the text the model
  continues, e.g. BLIP's conditional caption prefix ``a picture of``;
* ``chat``: the prompt is a user message holding the image and the instruction, rendered by
  the processor's chat template (Qwen-VL, LLaVA, SmolVLM style).

``auto`` picks ``chat`` when the processor has a chat template. One ``generate`` call per
batch; sampling is the rewrite backend's ``SeededSampler`` (each row drawn from its own seeded
generator), so a caption depends on its seed and image, not on its batch. A row stops at a
newline or an end-of-sequence token; a completion that ended so carries a final newline, one
cut at ``max_tokens`` does not (``unfinished``). The caption is the generated text:
decoder-only models' prompt tokens are cut off, and an encoder-decoder's output loses the
prompt it starts with.
An image that does not decode (or has more than ``max_pixels`` pixels) is an error result for
that request alone.
"""

from __future__ import annotations

from typing import Any

from curate.errors import CurateError
from curate.rewrite.backend_transformers import SeededSampler
from curate.rewrite.backends import Backend, GenRequest, GenResult


def load_captioner(model: str, revision: str | None, dtype: Any) -> tuple[Any, Any]:
    """(processor, model) by the loading path every image-text model uses."""
    import transformers
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(model, revision=revision)
        try:
            net = AutoModelForImageTextToText.from_pretrained(model, revision=revision,
                                                              dtype=dtype)
        except ValueError:
            legacy = getattr(transformers, "AutoModelForVision2Seq", None)
            if legacy is None:
                raise
            net = legacy.from_pretrained(model, revision=revision, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise CurateError(
            f"caption model {model!r} could not be loaded: {str(exc).splitlines()[0]}",
            "give a local directory with config.json, weights and processor files, or a hub "
            "name that is in the local Hugging Face cache (or reachable)") from exc
    return processor, net


class TransformersCaptionBackend(Backend):
    name = "transformers"

    def __init__(self, cfg: Any, device: str) -> None:
        super().__init__(cfg, device)
        self.model: Any = None
        self.processor: Any = None

    def setup(self) -> None:
        from curate.lib.torch_compat import ensure_torchvision

        ensure_torchvision()
        import torch

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
        processor, model = load_captioner(self.cfg.model, self.cfg.revision, dtype)
        tok = getattr(processor, "tokenizer", None)
        if tok is None:
            raise CurateError(f"caption model {self.cfg.model!r}: its processor has no "
                              "tokenizer")
        fmt = self.cfg.prompt_format
        has_template = bool(getattr(processor, "chat_template", None))
        if fmt == "auto":
            fmt = "chat" if has_template else "plain"
        if fmt == "chat" and not has_template:
            raise CurateError(f"caption model {self.cfg.model!r} has no chat template",
                              "use `prompt_format: plain` (BLIP-style captioners)")
        self.format = fmt
        self.encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        if not self.encoder_decoder and model.config.model_type != "blip":
            tok.padding_side = "left"  # decoder-only: generation continues the last position
        if tok.pad_token_id is None and tok.eos_token_id is not None:
            tok.pad_token = tok.eos_token
        self.model = model.to(dev).eval()
        self.processor, self.tokenizer, self.dev, self.dtype = processor, tok, dev, dtype
        text_cfg = model.config.get_text_config() if hasattr(model.config,
                                                             "get_text_config") else model.config
        if model.config.model_type == "blip":  # BLIP's generate ends rows at [SEP]
            eos_ids = [text_cfg.sep_token_id]
        else:
            eos = model.generation_config.eos_token_id
            eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
            if tok.eos_token_id is not None:
                eos_ids.append(tok.eos_token_id)
        eos_ids = [e for e in eos_ids if e is not None]
        if not eos_ids:
            raise CurateError(f"caption model {self.cfg.model!r} has no end-of-sequence token")
        head = model.get_output_embeddings()
        vocab = int(head.weight.shape[0]) if head is not None else int(text_cfg.vocab_size)
        stop = torch.zeros(vocab, dtype=torch.bool)
        pieces = tok.batch_decode([[i] for i in range(min(len(tok), vocab))])
        for i, piece in enumerate(pieces):
            if "\n" in piece:
                stop[i] = True
        for e in eos_ids:
            if e < vocab:
                stop[e] = True
        self.stop, self.eos = stop.to(dev), eos_ids[0]
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else self.eos

    def prompt_text(self) -> str | None:
        """The text given with each image (the rendered chat turn for chat models)."""
        if self.format == "chat":
            messages = [{"role": "user", "content": [
                {"type": "image"}, {"type": "text", "text": self.cfg.chat_prompt()}]}]
            return str(self.processor.apply_chat_template(messages, tokenize=False,
                                                          add_generation_prompt=True))
        return self.cfg.prompt or None

    def _images(self, requests: list[GenRequest]) -> tuple[list[Any], list[str | None]]:
        from curate.lib.imaging import open_image

        images: list[Any] = []
        errors: list[str | None] = []
        for r in requests:
            try:
                im = open_image(r.image, self.cfg.max_pixels)
                images.append(im.convert("RGB"))
                errors.append(None)
            except Exception as exc:  # noqa: BLE001 - recorded on the request
                images.append(None)
                errors.append(f"image: {type(exc).__name__}: {exc}".splitlines()[0])
        return images, errors

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        import torch
        from transformers import LogitsProcessorList

        if not requests:
            return []
        images, errors = self._images(requests)
        good = [i for i, e in enumerate(errors) if e is None]
        out: list[GenResult] = [GenResult(None, e) for e in errors]
        if not good:
            return out
        prompt = self.prompt_text()
        imgs = [images[i] for i in good]
        kwargs: dict[str, Any] = {"return_tensors": "pt"}
        if prompt is not None:
            kwargs["text"] = [prompt] * len(imgs)
            kwargs["padding"] = True
        enc = self.processor(images=[[im] for im in imgs] if self.format == "chat" else imgs,
                             **kwargs)
        enc = {k: (v.to(self.dev, self.dtype) if v.is_floating_point() else v.to(self.dev))
               for k, v in enc.items() if hasattr(v, "to")}
        s = self.cfg.sampling
        sampler = SeededSampler([requests[i].seed for i in good], s.temperature, s.top_p,
                                self.stop, self.eos)
        # Generation parameters as arguments (BLIP's generate adds its own eos and pad).
        extra = {} if self.model.config.model_type == "blip" else {"pad_token_id": self.pad}
        with torch.inference_mode():
            ids = self.model.generate(**enc, max_new_tokens=s.max_tokens, do_sample=False,
                                      num_beams=1, **extra,
                                      logits_processor=LogitsProcessorList([sampler]))
        texts = self._decode(ids, enc.get("input_ids"), prompt)
        # A row that ended (end of sequence or newline) is marked by a final newline; one cut
        # at max_tokens is not (the driver rejects it as unfinished).
        ended = sampler.done.tolist()
        for i, t, e in zip(good, texts, ended, strict=True):
            out[i] = GenResult(text=t.split("\n", 1)[0] + ("\n" if e else ""))
        return out

    def _decode(self, ids: Any, input_ids: Any, prompt: str | None) -> list[str]:
        import torch

        if input_ids is not None and ids.shape[1] >= input_ids.shape[1] and torch.equal(
                ids[:, :input_ids.shape[1]], input_ids.to(ids.device)):
            # decoder-only: the output repeats the prompt's tokens first
            return list(self.tokenizer.batch_decode(ids[:, input_ids.shape[1]:],
                                                    skip_special_tokens=True))
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        if not prompt or self.format == "chat":
            return [t.strip() for t in texts]
        # BLIP-style: the decoder starts from the prompt prefix
        head = " ".join(prompt.lower().split())
        out = []
        for t in texts:
            norm = " ".join(t.split())
            out.append(norm[len(head):].strip() if norm.lower().startswith(head) else norm)
        return out

    def close(self) -> None:
        self.model = None
