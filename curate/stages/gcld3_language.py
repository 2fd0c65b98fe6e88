"""Scorer ``gcld3_language``: language id of the caption with Google's CLD3 (``gcld3``).

DataComp's ``laion2b`` baseline (Gadre et al., 2023; ``baselines/apply_filter.py``,
``get_gcld3_language``) reproduces LAION-2B's English split with CLD3, not fasttext:
``NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)`` and ``FindLanguage`` on the
caption with each newline replaced by a space. This scorer does exactly that, for every caption
that exists, the empty one included (CLD3 names a language even then, as in DataComp), and
outputs ``lang_gcld3`` (the language code, e.g. ``en``), ``lang_gcld3_score`` (its probability)
and ``lang_gcld3_reliable`` (CLD3's own reliability flag). A missing caption gives nulls.

gcld3 is a compiled package built from source by pip; building needs the protobuf compiler
and headers (Debian ``protobuf-compiler libprotobuf-dev``, which ``make install`` installs).
Without it, the scorer fails on the driver with that hint, before any work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from curate.errors import CurateError
from curate.stages.base import Scorer, register

MAX_BYTES = 1000  # DataComp's max_num_bytes: CLD3 reads at most this much of the text


def _gcld3() -> Any:
    try:
        import gcld3
    except ImportError as exc:
        raise CurateError("the gcld3_language scorer needs the gcld3 package",
                          "install protobuf-compiler and libprotobuf-dev (Debian), then "
                          "pip install gcld3==3.0.13") from exc
    return gcld3


@register
class Gcld3Language(Scorer):
    name = "gcld3_language"

    def inputs(self) -> tuple[str, ...]:
        return ("caption",)

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {"lang_gcld3": pa.string(), "lang_gcld3_score": pa.float32(),
                "lang_gcld3_reliable": pa.bool_()}

    def check(self) -> None:
        _gcld3()

    def setup(self) -> None:
        self._model: Any = _gcld3().NNetLanguageIdentifier(min_num_bytes=0,
                                                           max_num_bytes=MAX_BYTES)

    def score_batch(self, batch: pa.Table) -> Mapping[str, Sequence[Any]]:
        langs: list[str | None] = []
        scores: list[float | None] = []
        reliable: list[bool | None] = []
        for caption in batch.column("caption").to_pylist():
            if caption is None:
                langs.append(None)
                scores.append(None)
                reliable.append(None)
                continue
            r = self._model.FindLanguage(text=caption.replace("\n", " "))
            langs.append(r.language)
            scores.append(float(r.probability))
            reliable.append(bool(r.is_reliable))
        return {"lang_gcld3": langs, "lang_gcld3_score": scores,
                "lang_gcld3_reliable": reliable}
