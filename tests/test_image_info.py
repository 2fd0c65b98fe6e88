from __future__ import annotations

import pytest
from shardmaker import jpeg, png
from stagetest import score

from curate.stages.image_info import ImageInfo, ImageInfoParams


def test_measures_jpeg_and_png() -> None:
    data = jpeg(640, 200)
    out, errors = score(ImageInfo(), [{"image": data}, {"image": png(100, 300)}])
    assert out[0]["aspect_ratio"] == pytest.approx(3.2)
    assert {k: v for k, v in out[0].items() if k != "aspect_ratio"} == {
        "width": 640, "height": 200, "image_format": "JPEG", "image_bytes": len(data),
        "original_width": None, "original_height": None}
    assert out[1]["image_format"] == "PNG" and out[1]["aspect_ratio"] == 3.0
    assert errors.stage == [None, None]


def test_corrupt_truncated_empty_and_not_an_image_fail_with_reason() -> None:
    good = jpeg(400, 300)
    rows = [{"image": good[: len(good) // 3]}, {"image": b""}, {"image": b"<html>hi</html>"},
            {"image": good}]
    out, errors = score(ImageInfo(), rows)
    assert errors.stage == ["image_info", "image_info", "image_info", None]
    assert "truncated" in errors.message[0].lower() or "broken" in errors.message[0].lower()
    assert errors.message[1] == "ValueError: empty image member (0 bytes)"
    assert errors.message[2].startswith("UnidentifiedImageError")
    assert out[0]["width"] is None and out[3]["width"] == 400


def test_pixel_limit_rejects_before_decoding() -> None:
    _, errors = score(ImageInfo(ImageInfoParams(max_pixels=1000)), [{"image": jpeg(100, 100)}])
    assert errors.stage == ["image_info"] and "over max_pixels 1000" in errors.message[0]


def test_original_size_comes_from_the_json_member() -> None:
    """img2dataset (and so DataComp's pool) stores the image resized and writes the size before
    resizing as original_width / original_height in the json member."""
    import json

    rows = [{"image": jpeg(512, 171), "json": json.dumps({"original_width": 1500,
                                                          "original_height": 500})},
            {"image": jpeg(64, 64), "json": json.dumps({"original_width": None})},
            {"image": jpeg(64, 64), "json": None},
            {"image": jpeg(64, 64), "json": json.dumps({"original_width": "big",
                                                        "original_height": True})},
            {"image": jpeg(64, 64), "json": json.dumps({"original_width": 300.0,
                                                        "original_height": -2})}]
    out, errors = score(ImageInfo(), rows)
    assert [(r["original_width"], r["original_height"]) for r in out] == [
        (1500, 500), (None, None), (None, None), (None, None), (300, None)]
    assert (out[0]["width"], out[0]["height"]) == (512, 171)
    assert errors.stage == [None] * 5
