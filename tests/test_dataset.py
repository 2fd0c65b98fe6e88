"""Parquet datasets (``curate.io.dataset``): the manifest's layout, read as one table by every
engine, written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.io.dataset import (
    atomic_dir,
    manifest_path,
    num_rows,
    part_files,
    part_name,
    read_schema,
    read_table,
    rewrite_parts,
    scan_sql,
    write_query,
)
from curate.io.rundir import remove_leftovers


def _write_parts(directory: Path, values: list[list[str | None]]) -> None:
    con = duckdb.connect()
    for i, part in enumerate(values):
        con.register("v", pa.table({"i": pa.array(range(len(part)), pa.int64()),
                                    "s": pa.array(part, pa.string())}))
        write_query(con, "SELECT i, s, s IS NULL AS missing FROM v", directory
                    / part_name(i, len(values)))
        con.unregister("v")


def test_parts_are_one_table_in_order_for_every_reader(tmp_path: Path) -> None:
    d = tmp_path / "sel [1]" / "manifest"  # glob characters in the folder's own name
    d.mkdir(parents=True)
    values: list[list[str | None]] = [[f"p{k}-{j}" for j in range(3)] for k in range(12)]
    values[4] = ["x", None]  # a null in one part only
    _write_parts(d, values)
    flat = [v for part in values for v in part]

    # part names sort as numbers do, whatever the count
    assert part_name(3, 12) == "part-00003.parquet"
    assert part_name(7, 200_000) == "part-000007.parquet"
    assert [f.name for f in part_files(d)] == [part_name(i, 12) for i in range(12)]

    # every column of every part is nullable, so the parts agree on one schema
    schemas = {pq.read_schema(f) for f in part_files(d)}
    assert len(schemas) == 1 and all(f.nullable for f in read_schema(d))
    assert num_rows(d) == len(flat)

    assert read_table(d).column("s").to_pylist() == flat
    assert read_table(d, ["s"], filters=[("missing", "=", True)]).num_rows == 1
    assert pq.read_table(d).column("s").to_pylist() == flat
    assert pl.read_parquet(d)["s"].to_list() == flat
    got = duckdb.sql(f"SELECT s FROM {scan_sql(d)}").fetchall()
    assert [s for (s,) in got] == flat


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    dest = tmp_path / "manifest"
    with atomic_dir(dest) as tmp:
        _write_parts(tmp, [["a"], ["b"]])
        assert not dest.exists()  # nothing is visible before the block ends
    assert read_table(dest).column("s").to_pylist() == ["a", "b"]

    with pytest.raises(RuntimeError), atomic_dir(dest) as tmp:
        _write_parts(tmp, [["c"]])
        raise RuntimeError("killed mid-write")
    assert read_table(dest).column("s").to_pylist() == ["a", "b"]  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest"]  # nothing left behind

    with atomic_dir(dest) as tmp:  # fewer parts than before: no stale part survives
        _write_parts(tmp, [["c"]])
    assert [f.name for f in part_files(dest)] == ["part-00000.parquet"]
    assert read_table(dest).column("s").to_pylist() == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest"]


def test_atomic_dir_honours_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        with atomic_dir(tmp_path / "m") as tmp:
            _write_parts(tmp, [["a"]])
    finally:
        os.umask(old)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o750


def test_a_killed_writer_leaves_nothing_a_new_run_keeps(tmp_path: Path) -> None:
    (tmp_path / ".manifest.x1.tmp").mkdir()  # killed while writing
    (tmp_path / ".manifest.x1.tmp" / "part-00000.parquet").write_bytes(b"half")
    (tmp_path / ".manifest.x2.old").mkdir()  # killed between the two renames
    (tmp_path / "manifest").mkdir()
    assert remove_leftovers(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest"]


def test_rewrite_parts_and_older_one_file_manifests(tmp_path: Path) -> None:
    sel = tmp_path / "sel"
    sel.mkdir()
    pq.write_table(pa.table({"uid": ["u1", "u2", "u3"], "n": [1, 2, 3]}),
                   sel / "manifest.parquet")  # written by an older curate
    assert manifest_path(sel) == sel / "manifest.parquet"
    assert read_table(manifest_path(sel)).num_rows == 3
    rewrite_parts(manifest_path(sel), lambda src: f"SELECT *, n * 10 AS m FROM {src}")
    assert manifest_path(sel) == sel / "manifest"  # now a dataset; the old file is gone
    assert not (sel / "manifest.parquet").exists()
    assert read_table(manifest_path(sel)).column("m").to_pylist() == [10, 20, 30]
