"""The pool's own metadata as columns: a declared, typed Parquet source joined at selection.

Pools often ship per-sample metadata that no scorer computes: DataComp's released metadata
(``uid``, ``text``, ``original_width``, ``original_height``, ``clip_b32_similarity_score``,
``clip_l14_similarity_score``, ``face_bboxes``, ``sha256``), or the Parquet img2dataset writes
beside each shard. A pipeline or selection declares the columns it wants, with their types::

    metadata:
      parquet: pool/metadata          # files, folders (their *.parquet) or globs; fsspec URLs
      on: uid                         # the join key: uid (default), key or url
      columns:
        clip_l14_similarity_score: float32
        face_bboxes: list<list<float64>>

Selection joins them onto the pool by ``on`` (a LEFT join in DuckDB, so its memory follows
DuckDB's limit and spills, not the pool's size), before any rule runs; rules, selectors, the
manifest and the output see them as columns. A sample the metadata does not name gets nulls.
Checked before anything is written: every declared column exists in every file and converts to
its type (a value that does not convert is an error naming the column), no key occurs twice
in the metadata (a uid with two rows would attach someone else's scores), and no declared
column collides with a stored one. Nothing is scored: the files are read at every selection,
and the selection records each file's size and modification time (``metadata_files`` in
``SEL/selection.json``), so a changed metadata file is visible.

Types: ``bool``, ``int32``, ``int64``, ``float32``, ``float64``, ``string``, and
``list<T>`` of any of them (nested lists allowed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import duckdb
import fsspec
import pyarrow as pa
from pydantic import Field, field_validator

from curate.errors import ConfigError, CurateError
from curate.lib.coltypes import NAME, parse_type
from curate.sql import ident, path_literal
from curate.stages.base import Params

KEY_COLUMNS = ("uid", "key", "url")


class MetadataConfig(Params):
    parquet: str | list[str]
    on: Literal["uid", "key", "url"] = "uid"
    columns: dict[str, str] = Field(min_length=1)

    @field_validator("columns")
    @classmethod
    def _typed(cls, value: dict[str, str]) -> dict[str, str]:
        for col, type_name in value.items():
            if not NAME.match(col):
                raise ValueError(f"column name {col!r} is not a plain identifier")
            if col in KEY_COLUMNS or col.startswith("_"):
                raise ValueError(f"column {col!r} is reserved")
            parse_type(type_name)
        return value

    def arrow_columns(self) -> dict[str, pa.DataType]:
        return {c: parse_type(t)[0] for c, t in self.columns.items()}


@dataclass(frozen=True)
class SelectMetadata:
    """A selection's metadata source: its declaration and the files it names now."""

    config: MetadataConfig
    files: list[str]


def metadata_files(cfg: MetadataConfig) -> list[str]:
    """The Parquet files ``cfg.parquet`` names, sorted (folders stand for their ``*.parquet``)."""
    patterns = [cfg.parquet] if isinstance(cfg.parquet, str) else list(cfg.parquet)
    found: list[str] = []
    for pattern in patterns:
        fs, path = fsspec.core.url_to_fs(pattern)
        proto = pattern.split("://", 1)[0] + "://" if "://" in pattern else ""
        if any(ch in path for ch in "*?["):
            hits = [p for p in fs.glob(path) if not fs.isdir(p)]
        elif fs.isdir(path):
            hits = [p for p in fs.ls(path, detail=False) if p.endswith(".parquet")]
        elif fs.exists(path):
            hits = [path]
        else:
            raise ConfigError(f"metadata.parquet: {pattern!r} does not exist")
        if not hits:
            raise ConfigError(f"metadata.parquet: {pattern!r} names no Parquet file")
        found.extend(proto + p if proto and not p.startswith(proto) else p for p in hits)
    return sorted(set(found))


def file_stamps(files: list[str]) -> list[dict[str, Any]]:
    """Size and modification time of each file (what the selection records)."""
    out = []
    for f in files:
        fs, path = fsspec.core.url_to_fs(f)
        info = fs.info(path)
        mtime = info.get("mtime") or info.get("LastModified") or info.get("ETag")
        out.append({"file": f, "size": info.get("size"), "mtime": str(mtime)})
    return out


def _source_sql(cfg: MetadataConfig, files: list[str]) -> str:
    listed = ", ".join(path_literal(f) for f in files)
    return f"read_parquet([{listed}], union_by_name = true)"


def check_metadata(con: duckdb.DuckDBPyConnection, cfg: MetadataConfig, files: list[str],
                   taken: set[str]) -> None:
    """Fail before selection writes anything: missing or colliding columns, duplicate keys."""
    clash = sorted(set(cfg.columns) & taken)
    if clash:
        raise ConfigError(f"metadata column {clash[0]!r} is also a column of the store",
                          "leave it out of metadata.columns, or select on the stored one")
    for f in files:
        try:
            have = {r[0]: r[1] for r in con.execute(
                f"DESCRIBE SELECT * FROM read_parquet({path_literal(f)})").fetchall()}
        except duckdb.Error as exc:
            raise CurateError(f"metadata file {f} cannot be read: {str(exc).splitlines()[0]}"
                              ) from None
        missing = [c for c in (cfg.on, *cfg.columns) if c not in have]
        if missing:
            raise ConfigError(f"metadata file {f} has no column {missing[0]!r}",
                              f"its columns: {', '.join(sorted(have))}")
    src = _source_sql(cfg, files)
    dup = con.execute(f"SELECT {ident(cfg.on)}, count(*) FROM {src} WHERE {ident(cfg.on)} IS NOT "
                      f"NULL GROUP BY 1 HAVING count(*) > 1 LIMIT 1").fetchone()
    if dup is not None:
        raise CurateError(f"the metadata has {dup[1]} rows for {cfg.on} {dup[0]!r}: its columns "
                          "could not be told apart", "give each sample one metadata row")
    _check_values(con, cfg, src)


def _norm_key(cfg: MetadataConfig) -> str:
    key = ident(cfg.on)
    return f"lower(trim(m.{key}))" if cfg.on == "uid" else f"m.{key}"


def _check_values(con: duckdb.DuckDBPyConnection, cfg: MetadataConfig, src: str) -> None:
    """Every given value of a declared column casts to its declared type (any row of the
    metadata, in the pool or not: the answer does not depend on the pool's partitioning)."""
    key = ident(cfg.on)
    for c, t in cfg.columns.items():
        bad = con.execute(f"""SELECT {_norm_key(cfg)} FROM {src} AS m
            WHERE m.{key} IS NOT NULL AND m.{ident(c)} IS NOT NULL
              AND TRY_CAST(m.{ident(c)} AS {parse_type(t)[1]}) IS NULL LIMIT 1""").fetchone()
        if bad is not None:
            raise CurateError(f"metadata column {c!r} holds a value that is not "
                              f"{cfg.columns[c]} (for {cfg.on} {bad[0]!r})",
                              "declare the column with the type the file holds")


def join_metadata(con: duckdb.DuckDBPyConnection, table: str, cfg: MetadataConfig,
                  files: list[str]) -> None:
    """Replace ``table`` by itself LEFT JOINed with the declared columns, in ``_row`` order
    (``check_metadata`` has checked the metadata first). Only the metadata rows whose key is
    in ``table`` are read into the join, so a partition of the pool joins its own rows."""
    key = ident(cfg.on)
    norm = _norm_key(cfg)
    picked = ", ".join(f"TRY_CAST(m.{ident(c)} AS {parse_type(t)[1]}) AS {ident(c)}"
                       for c, t in cfg.columns.items())
    src = _source_sql(cfg, files)
    t = ident(table)
    con.execute(f"""CREATE TEMP TABLE __meta AS
                    SELECT {norm} AS __mkey, {picked} FROM {src} AS m
                    WHERE m.{key} IS NOT NULL AND {norm} IN (SELECT {key} FROM {t})""")
    cols = ", ".join(f"__meta.{ident(c)}" for c in cfg.columns)
    con.execute(f"""CREATE TABLE __joined AS
                    SELECT {t}.*, {cols} FROM {t} LEFT JOIN __meta
                    ON {t}.{key} = __meta.__mkey ORDER BY {t}._row""")
    con.execute(f"DROP TABLE {t}")
    con.execute(f"ALTER TABLE __joined RENAME TO {t}")
    con.execute("DROP TABLE __meta")
