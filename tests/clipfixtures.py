"""A small random-weight CLIP saved as a model directory, and large photos for decode tests."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image


def random_clip_dir(out: Path, name: str = "curate-tiny", seed: int = 0) -> Path:
    import torch

    from curate.lib.clip_model import _open_clip, model_config, save_clip_dir

    open_clip = _open_clip()
    torch.manual_seed(seed)
    net = open_clip.create_model(name, pretrained=None)
    return save_clip_dir(net, model_config(name), open_clip.get_model_preprocess_cfg(net), out)


def big_photos(n: int = 6) -> list[bytes]:
    """Real photos (shipped with scikit-image) upscaled to web-typical sizes, as JPEG q90."""
    from skimage import data

    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    sizes = [(1024, 768), (800, 1200), (1280, 720), (640, 640)]
    out = []
    for i in range(n):
        im = Image.fromarray(sources[i % len(sources)]).resize(sizes[i % len(sizes)],
                                                              Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out
