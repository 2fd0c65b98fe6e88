"""Scorer ``metaclip2_match``: MetaCLIP 2's per-language substring matching (Chuang et al.,
"Meta CLIP 2: A Worldwide Scaling Recipe", 2025; facebookresearch/MetaCLIP
``metaclip/curation/substr_matching.py`` and stage 1 of ``curate.py``).

Each text of a sample is matched against the metadata of its own language
(``curate.lib.metaclip2``: the language mapping, the stripped and spaced text, entries not
padded at a CJK, Thai-like or punctuation end):

* The texts are the caption (``texts`` unset) or the list in the json member's field ``texts``,
  as in MetaCLIP 2's records: strings, ``[key, text]`` or ``[key, text, lang]``.
* A text's LID code is the record's ``lang`` when it has one, else the sample's
  ``lang_column`` (default ``lang``, from the ``language`` scorer: fasttext lid.176, the model
  the authors' ``parse_wat.py`` runs through ``ftlangdetect``).
* ``metadata_dir`` holds the per-language lists ``<code>.json``; ``languages`` maps LID codes
  to metadata codes where they differ (the authors' ``lid_to_wiki``; "N/A" means ``other``).

Outputs, one item per text in order: ``metaclip2_entries`` (``list<list<int32>>``, sorted ids
into that text's language list), ``metaclip2_langs`` (its metadata language, null when it has
none); ``metaclip2_matches`` (matches over all texts) and ``metaclip2_metadata`` (the
directory's digest, which ``metaclip2_balance`` checks). A text with no match is kept with an
empty list; MetaCLIP drops it from its index, and balancing never chooses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.stages.base import SAMPLE_ERRORS, Params, Scorer, register
from curate.stages.metaclip_match import as_captions, json_texts, nest


class Metaclip2MatchParams(Params):
    path_fields = ("metadata_dir",)  # local paths: saved absolute (curate.saved)
    metadata_dir: str  # folder of per-language lists <code>.json (MetaCLIP 2's data/metadata)
    texts: str | None = None  # a json field listing the texts (default: the caption)
    lang_column: str | None = "lang"  # LID code of texts whose record has none
    languages: dict[str, str] = Field(default_factory=dict)  # LID code -> metadata code


@register
class Metaclip2Match(Scorer):
    name = "metaclip2_match"
    Params = Metaclip2MatchParams

    def __init__(self, params: Metaclip2MatchParams | None = None) -> None:
        super().__init__(params)
        p: Metaclip2MatchParams = self.params  # type: ignore[assignment]
        self.metadata_dir = Path(p.metadata_dir).resolve()  # on the driver
        self._dir: Any = None
        self._matchers: dict[str, Any] = {}
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        """Also changes when any language file's content does."""
        import hashlib

        from curate.errors import CurateError
        from curate.lib.metaclip2 import MetadataDir

        if self._fingerprint is None:
            try:
                digest = MetadataDir(self.metadata_dir).digest()
            except (CurateError, OSError):
                digest = "unreadable"  # check() and setup() say why
            blob = f"{super().fingerprint()}|{digest}"
            self._fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return self._fingerprint

    def inputs(self) -> tuple[str, ...]:
        p: Metaclip2MatchParams = self.params  # type: ignore[assignment]
        return ("json" if p.texts else "caption",) + ((p.lang_column,) if p.lang_column else ())

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {"metaclip2_entries": pa.list_(pa.list_(pa.int32())),
                "metaclip2_langs": pa.list_(pa.string()), "metaclip2_matches": pa.int32(),
                "metaclip2_metadata": pa.string()}

    def check(self) -> None:
        from curate.lib.metaclip2 import MetadataDir

        MetadataDir(self.metadata_dir)

    def setup(self) -> None:
        from curate.lib.metaclip2 import MetadataDir

        self._dir = MetadataDir(self.metadata_dir, self.params.languages)  # type: ignore[attr-defined]
        self._digest = self._dir.digest()
        self._matchers = {}

    def _matcher(self, code: str) -> Any:
        from curate.lib.metaclip2 import LanguageMatcher

        if code not in self._matchers:  # built on first use: a worker meets few languages
            self._matchers[code] = LanguageMatcher(self._dir.entries(code))
        return self._matchers[code]

    def score_batch(self, batch: pa.Table) -> Mapping[str, Sequence[Any] | pa.Array]:
        if self._dir is None:
            self.setup()
        p: Metaclip2MatchParams = self.params  # type: ignore[assignment]
        n = batch.num_rows
        row_lang = (batch.column(p.lang_column).to_pylist() if p.lang_column
                    else [None] * n)
        if p.texts:
            texts, own, errors = json_texts(batch.column("json").to_pylist(), p.texts,
                                            with_lang=True)
        else:
            captions, cap_errors = as_captions(batch.column("caption"))
            texts = [[c] if c is not None else [] for c in captions.to_pylist()]
            own = [[None] * len(t) for t in texts]
            errors = cap_errors or [None] * n
        flat: list[str] = []
        lids: list[str | None] = []
        for r in range(n):
            for text, lang in zip(texts[r], own[r], strict=True):
                flat.append(text)
                lids.append(lang if lang is not None else row_lang[r])
        codes = [self._dir.language(lid) for lid in lids]
        per_text: list[list[int]] = [[] for _ in flat]
        by_code: dict[str, list[int]] = {}
        for k, code in enumerate(codes):
            if code is not None:
                by_code.setdefault(code, []).append(k)
        for code, ks in by_code.items():
            for k, ids in zip(ks, self._matcher(code).match([flat[k] for k in ks]),
                              strict=True):
                per_text[k] = ids
        sizes = [len(t) for t in texts]
        inner = pa.array(per_text, type=pa.list_(pa.int32()))
        rows = np.repeat(np.arange(n), sizes)
        totals = np.bincount(rows, weights=[len(x) for x in per_text], minlength=n)
        return {"metaclip2_entries": nest(sizes, inner),
                "metaclip2_langs": nest(sizes, pa.array(codes, type=pa.string())),
                "metaclip2_matches": pa.array(totals.astype(np.int32)),
                "metaclip2_metadata": pa.array([self._digest] * n, type=pa.string()),
                SAMPLE_ERRORS: errors}
