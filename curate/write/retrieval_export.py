"""``curate export-retrieval``: a store's pool or a selection's rows in clip-retrieval's layout,
so its ``back`` service (``clip-retrieval back``, an ``indices_paths.json`` naming the folder)
serves them, and its index and filter tools read the embeddings.

The folder is both what clip-retrieval's inference writes and what its ``index`` step writes
beside it::

    img_emb/img_emb_0.npy           float16 [rows, dim], L2-normalised image embeddings
    text_emb/text_emb_0.npy         float16 [rows, dim], caption embeddings, same rows
    metadata/metadata_0.parquet     one row per embedding row: uid, caption, url, shard, key,
                                    index (and kept, reason for a selection; clip_score)
    image.index, text.index         faiss indices: id i = row i (``curate.audit.knn_index``)
    indices_paths.json              {"curate": "<this folder>"}, for ``clip-retrieval back``
    export.json                     what was exported from where

Row i of every file is the same sample, and ids are faiss' sequential ids, which is what the
back's ``ParquetMetadataProvider`` assumes (it concatenates ``metadata/*.parquet`` sorted by
name and takes row ``id``). Parts hold ``PART_ROWS`` rows each, numbered with zero padding as
clip-retrieval's writer pads them, so the names sort in row order. Rows are the samples with
both embeddings (a sample the scorer did not embed has neither). Embeddings are copied from
the store (float16, as stored and as clip-retrieval stores them), never recomputed. There is
no ``image_path`` column: images live in tar shards, so the back shows them by ``url``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curate.audit.knn_index import DEFAULT_MEMORY, build_index, plan_index, save_index
from curate.audit.search import IndexChoice, RowSet, StoredVectors, embedded_rows, open_corpus
from curate.io.atomic import atomic_path, write_parquet, write_text
from curate.io.fsdir import FsDir

PART_ROWS = 1_000_000
METADATA_COLUMNS = ("uid", "caption", "url", "shard", "key", "index", "kept", "reason")


@dataclass
class RetrievalExport:
    out: Path
    rows: int
    parts: int
    dim: int
    image_index: str  # the plans, described
    text_index: str
    seconds: float


def _part_names(parts: int) -> list[str]:
    width = len(str(max(parts - 1, 0)))
    return [str(i).zfill(width) for i in range(parts)]


def export_retrieval(path: str | Path, out: str | Path, *, suffix: str = "",
                     rows: RowSet | None = None, index: IndexChoice = "auto",
                     memory: str | int = DEFAULT_MEMORY) -> RetrievalExport:
    """Write the clip-retrieval folder ``out`` for the store or selection ``path``, from the
    embeddings of the clip scorer named ``suffix`` (``""``: ``clip_image_emb``; ``"_l14"``:
    ``clip_image_emb_l14``)."""
    import duckdb

    t0 = time.perf_counter()
    corpus = open_corpus(path, rows)
    img_col, txt_col = f"clip_image_emb{suffix}", f"clip_text_emb{suffix}"
    corpus.version_of(img_col)
    corpus.version_of(txt_col)
    table, parts = embedded_rows(corpus, [img_col, txt_col])
    img = StoredVectors(corpus, img_col, parts)
    txt = StoredVectors(corpus, txt_col, parts)
    out = Path(out)
    for sub in ("img_emb", "text_emb", "metadata"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    meta = _metadata(corpus, table, duckdb)
    n = img.rows
    names = _part_names(max(1, -(-n // PART_ROWS)))
    for p, name in enumerate(names):
        a, b = p * PART_ROWS, min(n, (p + 1) * PART_ROWS)
        span = np.arange(a, b)
        for sub, prefix, src in (("img_emb", "img_emb", img), ("text_emb", "text_emb", txt)):
            with atomic_path(out / sub / f"{prefix}_{name}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, src.take(span).astype(np.float16), allow_pickle=False)
        write_parquet(meta.slice(a, b - a), out / "metadata" / f"metadata_{name}.parquet")
    # The indices are built from the float16 rows just written, as clip-retrieval indexes them.
    described = {}
    target = FsDir.of(out)
    for name_, sub, prefix in (("image", "img_emb", "img_emb"), ("text", "text_emb", "text_emb")):
        vectors = _Parts([np.load(out / sub / f"{prefix}_{p}.npy", mmap_mode="r")
                          for p in names])
        plan = plan_index(vectors.rows, vectors.dim, memory, index)
        save_index(build_index(vectors, plan), target, f"{name_}.index")
        described[name_] = plan.describe()
    write_text(json.dumps({"curate": str(out.resolve())}, indent=1) + "\n",
               out / "indices_paths.json")
    seconds = time.perf_counter() - t0
    record: dict[str, Any] = {
        "source": corpus.location, "kind": corpus.kind, "rows": corpus.rows,
        "columns": [img_col, txt_col], "exported_rows": n, "parts": len(names),
        "scorer": {"label": corpus.version_of(img_col).label,
                   "version": corpus.version_of(img_col).version,
                   "params": corpus.version_of(img_col).params},
        "image_index": described["image"], "text_index": described["text"],
        "seconds": round(seconds, 3)}
    write_text(json.dumps(record, indent=1) + "\n", out / "export.json")
    return RetrievalExport(out, n, len(names), img.dim, described["image"], described["text"],
                           seconds)


class _Parts:
    """A ``VectorSource`` over the written float16 parts (memory-mapped, read in chunks)."""

    def __init__(self, mats: list[np.ndarray]) -> None:
        self.mats = mats
        self.rows = sum(len(m) for m in mats)
        self.dim = int(mats[0].shape[1])

    def take(self, positions: np.ndarray) -> np.ndarray:
        offsets = np.cumsum([0] + [len(m) for m in self.mats])
        part = np.searchsorted(offsets, positions, side="right") - 1
        out = np.empty((len(positions), self.dim), dtype=np.float32)
        for p in np.unique(part):
            sel = np.flatnonzero(part == p)
            out[sel] = self.mats[p][positions[sel] - offsets[p]]
        return out

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        for m in self.mats:
            for a in range(0, len(m), size):
                yield np.asarray(m[a:a + size], dtype=np.float32)


def _metadata(corpus: Any, table: pa.Table, duckdb: Any) -> pa.Table:
    """One row per exported row, in order: the columns of ``METADATA_COLUMNS`` the source
    has, then ``clip_score`` columns."""
    hits = table.append_column("row", pa.array(np.arange(len(table)), pa.int64()))
    con = duckdb.connect()
    try:
        con.register("r", hits)
        if corpus.sel_dir is not None:
            from curate.io.dataset import manifest_path, scan_sql

            src = scan_sql(manifest_path(corpus.sel_dir))
        else:
            from curate.store.store import Store, shard_key

            files = corpus.shard_files()
            tables = [corpus.store.dir.read_parquet(Store.base_name(
                corpus.reader, shard_key(s), files[s].digest)) for s in files]
            con.register("base", pa.concat_tables(tables))
            src = "base"
        have = [d[0] for d in con.sql(f"SELECT * FROM {src} LIMIT 0").description]
        cols = [c for c in METADATA_COLUMNS if c in have]
        cols += [c for c in have if c.startswith("clip_score") and c not in cols]
        from curate.sql import ident

        picked = ", ".join(f"m.{ident(c)}" for c in cols)
        return con.sql(f"SELECT {picked} FROM r JOIN {src} m USING (uid) ORDER BY r.row"
                       ).to_arrow_table()
    finally:
        con.close()
