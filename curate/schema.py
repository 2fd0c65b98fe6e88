"""The Parquet schemas of curate, in one place.

Tables a run writes (all Parquet, one row per input sample unless said otherwise):

* ``signals/<shard>.parquet``: one file per input shard: ``SAMPLE_COLUMNS`` followed by the
  columns every scorer of the pipeline declares (in pipeline order).
* ``manifest.parquet``: every signal column plus ``MANIFEST_COLUMNS`` (kept, reason) and the
  columns selectors add (e.g. ``duplicate_of``).
* ``shards.parquet``: one row per input shard (``SHARD_COLUMNS``).

A sample's ``status`` is ``ok`` or ``error``; on error, ``error_stage`` names where it failed
(``download``, ``read`` or a scorer name) and ``error`` holds the message. The first error wins:
later scorers skip a failed sample and leave its columns null. A failed sample is dropped with
reason ``error:<stage>``.
"""

from __future__ import annotations

import pyarrow as pa

STATUS_OK = "ok"
STATUS_ERROR = "error"

# Identity and read results of every sample; the first columns of every signals file.
SAMPLE_COLUMNS: dict[str, pa.DataType] = {
    "uid": pa.string(),  # 32 hex chars, see curate.uid
    "shard": pa.string(),  # shard id: path relative to the pool root
    "key": pa.string(),  # webdataset __key__
    "index": pa.int32(),  # position of the sample in its shard (0-based)
    "image_member": pa.string(),  # tar member extension the image came from (jpg, png, ...)
    "url": pa.string(),
    "caption": pa.string(),
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
    "status": pa.string(),  # done | truncated | failed
    "samples": pa.int64(),
    "errors": pa.int64(),
    "read_error": pa.string(),  # e.g. truncated tar
    "attempts": pa.int32(),
    "seconds": pa.float64(),
    "resumed": pa.bool_(),  # true when the signals came from an earlier run
    "node": pa.string(),  # Ray node id of the worker that scored it
    "error": pa.string(),  # failed shards: the error of the last attempt
}
SHARD_SCHEMA = pa.schema(SHARD_COLUMNS)
