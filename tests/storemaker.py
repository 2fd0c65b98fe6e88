"""A synthetic store: hand-made rows and embeddings written in the store's layout, so selection
and selectors can be tested on planted values without images or scoring."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curate.schema import SAMPLE_COLUMNS
from curate.score.plan import reader_fingerprint
from curate.select.pool import PoolSource
from curate.store.store import ERROR, STATUS, PoolShard, Store, Version, shard_key

READER = reader_fingerprint()


def write_store(root: Path, rows: list[dict[str, Any]], columns: dict[str, pa.DataType],
                embeddings: dict[str, np.ndarray] | None = None, label: str = "synthetic",
                ) -> PoolSource:
    """``rows`` (each with ``shard`` and ``index``, optionally the other sample columns and
    values of ``columns``) as one scorer ``label`` of a store at ``root``. ``embeddings[c]``
    holds one vector per row, in ``rows`` order. Shards are ordered by id; rows by index."""
    store = Store(root)
    sample = pa.schema(SAMPLE_COLUMNS)
    by_shard: dict[str, list[int]] = {}
    for k, r in enumerate(rows):
        by_shard.setdefault(r["shard"], []).append(k)
    embeddings = embeddings or {}
    dims = {c: m.shape[1] for c, m in embeddings.items()}
    version = Version(label=label, version="0" * 16, name=label, params={}, reads={},
                      reader=READER, schema=pa.schema(columns), sidecars=dims)
    pool = []
    for sid in sorted(by_shard):
        ks = sorted(by_shard[sid], key=lambda k: rows[k]["index"])
        digest = hashlib.sha256(sid.encode()).hexdigest()
        base = [{"uid": f"{k:032x}", "key": str(k), "status": "ok",
                 **{c: v for c, v in rows[k].items() if c in SAMPLE_COLUMNS}} for k in ks]
        store.dir.write_parquet(Store.base_name(READER, shard_key(sid), digest),
                                pa.Table.from_pylist(base, schema=sample))
        scored = [{STATUS: "ok", ERROR: None, **{c: rows[k].get(c) for c in columns}}
                  for k in ks]
        schema = pa.schema({STATUS: pa.string(), ERROR: pa.string(), **columns})
        store.dir.write_parquet(Store.score_name(label, version.version, shard_key(sid), digest),
                                pa.Table.from_pylist(scored, schema=schema))
        for c, mat in embeddings.items():
            store.dir.write_array(Store.sidecar_name(label, version.version, c, shard_key(sid),
                                                     digest), mat[ks].astype(np.float16))
        pool.append(PoolShard(shard=sid, url=f"/nonexistent/{sid}", stamp="x", digest=digest,
                              samples=len(ks)))
    store.register([version], READER, None)
    store.write_pool(pool)
    return PoolSource.of(store)
