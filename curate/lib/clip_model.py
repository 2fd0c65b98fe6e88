"""Loading open_clip models the way every curate CLIP path does (scorer, train-filter, bench).

A model is named by any of:

* an open_clip name plus ``pretrained``: a tag (``ViT-B-32`` + ``laion2b_s34b_b79k``), a local
  checkpoint file, or None for random weights (tests and benchmarks only);
* ``hf-hub:org/repo`` (open_clip's Hugging Face schema);
* a local directory holding ``open_clip_config.json`` and weights, as ``curate train-filter``
  writes (also accepted as ``local-dir:/path``).

curate's own configs (``curate/model_configs/*.json``, e.g. ``curate-tiny``) are registered
with open_clip first. Weights that cannot be had (offline, unknown tag, missing file) raise
``CurateError`` naming the model and how to pass a local path.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.lib.torch_compat import ensure_torchvision

CONFIG_DIR = Path(__file__).parent.parent / "model_configs"


def _open_clip() -> Any:
    ensure_torchvision()
    try:
        import open_clip
    except ImportError as exc:
        raise CurateError("CLIP stages need open_clip", "pip install open_clip_torch==3.3.0"
                          ) from exc
    if "curate-tiny" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)
    return open_clip


def model_id(model: str) -> str:
    """The open_clip identifier for ``model`` (a directory becomes ``local-dir:``)."""
    if model.startswith(("hf-hub:", "local-dir:")):
        return model
    if Path(model).is_dir():
        return "local-dir:" + str(Path(model).resolve())
    return model


def model_config(model: str) -> dict[str, Any]:
    """The open_clip model config (embed_dim, vision_cfg, text_cfg) without building it."""
    mid = model_id(model)
    if mid.startswith("local-dir:"):
        path = Path(mid.removeprefix("local-dir:")) / "open_clip_config.json"
        if not path.is_file():
            raise CurateError(f"{model} has no open_clip_config.json",
                              "point model at a directory written by `curate train-filter`")
        return dict(json.loads(path.read_text())["model_cfg"])
    open_clip = _open_clip()
    if mid.startswith("hf-hub:"):
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(mid.removeprefix("hf-hub:"), "open_clip_config.json")
        except Exception as exc:
            raise CurateError(f"cannot fetch the config of {model}: {exc}".splitlines()[0],
                              "download the repo and pass its directory as model") from exc
        return dict(json.loads(Path(path).read_text())["model_cfg"])
    cfg = open_clip.get_model_config(mid)
    if cfg is None and ("/" in model or model.startswith(".")):
        raise CurateError(f"model directory {model!r} does not exist",
                          f"train one with `curate train-filter --data SHARDS --out {model}`, "
                          "or give an open_clip name")
    if cfg is None:
        raise CurateError(f"unknown open_clip model {model!r}",
                          "see open_clip.list_models(), or pass a directory or hf-hub:org/repo")
    return dict(cfg)


# Seconds the driver waits for the Hugging Face Hub to answer whether it can serve weights that
# are not in the local cache (a machine without network fails in well under a second).
HUB_PROBE_TIMEOUT_S = 10.0

_LOCAL_HINT = ("pass local weights: `model: {model}` with `pretrained: "
               "/path/to/open_clip_pytorch_model.bin`, or `model: /path/to/dir` holding "
               "open_clip_config.json and weights (e.g. from `curate train-filter`)")


def check_weights(model: str, pretrained: str | None) -> None:
    """Raise ``CurateError`` in seconds when ``load_clip(model, pretrained)`` could not get
    its weights on this machine: a missing file or directory, a tag open_clip does not know for
    the model, or hub weights that are neither in the local Hugging Face cache nor reachable
    (offline, or ``HF_HUB_OFFLINE=1``). Workers would otherwise each find out after minutes of
    retries."""
    hint = _LOCAL_HINT.format(model=model)
    mid = model_id(model)
    if mid.startswith("hf-hub:"):
        _check_hub(mid.removeprefix("hf-hub:"), ["open_clip_config.json"], model, hint)
    model_config(model)  # an unknown name or a directory without a config fails here
    if mid.startswith("local-dir:"):
        folder = Path(mid.removeprefix("local-dir:"))
        if not any((folder / n).is_file() for n in ("open_clip_model.safetensors",
                                                    "open_clip_pytorch_model.bin")):
            raise CurateError(f"model directory {folder} has no weights "
                              "(open_clip_model.safetensors or open_clip_pytorch_model.bin)",
                              "point model at a directory written by `curate train-filter`")
        return
    if mid.startswith("hf-hub:"):
        _check_hub(mid.removeprefix("hf-hub:"), ["open_clip_model.safetensors",
                                                 "open_clip_pytorch_model.bin"], model, hint)
        return
    if not pretrained or Path(pretrained).is_file():
        return
    if "/" in pretrained or pretrained.startswith("."):
        raise CurateError(f"checkpoint {pretrained!r} for {model} does not exist",
                          "pretrained is an open_clip tag or a path to a checkpoint file")
    from open_clip import pretrained as known

    cfg = known.get_pretrained_cfg(mid, pretrained)
    if not cfg:
        tags = known.list_pretrained_tags_by_model(mid)
        raise CurateError(f"open_clip has no pretrained weights {pretrained!r} for {model}",
                          f"known tags: {', '.join(tags)}" if tags else
                          f"{model} has no published weights here; {hint}")
    if cfg.get("hf_hub"):
        repo, filename = cfg["hf_hub"].rstrip("/"), None
        if not cfg["hf_hub"].endswith("/"):
            repo, filename = repo.rsplit("/", 1)
        names = [filename] if filename else []
        names += [n for n in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
                  if n not in names]
        _check_hub(repo, names, f"{model} ({pretrained})", hint)
    elif cfg.get("url"):
        cached = Path("~/.cache/clip").expanduser() / Path(cfg["url"]).name
        if not cached.is_file():
            _probe_url(cfg["url"], f"{model} ({pretrained})", hint)


def _check_hub(repo: str, names: list[str], what: str, hint: str) -> None:
    """Pass when one of ``names`` of ``repo`` is in the local cache, or the hub answers."""
    import os

    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    if any(isinstance(try_to_load_from_cache(repo, n), str) for n in names):
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise CurateError(f"the weights of {what} are not in the local Hugging Face cache and "
                          "HF_HUB_OFFLINE is set", hint)
    try:
        get_hf_file_metadata(hf_hub_url(repo, names[-1]), timeout=HUB_PROBE_TIMEOUT_S)
    except Exception as exc:
        cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise CurateError(f"the weights of {what} are not in the local Hugging Face cache and "
                          f"cannot be downloaded ({cause[:200]})", hint) from exc


def _probe_url(url: str, what: str, hint: str) -> None:
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                               timeout=HUB_PROBE_TIMEOUT_S).close()
    except Exception as exc:
        raise CurateError(f"the weights of {what} are not cached and cannot be downloaded "
                          f"from {url} ({type(exc).__name__}: {str(exc)[:200]})", hint) from exc


@dataclass
class LoadedClip:
    model: Any
    transform: Any  # PIL image → tensor (the model's eval preprocessing)
    tokenizer: Any
    preprocess_cfg: dict[str, Any]


def load_clip(model: str, pretrained: str | None, device: str = "cpu") -> LoadedClip:
    """Build ``model`` with its weights, in eval mode on ``device``."""
    open_clip = _open_clip()
    mid = model_id(model)
    if pretrained and not mid.startswith(("hf-hub:", "local-dir:")) and "/" in pretrained \
            and not Path(pretrained).is_file():
        raise CurateError(f"checkpoint {pretrained!r} for {model} does not exist",
                          "pretrained is an open_clip tag or a path to a checkpoint file")
    if pretrained is None and not mid.startswith(("hf-hub:", "local-dir:")):
        logging.getLogger("curate").warning("%s: no pretrained weights, using random ones", model)
    from curate.runtime import library_logs

    try:
        # open_clip logs through the root logger (and configures it when nothing has): its
        # warnings are said in curate's words below
        with library_logs() as said:
            net, _, transform = open_clip.create_model_and_transforms(
                mid, pretrained=pretrained or None, device=device)
            tokenizer = open_clip.get_tokenizer(mid)
            preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(net))
    except (RuntimeError, OSError, ValueError) as exc:
        cause = str(exc).splitlines()[0][:300]
        raise CurateError(
            f"could not load CLIP weights for {model}"
            f"{f' ({pretrained})' if pretrained else ''}: {cause}",
            f"offline? pass a local checkpoint: `model: {model}` with `pretrained: "
            "/path/to/open_clip_pytorch_model.bin`, or `model: /path/to/dir` holding "
            "open_clip_config.json and weights") from exc
    if mid.startswith("local-dir:") and any("no CLIP weights found" in r.getMessage()
                                             for r in said):
        logging.getLogger("curate").warning("%s: the directory holds no weights, so the model "
                                            "is random and its scores mean nothing", model)
    net.eval()
    return LoadedClip(model=net, transform=transform, tokenizer=tokenizer,
                      preprocess_cfg=preprocess_cfg)


def save_clip_dir(net: Any, model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any],
                  out: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``net`` as a directory that ``load_clip(model=out)`` (and open_clip's
    ``local-dir:``) loads: ``open_clip_config.json`` + ``open_clip_pytorch_model.bin``."""
    import torch

    from curate.io.atomic import atomic_path, write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "open_clip_pytorch_model.bin") as tmp:
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp)
    cfg = {"model_cfg": model_cfg,
           "preprocess_cfg": {k: list(v) if isinstance(v, tuple) else v
                              for k, v in preprocess_cfg.items()},
           **(extra or {})}
    write_text(json.dumps(cfg, indent=1), out / "open_clip_config.json")
    return out


def can_trim_text(net: Any) -> bool:
    """True when ``encode_text_trimmed`` gives the same result as ``net.encode_text``: an
    open_clip ``CLIP`` text tower with a causal mask, pooled at the end-of-text token."""
    return (hasattr(net, "token_embedding") and hasattr(net, "positional_embedding")
            and getattr(net, "attn_mask", None) is not None
            and getattr(net, "text_pool_type", None) in ("argmax", "eos"))


def trim_tokens(tokens: Any) -> Any:
    """Drop the padding columns after the longest caption's end-of-text token."""
    lengths = (tokens != 0).sum(dim=1)
    return tokens[:, : max(1, int(lengths.max()))]


def encode_text_trimmed(net: Any, tokens: Any) -> Any:
    """The text tower on tokens cut to the batch's longest caption.

    With a causal mask, a token's output depends only on the tokens before it, so the padding
    after the end-of-text token cannot change the pooled feature; cutting it saves most of the
    text tower on short web captions (77 positions → typically 15-25). Same maths as open_clip's
    ``CLIP.encode_text`` with the position embeddings and mask sliced to the shorter length.
    """
    import torch
    from open_clip.transformer import text_global_pool

    n = tokens.shape[1]
    dtype = net.transformer.get_cast_dtype()
    x = net.token_embedding(tokens).to(dtype) + net.positional_embedding[:n].to(dtype)
    x = net.transformer(x, attn_mask=net.attn_mask[:n, :n])
    x = net.ln_final(x)
    x = text_global_pool(x, tokens, net.text_pool_type,
                         eos_token_id=getattr(net, "text_eos_id", None))
    proj = net.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return x
