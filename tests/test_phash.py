"""``phash``: our columns are imagehash's own hashes of the same bytes."""

from __future__ import annotations

import io

import duckdb
import imagehash
import numpy as np
import pyarrow as pa
import pytest
from neardupmaker import PLANTED, encode, originals
from PIL import Image, ImageOps
from shardmaker import HTML_PAGE, jpeg_claiming
from stagetest import score

from curate.errors import ConfigError
from curate.stages.phash import PHash, PHashParams, hash_value

FNS = {"phash": imagehash.phash, "dhash": imagehash.dhash, "whash": imagehash.whash}


def reference(data: bytes, kind: str) -> int:
    """imagehash on PIL.Image.open of the bytes, as its README does it."""
    return int(str(FNS[kind](Image.open(io.BytesIO(data)))), 16)


def images() -> list[bytes]:
    """The demo photos and planted copies (JPEG and PNG), and images in other modes."""
    out = []
    for img, ext in originals().values():
        out.append(encode(img, ext))
        out += [f(img, ext)[0] for f in list(PLANTED.values())[:3]]
    img = next(iter(originals().values()))[0]
    rgba = img.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(img.size))
    for mode_img, fmt in [(rgba, "PNG"), (img.convert("P"), "GIF"), (img.convert("L"), "JPEG"),
                          (img.convert("CMYK"), "JPEG"), (img.convert("1"), "PNG"),
                          (img.convert("I;16"), "PNG"), (img.convert("LA"), "PNG")]:
        buf = io.BytesIO()
        mode_img.save(buf, fmt)
        out.append(buf.getvalue())
    return out


def test_columns_equal_imagehash_for_every_kind() -> None:
    data = images()
    scorer = PHash(PHashParams(kind=["phash", "dhash", "whash"]))
    assert scorer.outputs() == {"phash": pa.uint64(), "dhash": pa.uint64(),
                                "whash": pa.uint64()}
    out, errors = score(scorer, [{"image": d} for d in data])
    assert errors.ok_rows() == list(range(len(data)))
    for d, row in zip(data, out, strict=True):
        for kind in FNS:
            assert row[kind] == reference(d, kind), kind
    # the integer is the hex imagehash prints, and hash_value reads the bit array the same way
    h = imagehash.phash(Image.open(io.BytesIO(data[0])))
    assert f"{out[0]['phash']:016x}" == str(h) and hash_value(h) == out[0]["phash"]


def test_default_is_phash_only() -> None:
    assert PHash().outputs() == {"phash": pa.uint64()}
    with pytest.raises(ValueError, match="named twice"):
        PHashParams(kind=["phash", "phash"])
    with pytest.raises(ValueError):
        PHashParams(kind="ahash")  # type: ignore[arg-type]


def test_exif_orientation_is_not_applied() -> None:
    img = originals()["chelsea"][0]  # wider than tall
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=exif)
    data = buf.getvalue()
    (row,), _ = score(PHash(), [{"image": data}])
    assert row["phash"] == reference(data, "phash")  # the pixels as stored
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    shown = int(str(imagehash.phash(upright)), 16)
    assert bin(row["phash"] ^ shown).count("1") > 16  # the displayed image hashes apart


def test_a_sample_that_does_not_decode_fails_alone() -> None:
    good = encode(originals()["coffee"][0], "jpg")
    rows = [{"image": good}, {"image": good[: len(good) // 3]}, {"image": HTML_PAGE},
            {"image": b""}, {"image": jpeg_claiming(20000, 20000)}, {"image": good}]
    out, errors = score(PHash(PHashParams(max_pixels=10_000_000)), rows)
    assert errors.ok_rows() == [0, 5]
    assert out[0]["phash"] == out[5]["phash"] == reference(good, "phash")
    assert all(out[i]["phash"] is None for i in (1, 2, 3, 4))
    msgs = errors.message
    assert "truncated" in msgs[1] and "looks like HTML" in msgs[2]
    assert "empty image member" in msgs[3] and "over max_pixels 10000000" in msgs[4]
    assert errors.stage[1:5] == ["phash"] * 4


def test_fast_decode_stays_within_a_few_bits() -> None:
    data = [encode(img, "jpg") for img, _ in originals().values()]
    data += [PLANTED["resize_150"](img, ext)[0] for img, ext in originals().values()]
    fast, _ = score(PHash(PHashParams(kind=["phash", "dhash"], fast_decode=True)),
                    [{"image": d} for d in data])
    diffs = {k: [bin(r[k] ^ reference(d, k)).count("1") for d, r in zip(data, fast,
                                                                         strict=True)]
             for k in ("phash", "dhash")}
    assert max(diffs["phash"]) <= 2 and max(diffs["dhash"]) <= 3
    png = encode(originals()["coffee"][0], "png")  # only JPEGs are drafted
    (row,), _ = score(PHash(PHashParams(fast_decode=True)), [{"image": png}])
    assert row["phash"] == reference(png, "phash")


def test_duckdb_reads_the_column_and_computes_distances() -> None:
    data = [encode(img, ext) for img, ext in originals().values()][:4]
    out, _ = score(PHash(), [{"image": d} for d in data])
    t = pa.table({"i": range(4), "phash": pa.array([r["phash"] for r in out], pa.uint64())})
    con = duckdb.connect()
    con.register("t", t)
    got = con.execute("SELECT a.i, b.i, bit_count(xor(a.phash, b.phash)), "
                      "printf('%016x', a.phash) FROM t a, t b ORDER BY 1, 2").fetchall()
    for i, j, d, hexa in got:
        assert d == bin(out[i]["phash"] ^ out[j]["phash"]).count("1")
        assert hexa == str(imagehash.phash(Image.open(io.BytesIO(data[i]))))
    assert np.asarray(t.column("phash")).dtype == np.uint64


def test_pipeline_names_the_kinds() -> None:
    from curate.config import pipeline_from_dict

    with pytest.raises(ConfigError, match="kind"):
        pipeline_from_dict({"input": {"shards": "x"},
                            "score": [{"phash": {"kind": "md5"}}]})
