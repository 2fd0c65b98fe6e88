"""Scorer ``json_fields``: fields of each sample's json member as declared, typed columns.

A pool's json members often carry what its source knew: img2dataset writes ``width``,
``height``, ``original_width``, ``original_height``, ``sha256`` and the columns it was asked to
keep (DataComp keeps ``uid``); LAION's parquet columns (``punsafe``, ``pwatermark``,
``similarity``) end up there too. Declare the fields and their types::

    - json_fields:
        columns: {punsafe: float32, similarity: float64, NSFW: string}

Each becomes a column of the same name, stored in the store like any score (so it is read
once). A field the json lacks, or holds as null, gives null. A value that is not of the
declared type fails that sample (``json field 'punsafe' is not float32: "high"``); whole
floats count as integers, integers as floats, and a bool is never a number. A field name that
is not a plain identifier can be mapped with ``rename: {"my-field": my_field}`` (json key →
column). Types: ``bool``, ``int32``, ``int64``, ``float32``, ``float64``, ``string``,
``list<T>``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
from pydantic import Field, model_validator

from curate.lib.coltypes import NAME, parse_type
from curate.stages.base import SAMPLE_ERRORS, Params, Scorer, register

_RESERVED = ("uid", "shard", "key", "index", "url", "caption", "status", "error", "json",
             "image")


class JsonFieldsParams(Params):
    columns: dict[str, str] = Field(min_length=1)  # column (or json key) → type
    rename: dict[str, str] = {}  # json key → column name

    @model_validator(mode="after")
    def _valid(self) -> JsonFieldsParams:
        for key, type_name in self.columns.items():
            col = self.rename.get(key, key)
            if not NAME.match(col):
                raise ValueError(f"column name {col!r} is not a plain identifier (map it with "
                                 "rename)")
            if col in _RESERVED:
                raise ValueError(f"column {col!r} is one of the reader's")
            parse_type(type_name)
        unknown = sorted(set(self.rename) - set(self.columns))
        if unknown:
            raise ValueError(f"rename names {unknown[0]!r}, which is not in columns")
        return self


class _Bad(Exception):
    pass


def _convert(value: Any, t: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_list(t):
        if not isinstance(value, list):
            raise _Bad
        return [_convert(v, t.value_type) for v in value]
    if pa.types.is_boolean(t):
        if not isinstance(value, bool):
            raise _Bad
        return value
    if isinstance(value, bool):
        raise _Bad
    if pa.types.is_integer(t):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        bits = t.bit_width - 1
        if not isinstance(value, int) or not -(2**bits) <= value < 2**bits:
            raise _Bad
        return value
    if pa.types.is_floating(t):
        if not isinstance(value, int | float) or (
                t == pa.float32() and math.isfinite(value) and abs(value) > 3.4028234e38):
            raise _Bad
        return float(value)
    if not isinstance(value, str):
        raise _Bad
    return value


@register
class JsonFields(Scorer):
    name = "json_fields"
    Params = JsonFieldsParams

    def _fields(self) -> list[tuple[str, str, pa.DataType, str]]:
        p: JsonFieldsParams = self.params  # type: ignore[assignment]
        return [(key, p.rename.get(key, key), parse_type(t)[0], t)
                for key, t in p.columns.items()]

    def inputs(self) -> tuple[str, ...]:
        return ("json",)

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {col: t for _, col, t, _ in self._fields()}

    def score_batch(self, batch: pa.Table) -> Mapping[str, Sequence[Any]]:
        fields = self._fields()
        out: dict[str, list[Any]] = {col: [] for _, col, _, _ in fields}
        errors: list[str | None] = []
        for text in batch.column("json").to_pylist():
            meta: Any = None
            if text:
                try:
                    meta = json.loads(text)
                except ValueError:
                    meta = None  # the reader already failed such a sample
            meta = meta if isinstance(meta, dict) else {}
            problem = None
            for key, col, t, type_name in fields:
                try:
                    out[col].append(_convert(meta.get(key), t))
                except _Bad:
                    out[col].append(None)
                    problem = problem or (f"json field {key!r} is not {type_name}: "
                                          f"{json.dumps(meta.get(key))[:80]}")
            errors.append(problem)
        return {**out, SAMPLE_ERRORS: errors}
