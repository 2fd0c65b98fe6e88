"""Exports of a run's selection, and resharding a pool by a uid list without rescoring.

* ``export_datacomp``: DataComp's subset file: a ``.npy`` of 128-bit uids as (u8, u8) pairs
  (high 64 bits, low 64 bits), sorted, as DataComp's ``--subset_file`` expects;
* ``export_uids``: a plain text file, one kept uid per line, in pool order;
* ``export_parquet``: the kept samples' uid, url, caption (and rewrites, when the run has them)
  for re-downloading with img2dataset (``url_col="url"``, ``caption_col="caption"``);
* ``read_uids``: reads any of those back (``.npy``, ``.txt``, ``.parquet`` with a ``uid`` column);
* ``reshard``: writes curated shards holding exactly the samples of a uid list, from the original
  pool, with the run writer's format (original bytes, ``txt``, ``json`` with uid and scores). The
  sample locations come from a run's manifest (no reading of images) or, without a run, from one
  streaming pass over the pool.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import CurateError
from curate.io.atomic import atomic_path, write_parquet, write_text
from curate.io.dataset import MANIFEST, manifest_path, scan_sql
from curate.sql import ident, path_literal

# Exactly DataComp's dtype, ``np.dtype("u8,u8")`` (fields f0, f1): its resharder asserts
# ``subset.dtype == np.dtype("u8,u8")``, and numpy's dtype equality compares field names.
DATACOMP_DTYPE = np.dtype("u8,u8")


def _manifest(run_dir: str | Path) -> Path:
    from curate.audit.catalog import resolve_selection

    return manifest_path(resolve_selection(run_dir, MANIFEST))


def kept_uids(run_dir: str | Path) -> list[str]:
    rows = duckdb.connect().execute(
        f"SELECT uid FROM {scan_sql(_manifest(run_dir))} WHERE kept "
        "ORDER BY shard, \"index\"").fetchall()
    return [u for (u,) in rows]


def uids_to_pairs(uids: Iterable[str]) -> np.ndarray:
    """128-bit hex uids → sorted (u8, u8) pairs (DataComp's subset format)."""
    values = list(uids)
    bad = next((u for u in values if len(u) != 32), None)
    if bad is not None:
        raise CurateError(f"uid {bad!r} is not 32 hex characters")
    try:
        pairs = np.array([(int(u[:16], 16), int(u[16:], 16)) for u in values],
                         dtype=DATACOMP_DTYPE)
    except ValueError as exc:
        raise CurateError(f"a uid is not hexadecimal: {exc}") from exc
    return np.sort(pairs, order=["f0", "f1"])


def pairs_to_uids(pairs: np.ndarray) -> list[str]:
    names = pairs.dtype.names or ()
    if len(names) != 2:
        raise CurateError(f"expected (u8, u8) pairs, got dtype {pairs.dtype}")
    return [f"{int(a):016x}{int(b):016x}" for a, b in zip(pairs[names[0]], pairs[names[1]],
                                                         strict=True)]


def export_datacomp(run_dir: str | Path, out: str | Path) -> int:
    pairs = uids_to_pairs(kept_uids(run_dir))
    with atomic_path(Path(out)) as tmp, open(tmp, "wb") as f:
        np.save(f, pairs)
    return len(pairs)


def export_uids(run_dir: str | Path, out: str | Path) -> int:
    uids = kept_uids(run_dir)
    write_text("".join(u + "\n" for u in uids), Path(out))
    return len(uids)


def export_parquet(run_dir: str | Path, out: str | Path) -> int:
    manifest = _manifest(run_dir)
    con = duckdb.connect()
    src = scan_sql(manifest)
    cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
    rewrites = ", [r.text FOR r IN rewrites IF r.status = 'ok'] AS rewrites" \
        if "rewrites" in cols else ""
    table = con.sql(f"""SELECT uid, url, caption {rewrites} FROM {src} WHERE kept
                        ORDER BY shard, "index" """).to_arrow_table()
    write_parquet(table, Path(out))
    return table.num_rows


def read_uids(path: str | Path) -> list[str]:
    """A uid list from ``.npy`` (DataComp pairs), ``.parquet`` (column uid) or text."""
    p = Path(path)
    if not p.is_file():
        raise CurateError(f"uid list {path} not found")
    if p.suffix == ".npy":
        return pairs_to_uids(np.load(p))
    if p.suffix == ".parquet":
        table = pq.read_table(p)
        if "uid" not in table.column_names:
            raise CurateError(f"{path} has no column 'uid'")
        return [str(u) for u in table.column("uid").to_pylist() if u is not None]
    uids = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    return [u.lower() for u in uids if u and not u.startswith("#")]


@dataclass(frozen=True)
class ReshardResult:
    wanted: int
    written: int
    missing: list[str]
    shards: int
    out: Path


def reshard(uids: list[str], out: str | Path, *, run_dir: str | Path | None = None,
            pool: str | list[str] | None = None, samples_per_shard: int = 1000,
            blur_faces: str | None = None, blur_quality: int = 100) -> ReshardResult:
    """Write the samples named by ``uids`` into webdataset shards under ``out``, in pool order,
    from the run's manifest (``run_dir``) or by reading ``pool`` once. ``blur_faces`` names a
    manifest column of face boxes to blur, as DataComp's resharder does (needs ``run_dir``)."""
    from curate.io.shards import ShardRef, list_shards
    from curate.write import output

    wanted = set(uids)
    if blur_faces is not None and run_dir is None:
        raise CurateError("blurring faces needs the run whose manifest holds the boxes",
                          "give --run SEL (a selection with the face box column)")
    if run_dir is not None:
        con = duckdb.connect()
        con.register("wanted", pa.table({"uid": sorted(wanted)}))
        manifest = _manifest(run_dir)
        shards_table = manifest.parent / "shards.parquet"
        blur_sql = ""
        if blur_faces is not None:
            names = {r[0] for r in con.execute(
                f"DESCRIBE SELECT * FROM {scan_sql(manifest)}").fetchall()}
            if blur_faces not in names:
                raise CurateError(f"{run_dir} has no column {blur_faces!r} to blur faces from",
                                  "declare the pool's face boxes as metadata columns of the "
                                  "selection")
            blur_sql = f", m.{ident(blur_faces)}"
        locations = con.execute(f"""
            SELECT m.uid, m.shard, m."index", m.image_member, m.key, m.image_sha256, m.caption
                   {blur_sql}
            FROM {scan_sql(manifest)} m SEMI JOIN wanted USING (uid)
            WHERE m.status = 'ok' QUALIFY row_number() OVER (PARTITION BY m.uid
                                                        ORDER BY m.shard, m."index") = 1
            ORDER BY m.shard, m."index" """).fetchall()
        refs = {sid: ShardRef(url, sid, failures) for sid, url, failures in con.execute(
            "SELECT shard, url, failures FROM read_parquet("
            f"{path_literal(shards_table)})").fetchall()}
    elif pool is not None:
        locations, refs = _scan_pool(list_shards(pool), wanted)
    else:
        raise CurateError("reshard needs a run directory (its manifest locates the samples) "
                          "or the pool's shards")
    found = {u for u, *_ in locations}
    missing = sorted(wanted - found)
    items = [{"uid": u, "shard": s, "index": i, "image_member": m, "scores": {},
              **({"key": rest[0], "image_sha256": rest[1], "caption": rest[2]} if rest else {}),
              **({"blur": {"boxes": rest[3], "quality": blur_quality}}
                 if blur_faces is not None and rest[3] else {})}
             for u, s, i, m, *rest in locations]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = [output.OutputShard(n, items[k:k + samples_per_shard])
              for n, k in enumerate(range(0, len(items), samples_per_shard))]
    for shard in output.stale(out_dir, shards):
        output.write_shard(shard, refs, out_dir)
    output.finish(out_dir, shards)
    if missing:
        write_text("".join(u + "\n" for u in missing), out_dir / "missing_uids.txt")
    return ReshardResult(len(wanted), len(items), missing, len(shards), out_dir)


def _scan_pool(refs: list[object], wanted: set[str]
               ) -> tuple[list[tuple[Any, ...]], dict[str, object]]:
    from curate.io.shards import ShardReader

    locations: list[tuple[Any, ...]] = []
    seen: set[str] = set()
    for ref in refs:
        for batch in ShardReader(ref):  # type: ignore[arg-type]
            cols = batch.select(["uid", "shard", "index", "image_member", "status", "key",
                                 "image_sha256", "caption"]).to_pylist()
            for row in cols:
                u = row["uid"]
                if u in wanted and u not in seen and row["status"] == "ok":
                    seen.add(u)
                    locations.append((u, row["shard"], row["index"], row["image_member"],
                                      row["key"], row["image_sha256"], row["caption"]))
    return locations, {r.shard_id: r for r in refs}  # type: ignore[attr-defined]
