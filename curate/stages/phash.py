"""Scorer ``phash``: 64-bit perceptual hashes of each image, for near-duplicate detection.

Computed with the ``imagehash`` library (4.3.2) at its defaults for a 64-bit hash
(``hash_size=8``): ``kind`` picks one or more of

* ``phash`` (the default): the DCT hash: greyscale, resized to 32 x 32 (Lanczos), the 8 x 8
  lowest frequencies of its 2-D DCT, each bit ``coefficient > median`` (Zauner 2010; the
  "pHash" of hackerfactor's "Looks Like It");
* ``dhash``: greyscale resized to 9 x 8, one bit per horizontal neighbour ``left < right``;
* ``whash``: a Haar wavelet hash (imagehash's ``whash``: the image resized to the largest power
  of two not above its short side, the lowest level removed).

Each kind is a column of that name, of type ``uint64``: the 64 bits of imagehash's 8 x 8 bit
array in row-major order, the first bit the most significant, so the value is
``int(str(imagehash.phash(im)), 16)`` and ``printf('%016x', phash)`` in DuckDB prints the hex
imagehash prints. An unsigned integer, not a binary string, so that DuckDB computes a Hamming
distance directly (``bit_count(xor(a.phash, b.phash))``), Parquet stores it in 8 bytes, and
polars and numpy read it as ``UInt64`` / ``uint64`` with no conversion. (A histogram of it in
the run report means nothing: hashes are identifiers, not scores.)

Decoding: ``curate.lib.imaging.open_image`` (header only: empty members, non-images and images
over ``max_pixels`` fail the sample before any pixel is decoded), then the pixels exactly as
imagehash reads a PIL image: the first frame, converted straight to greyscale (``L``) from its
own mode (an alpha channel is dropped, not composited). The EXIF orientation tag is not applied,
as imagehash, the other curate decoders and the copied output bytes do not: an image stored
rotated with an orientation tag hashes as stored. So the column equals imagehash's hash of
``PIL.Image.open`` of the same bytes (tested). ``fast_decode: true`` decodes JPEGs at reduced
DCT scale (Pillow ``draft``, the short side still at least ``4 * 32`` pixels): cheaper, and the
hashes may then differ from imagehash's by a few bits (docs/near_dedup.md has the figures).
A sample that does not decode fails alone with the decoder's message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, field_validator

from curate.lib.imaging import MAX_PIXELS, PILLOW_HARD_LIMIT, open_image
from curate.stages.base import Params, SampleScorer, register

Kind = Literal["phash", "dhash", "whash"]
HASH_SIZE = 8  # bits per side: 64-bit hashes
FAST_DECODE_SIDE = 128  # fast_decode: the short side stays >= 4x phash's 32 x 32 resize


class PHashParams(Params):
    kind: Kind | list[Kind] = Field(
        default="phash", description="hash kind(s): phash, dhash, whash; one column each")
    max_pixels: int = Field(default=MAX_PIXELS, gt=0, le=PILLOW_HARD_LIMIT,
                            description="images with more pixels fail before decoding")
    fast_decode: bool = Field(
        default=False, description="decode JPEGs at reduced DCT scale (faster; hashes may "
                                   "differ from imagehash's by a few bits)")

    @field_validator("kind")
    @classmethod
    def _distinct(cls, v: Kind | list[Kind]) -> Kind | list[Kind]:
        if isinstance(v, list):
            if not v:
                raise ValueError("name at least one hash kind")
            if len(set(v)) != len(v):
                raise ValueError(f"a hash kind is named twice: {v}")
        return v

    @property
    def kinds(self) -> tuple[Kind, ...]:
        return (self.kind,) if isinstance(self.kind, str) else tuple(self.kind)


def hash_value(bits: Any) -> int:
    """The uint64 of an ``imagehash.ImageHash`` (or its 8 x 8 bool array): row-major, the first
    bit the most significant."""
    flat = getattr(bits, "hash", bits).flatten()
    if len(flat) != HASH_SIZE * HASH_SIZE:
        raise ValueError(f"expected a 64-bit hash, got {len(flat)} bits")
    value = 0
    for b in flat:
        value = (value << 1) | bool(b)
    return value


@register
class PHash(SampleScorer):
    name = "phash"
    Params = PHashParams

    def inputs(self) -> tuple[str, ...]:
        return ("image",)

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {k: pa.uint64() for k in self.params.kinds}  # type: ignore[attr-defined]

    def setup(self) -> None:
        import imagehash

        self._fns = {"phash": imagehash.phash, "dhash": imagehash.dhash,
                     "whash": imagehash.whash}

    def score_sample(self, sample: dict[str, Any]) -> Mapping[str, Any]:
        p: PHashParams = self.params  # type: ignore[assignment]
        with open_image(sample["image"], p.max_pixels) as im:
            if p.fast_decode and im.format == "JPEG":
                im.draft("RGB", (FAST_DECODE_SIDE, FAST_DECODE_SIDE))
            grey = im.convert("L")  # what each imagehash function does first (L → L: a copy)
        return {k: hash_value(self._fns[k](grey, hash_size=HASH_SIZE)) for k in p.kinds}
