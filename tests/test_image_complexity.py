from __future__ import annotations

import io

from clipfixtures import big_photos
from PIL import Image
from shardmaker import png
from stagetest import score

from curate.stages.image_complexity import ImageComplexity


def test_flat_images_score_low() -> None:
    flat = png(400, 300, (90, 140, 200))
    noise = io.BytesIO()
    Image.effect_noise((256, 256), 60).convert("RGB").save(noise, "PNG")
    out, _ = score(ImageComplexity(), [{"image": flat}, {"image": big_photos(2)[1]},
                                       {"image": noise.getvalue()}])
    flat_r, photo_r, noise_r = out
    assert flat_r["image_bpp"] < 0.05 and flat_r["edge_density"] == 0.0
    assert photo_r["image_bpp"] > 1.0 and photo_r["edge_density"] > 0.01
    assert noise_r["image_bpp"] > 5.0 and noise_r["edge_density"] > 0.1
