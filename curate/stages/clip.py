"""Scorer ``clip``: CLIP image-text similarity with open_clip, plus both embeddings.

Outputs ``clip_score<suffix>``: the cosine of the L2-normalised image and text embeddings, as
LAION and DataComp threshold it. Unless ``embeddings: false``, it also outputs
``clip_image_emb<suffix>`` and ``clip_text_emb<suffix>``. These are float16, stored beside the
scores in the store, one ``.npy`` per shard (row i = sample i of the shard; memory-map them).
``name`` sets the suffix (``name: l14`` → ``clip_score_l14``), so several CLIP models can score
one run.

Speed: JPEGs are decoded at reduced DCT scale (``curate.lib.imaging``) by ``decode_threads`` threads
running ahead of the model, so the model does not wait on decoding. Pillow and torch release the
GIL, so the threads overlap. Captions are tokenised on the same threads, and the padding after
the longest caption of a batch is cut before the text tower (exact for causal CLIP text towers,
see ``clip_model.encode_text_trimmed``). On a GPU the towers run
in fp16 (``precision: auto``) on large batches; on CPU in fp32 with ``cpus`` threads. A sample
whose image does not decode fails alone (``error:clip``); the rest of its batch is scored.

Hostile inputs: images are opened by ``curate.lib.imaging.open_image``, so one whose header claims
more than ``max_pixels`` pixels fails before it is decoded. The text tower sees at most its
context (77 tokens for CLIP), so a caption is tokenised from its first ``CHARS_PER_TOKEN`` x
context characters (whitespace collapsed, cut at a word), which leaves the tokens of any
ordinary caption unchanged (tested). Tokenising everything would be unbounded: CLIP's BPE is
quadratic in the length of a word (one 16,000-letter word took 14 s here).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.lib.imaging import MAX_PIXELS, PILLOW_HARD_LIMIT
from curate.stages.base import SAMPLE_ERRORS, Params, Resources, Scorer, register, text_prefix

# Characters of caption tokenised per token of context: English averages 4 to 5 per token.
CHARS_PER_TOKEN = 16


class ClipParams(Params):
    path_fields = ("model", "pretrained")  # local paths: saved absolute (curate.saved)
    model: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    name: str = Field(default="", pattern=r"^[a-z0-9_]*$")
    batch_size: int = Field(default=64, gt=0)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    embeddings: bool = True
    mask_text: bool = Field(default=False, description="also score with text boxes filled "
                            "(T-MARS): needs the ocr scorer before this one")
    embed_dim: int | None = Field(default=None, gt=0)  # only needed for hf-hub models offline
    cpus: float = Field(default=2.0, gt=0, description="CPU threads of the worker holding it")
    gpus: float = Field(default=1.0, ge=0, description="GPUs per worker, when the cluster has")
    decode_threads: int = Field(default=2, gt=0)
    max_pixels: int = Field(default=MAX_PIXELS, gt=0, le=PILLOW_HARD_LIMIT,
                            description="images with more pixels fail before decoding")


@register
class Clip(Scorer):
    name = "clip"
    Params = ClipParams

    def __init__(self, params: ClipParams | None = None) -> None:
        super().__init__(params)
        p: ClipParams = self.params  # type: ignore[assignment]
        # Local model paths are resolved here, on the driver: workers may run elsewhere.
        from pathlib import Path

        update = {k: str(Path(v).resolve()) for k, v in (("model", p.model),
                                                        ("pretrained", p.pretrained))
                  if v and not v.startswith(("hf-hub:", "local-dir:")) and Path(v).exists()}
        if update:
            p = p.model_copy(update=update)
            self.params = p
        self.resources = Resources(cpus=p.cpus, gpus=p.gpus)
        self._suffix = f"_{p.name}" if p.name else ""
        self._dim: int | None = p.embed_dim

    @property
    def label(self) -> str:
        return f"clip{self._suffix}"

    @property
    def score_column(self) -> str:
        return f"clip_score{self._suffix}"

    def fingerprint(self) -> str:
        """Also changes when local weights change (a retrained filter network rescoring)."""
        import hashlib
        from pathlib import Path

        p: ClipParams = self.params  # type: ignore[assignment]
        stamps = []
        for ref in (p.model.removeprefix("local-dir:"), p.pretrained):
            if not ref:
                continue
            path = Path(ref)
            files = sorted(path.iterdir()) if path.is_dir() else [path] if path.is_file() else []
            stamps += [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
        blob = super().fingerprint() + "|".join(stamps)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def embed_dim(self) -> int:
        if self._dim is None:
            from curate.lib.clip_model import model_config

            self._dim = int(model_config(self.params.model)["embed_dim"])  # type: ignore[attr-defined]
        return self._dim

    def inputs(self) -> tuple[str, ...]:
        return ("image", "caption", "ocr_boxes") if self.params.mask_text else (  # type: ignore[attr-defined]
            "image", "caption")

    def outputs(self) -> Mapping[str, pa.DataType]:
        out: dict[str, pa.DataType] = {self.score_column: pa.float32()}
        if self.params.mask_text:  # type: ignore[attr-defined]
            out[f"clip_score_masked{self._suffix}"] = pa.float32()
        if self.params.embeddings:  # type: ignore[attr-defined]
            emb = pa.list_(pa.float16(), self.embed_dim())
            out[f"clip_image_emb{self._suffix}"] = emb
            out[f"clip_text_emb{self._suffix}"] = emb
        return out

    def output_names(self) -> Sequence[str]:  # without loading open_clip for the width
        names = [self.score_column]
        if self.params.mask_text:  # type: ignore[attr-defined]
            names.append(f"clip_score_masked{self._suffix}")
        return names + list(self.sidecars())

    def sidecars(self) -> Sequence[str]:
        if not self.params.embeddings:  # type: ignore[attr-defined]
            return []
        return [f"clip_image_emb{self._suffix}", f"clip_text_emb{self._suffix}"]

    def check(self) -> None:
        from curate.lib.clip_model import check_weights

        p: ClipParams = self.params  # type: ignore[assignment]
        check_weights(p.model, p.pretrained)

    def setup(self) -> None:
        import torch

        from curate.lib.clip_model import load_clip
        from curate.lib.imaging import FastPreprocess

        p: ClipParams = self.params  # type: ignore[assignment]
        if self.device == "cpu":
            torch.set_num_threads(max(1, math.floor(p.cpus)))
        self._torch = torch
        loaded = load_clip(p.model, p.pretrained, device=self.device)
        self._model = loaded.model
        cfg = loaded.preprocess_cfg
        size = cfg["size"] if isinstance(cfg["size"], (tuple, list)) else (cfg["size"],) * 2
        self._prep = FastPreprocess(loaded.transform, tuple(size),  # type: ignore[arg-type]
                                    cfg.get("resize_mode", "shortest"), p.max_pixels)
        self._tokenizer = loaded.tokenizer
        context = getattr(loaded.tokenizer, "context_length", None) or 77
        self._caption_chars = CHARS_PER_TOKEN * int(context)
        # Cut caption padding when that is exact for this text tower (see clip_model).
        from curate.lib.clip_model import can_trim_text, encode_text_trimmed, trim_tokens

        if can_trim_text(self._model):
            self._trim: Any = trim_tokens
            self._encode_text: Any = lambda t: encode_text_trimmed(self._model, t)
        else:
            self._trim = None
            self._encode_text = self._model.encode_text
        self._pool = ThreadPoolExecutor(max_workers=p.decode_threads,
                                        thread_name_prefix="clip-decode")
        precision = p.precision
        if precision == "auto":
            precision = "fp16" if self.device.startswith("cuda") else "fp32"
        self._dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self._dim = int(self._model.text_projection.shape[-1]) if hasattr(
            self._model, "text_projection") and self._model.text_projection is not None \
            else self.embed_dim()

    # -- the CPU side: runs on the decode threads -----------------------------------------
    def _decode(self, data: bytes | None, boxes: list[list[float]] | None = None) -> Any:
        """The model input, and with ``mask_text`` the input with its text boxes filled."""
        if not self.params.mask_text:  # type: ignore[attr-defined]
            return self._prep(data)
        from curate.stages.ocr import mask_text_regions

        im = self._prep.decode(data)
        return self._prep.transform(im), self._prep.transform(mask_text_regions(im, boxes or []))

    def _tokens(self, captions: list[str | None]) -> Any:
        tokens = self._tokenizer([text_prefix(c, self._caption_chars) for c in captions])
        return self._trim(tokens) if self._trim is not None else tokens

    # -- the model side -------------------------------------------------------------------
    def _encode(self, images: Any, tokens: Any) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            images = images.to(self.device, non_blocking=True)
            tokens = tokens.to(self.device, non_blocking=True)
            if self._dtype is not None:
                with torch.autocast(self.device.split(":")[0], dtype=self._dtype):
                    img = self._model.encode_image(images)
                    txt = self._encode_text(tokens)
            else:
                img = self._model.encode_image(images)
                txt = self._encode_text(tokens)
            img = torch.nn.functional.normalize(img.float(), dim=-1)
            txt = torch.nn.functional.normalize(txt.float(), dim=-1)
        return img.cpu().numpy(), txt.cpu().numpy()

    def score_batch(self, batch: pa.Table) -> Mapping[str, Any]:
        p: ClipParams = self.params  # type: ignore[assignment]
        images = batch.column("image").to_pylist()
        captions = batch.column("caption").to_pylist()
        masking = p.mask_text
        boxes = batch.column("ocr_boxes").to_pylist() if masking else [None] * len(images)
        n = len(images)
        # Queue every decode and tokenisation now; the model consumes them chunk by chunk
        # while the threads keep decoding ahead.
        decoded: list[Future[Any]] = [self._pool.submit(self._decode, b, x)
                                      for b, x in zip(images, boxes, strict=True)]
        bounds = [(i, min(i + p.batch_size, n)) for i in range(0, n, p.batch_size)]
        tokens = [self._pool.submit(self._tokens, captions[a:b]) for a, b in bounds]
        d = self._dim or self.embed_dim()
        img_emb = np.full((n, d), np.nan, dtype=np.float32)
        txt_emb = np.full((n, d), np.nan, dtype=np.float32)
        masked_emb = np.full((n, d), np.nan, dtype=np.float32) if masking else None
        errors: list[str | None] = [None] * n
        for (a, b), tok in zip(bounds, tokens, strict=True):
            good, tensors = [], []
            for i in range(a, b):
                try:
                    tensors.append(decoded[i].result())
                    good.append(i)
                except Exception as exc:  # noqa: BLE001 - recorded on the sample
                    errors[i] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if not good:
                continue
            t = tok.result()[[i - a for i in good]]
            if self._trim is not None:
                t = self._trim(t)
            if masking:  # originals and masked copies go through the image tower together
                stacked = self._torch.stack([x[0] for x in tensors] + [x[1] for x in tensors])
                ie, te = self._encode(stacked, t)  # the towers take their own batch sizes
                img_emb[good], masked_emb[good] = ie[: len(good)], ie[len(good):]  # type: ignore[index]
            else:
                ie, te = self._encode(self._torch.stack(tensors), t)
                img_emb[good] = ie
            txt_emb[good] = te
        scores = np.einsum("nd,nd->n", img_emb, txt_emb)
        out: dict[str, Any] = {
            self.score_column: pa.array(scores, pa.float32(), mask=np.isnan(scores)),
            SAMPLE_ERRORS: errors,
        }
        if masked_emb is not None:
            masked = np.einsum("nd,nd->n", masked_emb, txt_emb)
            out[f"clip_score_masked{self._suffix}"] = pa.array(masked, pa.float32(),
                                                                mask=np.isnan(masked))
        if p.embeddings:
            for col, mat in ((f"clip_image_emb{self._suffix}", img_emb),
                             (f"clip_text_emb{self._suffix}", txt_emb)):
                flat = pa.array(mat.astype(np.float16).reshape(-1), pa.float16())
                invalid = pa.array(np.isnan(mat[:, 0]))
                out[col] = pa.FixedSizeListArray.from_arrays(flat, d, mask=invalid)
        return out
