"""json_fields: declared, typed columns from the json member (img2dataset / LAION fields)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from pydantic import ValidationError
from stagetest import score

from curate.config import pipeline_from_dict
from curate.errors import ConfigError
from curate.stages.json_fields import JsonFields, JsonFieldsParams


def test_declared_fields_become_typed_columns() -> None:
    s = JsonFields(JsonFieldsParams(
        columns={"original_width": "int64", "punsafe": "float32", "NSFW": "string",
                 "face_bboxes": "list<list<float64>>", "ok": "bool", "my-field": "int32"},
        rename={"my-field": "my_field"}))
    assert dict(s.outputs()) == {
        "original_width": pa.int64(), "punsafe": pa.float32(), "NSFW": pa.string(),
        "face_bboxes": pa.list_(pa.list_(pa.float64())), "ok": pa.bool_(),
        "my_field": pa.int32()}
    rows = [{"json": json.dumps({"original_width": 1500, "punsafe": 0.25, "NSFW": "UNLIKELY",
                                 "face_bboxes": [[0.1, 0.2, 0.3, 0.4]], "ok": True,
                                 "my-field": 7.0})},
            {"json": json.dumps({"original_width": None})},  # null and missing: nulls
            {"json": None},
            {"json": json.dumps({"original_width": "wide"})},  # wrong type: that sample fails
            {"json": json.dumps({"original_width": True})},  # a bool is not a number
            {"json": json.dumps({"my-field": 2**40})}]  # out of int32's range
    out, errors = score(s, rows)
    assert out[0] == {"original_width": 1500, "punsafe": 0.25, "NSFW": "UNLIKELY",
                      "face_bboxes": [[0.1, 0.2, 0.3, 0.4]], "ok": True, "my_field": 7}
    assert set(out[1].values()) == {None} and set(out[2].values()) == {None}
    assert errors.stage[:3] == [None, None, None]
    assert errors.stage[3:] == ["json_fields"] * 3
    assert errors.message[3] == "json field 'original_width' is not int64: \"wide\""
    assert "is not int64: true" in errors.message[4]
    assert "'my-field' is not int32" in errors.message[5]


def test_bad_declarations_fail_before_work() -> None:
    with pytest.raises(ValidationError, match="unknown type"):
        JsonFieldsParams(columns={"a": "integer"})
    with pytest.raises(ValidationError, match="not a plain identifier"):
        JsonFieldsParams(columns={"a-b": "int32"})
    with pytest.raises(ValidationError, match="one of the reader's"):
        JsonFieldsParams(columns={"caption": "string"})
    with pytest.raises(ConfigError, match="already produced by image_info"):
        pipeline_from_dict({"input": {"shards": "x"}, "score": [
            "image_info", {"json_fields": {"columns": {"original_width": "int32"}}}]})
    p = pipeline_from_dict({"input": {"shards": "x"}, "score": [
        {"json_fields": {"columns": {"punsafe": "float32"}}}], "select": [
        {"rule": "threshold", "column": "punsafe", "max": 0.1, "reason": "unsafe"}]})
    assert "punsafe" in p.signal_columns()
