"""Quoting for the SQL that curate builds from pipeline parameters."""

from __future__ import annotations

import re
from pathlib import Path


def ident(name: str) -> str:
    """A DuckDB identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: object) -> str:
    """A DuckDB literal for a str, bool, int or float."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


_GLOB = re.compile(r"([*?\[])")


def path_literal(path: object) -> str:
    """A DuckDB literal naming exactly one file: ``read_parquet`` expands ``*``, ``?`` and
    ``[...]`` in a path as a glob, so a directory called ``sel *`` would read its neighbours'
    files too; each such character is put in a class of its own (``[*]``), which matches only
    itself."""
    return literal(glob_escape(path))


def glob_escape(path: object) -> str:
    """``path`` with each glob character in a class of its own, for ``read_parquet``."""
    return _GLOB.sub(r"[\1]", str(path))


# DuckDB cuts a writable database's path at "?" (URL-style options) when it names the
# write-ahead log, and reads "\" as a separator; read-only opens are not affected.
_UNSAFE_DB_PATH = re.compile(r"[?\\]")


def writable_db_path(path: str | Path) -> bool:
    """Whether DuckDB can create and write a database file at ``path``."""
    return _UNSAFE_DB_PATH.search(str(path)) is None
