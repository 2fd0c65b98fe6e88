"""Parquet datasets: one table stored as a directory of part files.

A selection's manifest is such a directory (``SEL/manifest/part-00000.parquet``, one part per
partition of the pool, in pool order), so that each partition writes its own rows and no
process ever holds or copies the whole table. DuckDB (``read_parquet('SEL/manifest/*.parquet')``),
polars (``pl.scan_parquet('SEL/manifest')``), pyarrow (``pq.read_table('SEL/manifest')``)
and Ray Data (``ray.data.read_parquet('SEL/manifest')``) read it as one table.

* Parts are named ``part-NNNNN.parquet`` with the same number of digits, so that a sorted
  listing (DuckDB sorts a glob's matches) is the table's row order.
* Every column of every part is written as nullable: DuckDB marks a column *required* in a
  file when that file holds no null in it, so parts written apart would disagree on their
  schema (and pyarrow would report a column as not null that has nulls in another part).
* The directory is written beside its final name and swapped in whole (``atomic_dir``): a
  reader sees the old table or the new one, never a mix of parts.
* Selections written before the manifest was a dataset have one file, ``manifest.parquet``;
  every function here reads that file too.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from curate.io.atomic import current_umask
from curate.sql import glob_escape, ident, literal, path_literal

MANIFEST = "manifest"  # a selection's manifest: a dataset directory
LEGACY_MANIFEST = "manifest.parquet"  # the one-file manifest of older selections
_PART = re.compile(r"part-(\d+)\.parquet")


def manifest_path(sel_dir: str | Path) -> Path:
    """The manifest of the selection in ``sel_dir``: its dataset directory, or the one file of
    a selection written by an older curate."""
    sel = Path(sel_dir)
    if not (sel / MANIFEST).is_dir() and (sel / LEGACY_MANIFEST).is_file():
        return sel / LEGACY_MANIFEST
    return sel / MANIFEST


def has_manifest(sel_dir: str | Path) -> bool:
    path = manifest_path(sel_dir)
    return path.is_file() or bool(part_files(path))


def part_name(i: int, parts: int) -> str:
    """The name of part ``i`` of ``parts``: equal widths, so names sort as numbers do."""
    return f"part-{i:0{max(5, len(str(max(parts - 1, 0))))}d}.parquet"


def part_files(path: str | Path) -> list[Path]:
    """The files of the dataset at ``path`` in row order (``[path]`` for a single file)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        return []
    return sorted((f for f in p.iterdir() if _PART.fullmatch(f.name)),
                  key=lambda f: int(_PART.fullmatch(f.name).group(1)))  # type: ignore[union-attr]


def scan_sql(path: str | Path) -> str:
    """A DuckDB table expression reading the dataset at ``path`` (a directory of parts, or
    one file) as one table in row order. Glob characters in the directory's own name match
    only themselves."""
    p = Path(path)
    if p.is_dir():
        return f"read_parquet({literal(glob_escape(p) + '/part-*.parquet')})"
    return f"read_parquet({path_literal(p)})"


def read_table(path: str | Path, columns: Sequence[str] | None = None,
               filters: object = None) -> pa.Table:
    """The dataset at ``path`` as one Arrow table (only ``columns``; rows matching the pyarrow
    ``filters``), in row order."""
    files = part_files(path)
    if not files:
        raise FileNotFoundError(errno.ENOENT, "no Parquet dataset here", str(path))
    return pq.ParquetDataset([str(f) for f in files], filters=filters).read(
        columns=list(columns) if columns is not None else None)


def read_schema(path: str | Path) -> pa.Schema:
    files = part_files(path)
    if not files:
        raise FileNotFoundError(errno.ENOENT, "no Parquet dataset here", str(path))
    return pq.read_schema(files[0])


def num_rows(path: str | Path) -> int:
    """The dataset's rows, from its parts' footers."""
    return sum(pq.read_metadata(f).num_rows for f in part_files(path))


def write_query(con: duckdb.DuckDBPyConnection, query: str, dest: str | Path,
                row_group: int | None = None) -> None:
    """Write ``query``'s rows, in its order, to the Parquet file ``dest`` with every column
    nullable (see the module's notes), with DuckDB's own writer (parallel, and within the
    connection's memory limit). DuckDB writes a column as required when its statistics prove
    it holds no null; each column is therefore passed through ``CASE WHEN never THEN NULL``,
    where ``never`` (``random() < 0``) is false for every row but cannot be folded away by the
    optimizer: the values are unchanged and no column is provably non-null."""
    cols = con.sql(query).columns
    picked = ", ".join(f"CASE WHEN _never THEN NULL ELSE {ident(c)} END AS {ident(c)}"
                       for c in cols)
    group = f", ROW_GROUP_SIZE {int(row_group)}" if row_group else ""
    con.execute(f"COPY (SELECT {picked} FROM (SELECT *, random() < 0 AS _never "
                f"FROM ({query}))) TO {literal(str(dest))} (FORMAT parquet, "
                f"COMPRESSION zstd{group})")


def rewrite_parts(path: Path, query: Callable[[str], str],
                  con: duckdb.DuckDBPyConnection | None = None) -> None:
    """Replace the dataset at ``path`` by ``query(source)`` of each part, where ``source`` is a
    DuckDB table expression reading that part; the parts keep their names, and the new
    directory replaces the old one whole. A one-file (older) manifest becomes a dataset."""
    files = part_files(path)
    if not files:
        raise FileNotFoundError(errno.ENOENT, "no Parquet dataset here", str(path))
    own = con is None
    c = con or duckdb.connect()
    dest = path.parent / MANIFEST if path.is_file() else path
    try:
        with atomic_dir(dest) as tmp:
            for i, f in enumerate(files):
                name = f.name if path.is_dir() else part_name(i, len(files))
                write_query(c, query(scan_sql(f)), tmp / name)
    finally:
        if own:
            c.close()
    if path.is_file():
        path.unlink()


@contextlib.contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield an empty directory beside ``dest``; when the block succeeds it replaces ``dest``
    whole (swapped in one step where the system can: Linux's ``renameat2``), and the old
    directory is deleted. On failure it is removed and ``dest`` is untouched. The directory
    gets the mode ``mkdir`` would give it under the umask."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        _publish(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the system or the file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _publish(tmp: Path, dest: Path) -> None:
    if not dest.exists():
        os.rename(tmp, dest)
        return
    if dest.is_dir() and _exchange(tmp, dest):
        shutil.rmtree(tmp)  # now the old directory
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
    os.rmdir(old)
    os.rename(dest, old)
    os.rename(tmp, dest)
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink()


def leftover_dirs(run_dir: Path) -> list[Path]:
    """Directories ``atomic_dir`` left in ``run_dir`` when its process was killed."""
    return [d for pattern in (".*.tmp", ".*.old") for d in run_dir.glob(pattern) if d.is_dir()]
