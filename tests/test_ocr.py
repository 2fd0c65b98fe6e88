"""The OCR scorer reads rendered text, finds none on plain images, and masks what it found."""

from __future__ import annotations

import io

import numpy as np
import pytest
from clipfixtures import big_photos
from PIL import Image
from stagetest import score
from textimages import poster

from curate.stages.ocr import Ocr, mask_text_regions, text_area


@pytest.fixture(scope="module")
def ocr() -> Ocr:
    stage = Ocr()
    stage.setup()
    return stage


def test_reads_rendered_text_with_normalised_boxes(ocr: Ocr) -> None:
    rows = [{"image": poster(["SUMMER SALE", "50% OFF"])},
            {"image": poster(["OPEN 24 HOURS"], fmt="PNG")}]
    out, errors = score(ocr, rows)
    assert errors.stage == [None, None]
    assert out[0]["ocr_texts"] == ["SUMMER SALE", "50% OFF"]
    assert out[0]["ocr_text"] == "SUMMER SALE 50% OFF" and out[0]["ocr_n_boxes"] == 2
    assert out[1]["ocr_text"] == "OPEN 24 HOURS"
    for box in out[0]["ocr_boxes"]:
        assert len(box) == 8 and all(0 <= v <= 1 for v in box)
    assert 0.05 < out[0]["ocr_area"] < 0.6
    assert all(s > 0.8 for s in out[0]["ocr_scores"])


def test_no_text_on_plain_images(ocr: Ocr) -> None:
    flat = io.BytesIO()
    Image.new("RGB", (400, 300), (20, 120, 200)).save(flat, "PNG")
    photos = big_photos(4)  # astronaut, cat, coffee, rocket (the stretched cat's fur reads "190")
    out, _ = score(ocr, [{"image": flat.getvalue()}] + [{"image": photos[i]} for i in (0, 2)])
    assert [r["ocr_n_boxes"] for r in out] == [0, 0, 0]
    assert all(r["ocr_text"] is None and r["ocr_area"] == 0 for r in out)


def test_masking_removes_the_text(ocr: Ocr) -> None:
    data = poster(["GRAND OPENING"])
    out, _ = score(ocr, [{"image": data}])
    im = Image.open(io.BytesIO(data)).convert("RGB")
    masked = mask_text_regions(im, out[0]["ocr_boxes"])
    buf = io.BytesIO()
    masked.save(buf, "PNG")
    again, _ = score(ocr, [{"image": buf.getvalue()}])
    assert again[0]["ocr_n_boxes"] == 0
    # Outside the boxes nothing changed; inside, the fill is the background colour.
    a, b = np.asarray(im, np.int16), np.asarray(masked, np.int16)
    assert np.abs(a[5:30, 5:30] - b[5:30, 5:30]).max() == 0
    assert np.abs(b.reshape(-1, 3).mean(0) - np.array([235, 225, 200])).max() < 12


def test_text_area_is_the_union() -> None:
    box = [0.0, 0.0, 0.5, 0.0, 0.5, 0.5, 0.0, 0.5]
    assert text_area([box]) == pytest.approx(0.25, abs=0.01)
    assert text_area([box, box]) == pytest.approx(0.25, abs=0.01)
    assert text_area([]) == 0.0
