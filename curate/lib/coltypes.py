"""Column types a user declares by name (pool metadata, json fields): ``bool``, ``int32``,
``int64``, ``float32``, ``float64``, ``string`` and ``list<T>`` of any of them, nested."""

from __future__ import annotations

import re

import pyarrow as pa

_SCALARS: dict[str, tuple[pa.DataType, str]] = {
    "bool": (pa.bool_(), "BOOLEAN"), "int32": (pa.int32(), "INTEGER"),
    "int64": (pa.int64(), "BIGINT"), "float32": (pa.float32(), "FLOAT"),
    "float64": (pa.float64(), "DOUBLE"), "string": (pa.string(), "VARCHAR"),
}
_LIST = re.compile(r"^list<(.+)>$")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_type(name: str) -> tuple[pa.DataType, str]:
    """A declared type name → (Arrow type, DuckDB type); ValueError names the known ones."""
    text = name.strip().replace(" ", "")
    if text in _SCALARS:
        return _SCALARS[text]
    m = _LIST.match(text)
    if m:
        inner, duck = parse_type(m.group(1))
        return pa.list_(inner), f"{duck}[]"
    raise ValueError(f"unknown type {name!r} (one of {', '.join(_SCALARS)} or list<T>)")
