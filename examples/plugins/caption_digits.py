"""Scorer ``caption_digits``: how much of the caption is digits (an example plugin).

Captions such as ``IMG_20190412_0931`` or ``DSC 0042`` are file names, not descriptions. This
scorer adds ``caption_digits`` (the number of decimal digits in the caption) and
``caption_digit_share`` (digits / characters, 0 for an empty or missing caption), so a rule can
drop them::

    imports: [examples/plugins/caption_digits.py]   # relative to the pipeline file
    score:
      - caption_digits
    select:
      - rule: threshold
        column: caption_digit_share
        max: 0.3
        reason: caption_mostly_digits

It is one file outside the package: ``imports:`` (or ``curate stages --import FILE``, or
``curate.load_plugins(FILE)`` in Python) imports it, ``@register`` makes it a scorer, and the
Ray workers receive it with the pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
from pydantic import Field

from curate.stages.base import Params, SampleScorer, register


class CaptionDigitsParams(Params):
    digits: str = Field(default="0123456789", min_length=1,
                        description="the characters counted as digits")


@register
class CaptionDigits(SampleScorer):
    name = "caption_digits"
    Params = CaptionDigitsParams

    def inputs(self) -> tuple[str, ...]:
        return ("caption",)

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {"caption_digits": pa.int32(), "caption_digit_share": pa.float32()}

    def score_sample(self, sample: dict[str, Any]) -> Mapping[str, Any]:
        caption = sample["caption"] or ""
        digits = set(self.params.digits)  # type: ignore[attr-defined]
        n = sum(ch in digits for ch in caption)
        return {"caption_digits": n, "caption_digit_share": n / len(caption) if caption else 0.0}
