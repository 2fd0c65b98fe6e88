"""The shared scorer loop: per-sample error capture, isolation of bad samples, contracts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pytest

from curate.schema import BATCH_SCHEMA
from curate.stages.base import (
    BatchErrors,
    SampleScorer,
    Scorer,
    StageBug,
    registered,
    run_scorer,
)


def batch(captions: list[str | None], failed: set[int] = frozenset()) -> pa.Table:  # type: ignore[assignment]
    rows = []
    for i, c in enumerate(captions):
        rows.append({"uid": f"{i:032x}", "shard": "s", "key": str(i), "index": i,
                     "caption": c, "status": "error" if i in failed else "ok",
                     "error_stage": "read" if i in failed else None,
                     "error": "broken" if i in failed else None, "image": b"x"})
    return pa.Table.from_pylist(rows, schema=BATCH_SCHEMA)


class Length(SampleScorer):
    name = "length_test"

    def inputs(self) -> tuple[str, ...]:
        return ("caption",)

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {"n": pa.int32()}

    def score_sample(self, sample: dict[str, Any]) -> Mapping[str, Any]:
        if sample["caption"] == "boom":
            raise ValueError("cannot score boom")
        return {"n": len(sample["caption"])}


class BatchLength(Scorer):
    name = "batch_length_test"

    def inputs(self) -> tuple[str, ...]:
        return ("caption",)

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {"m": pa.int32()}

    def score_batch(self, b: pa.Table) -> Mapping[str, Any]:
        caps = b.column("caption").to_pylist()
        if "boom" in caps:
            raise RuntimeError("the whole batch fails")
        return {"m": [len(c) for c in caps]}


class WrongLength(BatchLength):
    name = "wrong_length_test"

    def score_batch(self, b: pa.Table) -> Mapping[str, Any]:
        return {"m": [1]}


def test_sample_scorer_records_failures_and_keeps_going() -> None:
    b = batch(["abc", "boom", "hello"])
    errors = BatchErrors.from_batch(b)
    out = run_scorer(Length(), b, errors)
    assert out.column("n").to_pylist() == [3, None, 5]
    assert errors.stage == [None, "length_test", None]
    assert errors.message[1] == "ValueError: cannot score boom"
    c = errors.counters["length_test"]
    assert (c.samples, c.errors, c.skipped) == (3, 1, 0)


def test_batch_failure_is_isolated_to_the_bad_sample() -> None:
    b = batch(["abc", "boom", "hello", "hi"])
    errors = BatchErrors.from_batch(b)
    out = run_scorer(BatchLength(), b, errors)
    assert out.column("m").to_pylist() == [3, None, 5, 2]
    assert errors.stage == [None, "batch_length_test", None, None]
    assert "whole batch fails" in errors.message[1]


def test_already_failed_samples_are_skipped() -> None:
    b = batch(["abc", None, "hello"], failed={1})
    errors = BatchErrors.from_batch(b)
    out = run_scorer(BatchLength(), b, errors)
    assert out.column("m").to_pylist() == [3, None, 5]
    assert errors.stage == [None, "read", None]  # the first error wins
    assert errors.counters["batch_length_test"].skipped == 1


def test_contract_violation_is_a_bug_not_a_sample_error() -> None:
    b = batch(["abc", "de"])
    with pytest.raises(StageBug, match="1 values for 2 samples"):
        run_scorer(WrongLength(), b, BatchErrors.from_batch(b))


def test_all_failed_batch_gives_null_columns() -> None:
    b = batch(["a", "b"], failed={0, 1})
    errors = BatchErrors.from_batch(b)
    out = run_scorer(Length(), b, errors)
    assert out.column("n").to_pylist() == [None, None]


def test_builtins_are_registered() -> None:
    assert {"image_info", "caption_stats", "language", "exact_hash"} <= set(registered("scorer"))
    assert {"threshold", "in_set", "sql"} <= set(registered("rule"))
    assert "exact_dedup" in registered("selector")
