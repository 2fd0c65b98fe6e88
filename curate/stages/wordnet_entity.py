"""Scorer ``wordnet_entity``: does the caption name a WordNet synset from a list of ids?

DataComp's ``text_based`` baseline (Gadre et al., 2023, Sec. 3.4; ``baselines/apply_filter.py``,
``does_contain_text_entity``) keeps English captions with a word whose first WordNet synset is an
ImageNet-21k class. This scorer outputs that test as ``wordnet_entity<suffix>`` (bool): true when
one of the caption's ``str.split()`` words has a first synset (NLTK 3.8.1's
``wordnet.synsets(word)[0]``, lower-cased and lemmatised by morphy, see ``curate.lib.wordnet``)
whose offset is in ``ids``. The offset is compared whatever the synset's part of speech, as
DataComp does: "breathe" (first synset the verb 00001740) matches the noun id ``n00001740``
(entity). A missing or empty caption is false.

``ids`` is DataComp's asset ``imagenet21k_wordnet_ids.txt`` (one ``n########`` per line);
DataComp's ``download()`` caches it as ``~/.cache/datacomp/imagenet21k_wordnet_ids.pt`` (a text
file despite the name), the default here. ``wordnet`` is a WordNet 3.0 dictionary directory
(Debian's ``/usr/share/wordnet`` by default, or NLTK's ``nltk_data/corpora/wordnet``). The
SHA-256 of the ids file and of the WordNet files read are part of the scorer's identity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import Field, field_validator

from curate.errors import CurateError
from curate.lib.metadata import WORDNET_DIR
from curate.lib.wordnet import FILES, WordNetIndex, check_wordnet_dir, load_wordnet_ids
from curate.stages.base import Params, Resources, Scorer, register

DEFAULT_IDS = "~/.cache/datacomp/imagenet21k_wordnet_ids.pt"


class WordNetEntityParams(Params):
    path_fields = ("ids", "wordnet")  # local paths: saved absolute (curate.saved)
    ids: str = Field(default=DEFAULT_IDS, description="WordNet ids, one n######## per line")
    wordnet: str = Field(default=str(WORDNET_DIR), description="WordNet 3.0 dict directory")
    name: str = Field(default="", pattern=r"^[a-z0-9_]*$")
    cpus: float = Field(default=1.0, gt=0)

    @field_validator("ids", "wordnet")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return str(Path(v).expanduser().resolve())  # workers may run in another directory


@register
class WordNetEntity(Scorer):
    name = "wordnet_entity"
    Params = WordNetEntityParams

    def __init__(self, params: WordNetEntityParams | None = None) -> None:
        super().__init__(params)
        self.resources = Resources(cpus=self.params.cpus)  # type: ignore[attr-defined]
        suffix = f"_{self.params.name}" if self.params.name else ""  # type: ignore[attr-defined]
        self.column = f"wordnet_entity{suffix}"
        self._wordnet: WordNetIndex | None = None
        self._ids: frozenset[int] = frozenset()
        self._digest: str | None = None

    @property
    def label(self) -> str:
        return self.column

    def inputs(self) -> tuple[str, ...]:
        return ("caption",)

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {self.column: pa.bool_()}

    def check(self) -> None:
        p: WordNetEntityParams = self.params  # type: ignore[assignment]
        if not Path(p.ids).is_file():
            raise CurateError(f"no WordNet ids file {p.ids}", "give `ids`: DataComp's "
                              "imagenet21k_wordnet_ids.txt (lines such as n01440764)")
        check_wordnet_dir(p.wordnet)

    def fingerprint(self) -> str:
        """Also changes when the ids or the WordNet files change."""
        if self._digest is None:
            self.check()
            p: WordNetEntityParams = self.params  # type: ignore[assignment]
            h = hashlib.sha256(super().fingerprint().encode())
            for path in [Path(p.ids), *(Path(p.wordnet) / f for f in FILES)]:
                h.update(hashlib.sha256(path.read_bytes()).digest())
            self._digest = h.hexdigest()[:16]
        return self._digest

    def setup(self) -> None:
        p: WordNetEntityParams = self.params  # type: ignore[assignment]
        self.check()
        self._wordnet = WordNetIndex(p.wordnet)
        self._ids = load_wordnet_ids(p.ids)

    def score_batch(self, batch: pa.Table) -> Mapping[str, Sequence[Any]]:
        if self._wordnet is None:
            self.setup()
        assert self._wordnet is not None
        wn, ids = self._wordnet, self._ids
        return {self.column: [bool(c) and wn.contains_entity(c, ids)
                              for c in batch.column("caption").to_pylist()]}
