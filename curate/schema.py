"""The Parquet schemas of curate, in one place.

Tables (all Parquet, one row per input sample unless said otherwise):

* the store's base files (``curate.store.store``): ``SAMPLE_COLUMNS``, what the shard reader
  found; each scorer's files: its own columns beside ``__status`` and ``__error``;
* a selection's manifest (``manifest/``, a dataset of parts): ``SAMPLE_COLUMNS``, every
  selected scorer's columns (in selection order), ``MANIFEST_COLUMNS`` (kept, reason) and the
  columns selectors add (e.g. ``duplicate_of``);
* a selection's ``shards.parquet``: one row per input shard (``SHARD_COLUMNS``).

A sample's ``status`` is ``ok`` or ``error``; on error, ``error_stage`` names where it failed
first (``download``, ``read``, then the scorers in selection order) and ``error`` holds the
message. Each scorer runs on every sample the reader read and whose inputs succeeded, so a
scorer's columns do not depend on which other scorers ran. A failed sample is dropped with
reason ``error:<stage>``.
"""

from __future__ import annotations

import pyarrow as pa

STATUS_OK = "ok"
STATUS_ERROR = "error"

# Identity and read results of every sample: the columns of the store's base files.
SAMPLE_COLUMNS: dict[str, pa.DataType] = {
    "uid": pa.string(),  # 32 hex chars, see curate.uid
    "shard": pa.string(),  # shard id: path relative to the pool root
    "key": pa.string(),  # webdataset __key__
    "index": pa.int32(),  # position of the sample in its shard (0-based)
    "image_member": pa.string(),  # tar member extension the image came from (jpg, png, ...)
    "url": pa.string(),
    "caption": pa.string(),
    "image_sha256": pa.string(),  # SHA-256 of the image member's bytes (null: no image)
    "status": pa.string(),
    "error_stage": pa.string(),
    "error": pa.string(),
}

# Columns that exist only while a batch is scored (never written to Parquet).
BATCH_ONLY_COLUMNS: dict[str, pa.DataType] = {
    "image": pa.binary(),
    "json": pa.string(),  # raw json member text
}

BATCH_SCHEMA = pa.schema({**SAMPLE_COLUMNS, **BATCH_ONLY_COLUMNS})
SAMPLE_SCHEMA = pa.schema(SAMPLE_COLUMNS)

# Added by selection.
MANIFEST_COLUMNS: dict[str, pa.DataType] = {
    "kept": pa.bool_(),
    "reason": pa.string(),  # the first rule/selector that dropped the sample; null if kept
}

SHARD_COLUMNS: dict[str, pa.DataType] = {
    "shard": pa.string(),
    "url": pa.string(),  # where it was read from
    "failures": pa.string(),  # a downloaded shard: img2dataset's Parquet beside it
    "status": pa.string(),  # done | truncated | damaged (data skipped to resynchronise) | failed
    "samples": pa.int64(),
    "errors": pa.int64(),
    "read_error": pa.string(),  # e.g. truncated tar
    "attempts": pa.int32(),  # of its last scoring pass
    "seconds": pa.float64(),  # of its last scoring pass
    "node": pa.string(),  # Ray node id of the worker that last scored it
    "digest": pa.string(),  # SHA-256 content identity of the shard (curate.store.identity)
    "error": pa.string(),  # failed shards: the error of the last attempt
}
SHARD_SCHEMA = pa.schema(SHARD_COLUMNS)
