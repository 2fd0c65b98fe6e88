"""Reading a URL list, and the uid of each of its rows.

A URL list is Parquet, CSV, TSV, JSON (an array of objects, or JSON lines) or plain text (one
URL per line; blank lines are skipped, there is no caption). The format is ``input.format``, or
else the file's extension. ``read_url_list`` returns an Arrow table with ``url`` (the
``input.url_col`` column), ``caption`` (``input.caption_col``; all null when that is null or the
list is text), ``uid`` and every other column of the list under its own name. In CSV and TSV the
url, caption and uid columns are read as text (so ``00…01`` stays a string; an empty field is
``""``), the others are typed by pyarrow's inference. An extra column whose type JSON cannot
hold (timestamps, dates, decimals, binary) is kept as its string form, because extra columns
travel in each sample's json.

**The uid of a row.** A row whose ``uid`` column holds 32 hex characters keeps that value,
trimmed and lower-cased (``curate.uid.normalise_uid``). Every other row gets a derived uid: the
first 128 bits, as 32 lowercase hex characters, of ::

    sha256(field("curate/url-uid/v1") ‖ field(url) ‖ field(caption) ‖ uint64_be(n))

where ``field(None) = 0x00`` and ``field(s) = 0x01 ‖ uint64_be(len(utf8(s))) ‖ utf8(s)``, the
url and caption are the list's values exactly (no trimming, no Unicode normalisation, no URL
canonicalisation; null and ``""`` differ), and ``n`` is the row's occurrence number (0, 1, ...)
among the rows *with a derived uid* that have the same url and caption, in list order.
Consequences:

* appending rows, or reordering the list, keeps every uid: a row's uid depends only on its url,
  its caption and how many identical rows precede it, so a rerun recognises what it already
  downloaded (``curate.ingest.download``);
* two lists share a derived uid only for a row (url, caption, n) that both contain; two
  unrelated lists never do, unlike uids derived from shard names and keys;
* two identical rows get different uids (n = 0 and 1): each is its own sample. Reordering
  identical rows swaps nothing visible, since they are identical;
* other columns do not enter the uid: editing one for a row already downloaded does not
  download it again, and its stored sample keeps the values it was downloaded with. Editing a
  url or a caption makes a new row (a new uid, downloaded on the next run);
* a uid column value that repeats is kept as it is (selection drops the later sample as
  ``duplicate_uid``); with a uid column the uid alone names a row, so changing that row's url
  does not download it again.

A row whose URL is null, empty, or not an http(s) URL is kept: it gets a uid like any other row
and becomes a sample that failed to download, with the reason as its error; it is never
requested, so a ``file://`` URL cannot read the local disk.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc

from curate.config import InputConfig
from curate.errors import CurateError
from curate.uid import normalise_uid

UID_TAG = "curate/url-uid/v1"
FORMATS = ("parquet", "csv", "tsv", "txt", "json")
_EXTENSIONS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".txt": "txt",
               ".json": "json", ".jsonl": "json"}
# Names img2dataset writes itself (plus url, caption and uid, which curate fills): an extra
# column with one of these names would be overwritten, so it is an error.
RESERVED = ("url", "caption", "uid", "key", "status", "error_message", "width", "height",
            "original_width", "original_height", "exif", "md5", "sha256", "sha512")


@dataclass(frozen=True)
class UrlList:
    """A URL list as read: ``table`` has url, caption, uid, then ``extra`` (one row per row)."""

    path: str
    format: str
    table: pa.Table
    extra: list[str]
    given_uids: int  # rows whose uid came from the list's uid column

    @property
    def uids(self) -> list[str]:
        return self.table.column("uid").to_pylist()


def url_list_format(cfg: InputConfig) -> str:
    """``input.format``, or the format the URL list's extension names."""
    assert cfg.urls is not None
    if cfg.format:
        return cfg.format
    fmt = _EXTENSIONS.get(Path(cfg.urls).suffix.lower())
    if fmt is None:
        raise CurateError(f"cannot tell the format of URL list {cfg.urls!r} from its extension",
                          f"set input.format to one of {', '.join(FORMATS)}")
    return fmt


def _field(value: str | None) -> bytes:
    if value is None:
        return b"\x00"
    data = value.encode("utf-8", "surrogatepass")
    return b"\x01" + len(data).to_bytes(8, "big") + data


def row_uid(url: str | None, caption: str | None, n: int) -> str:
    """The derived uid of the ``n``-th row with this url and caption (see the module docs)."""
    h = hashlib.sha256(_field(UID_TAG))
    h.update(_field(url))
    h.update(_field(caption))
    h.update(n.to_bytes(8, "big"))
    return h.hexdigest()[:32]


def assign_uids(urls: Sequence[str | None], captions: Sequence[str | None],
                given: Sequence[object] | None = None) -> list[str]:
    """The uid of every row: a valid ``given`` value, else the derived one (module docs)."""
    seen: dict[tuple[str | None, str | None], int] = {}
    out: list[str] = []
    for i, (url, caption) in enumerate(zip(urls, captions, strict=True)):
        uid = normalise_uid(given[i]) if given is not None else None
        if uid is None:
            n = seen.get((url, caption), 0)
            seen[(url, caption)] = n + 1
            uid = row_uid(url, caption, n)
        out.append(uid)
    return out


def not_downloadable(url: str | None) -> str | None:
    """Why a row's URL is not requested at all (None: it is downloaded)."""
    if url is None or not url.strip():
        return "the URL list has no URL in this row (null or empty)"
    try:
        scheme = urlsplit(url.strip()).scheme.lower()
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if scheme not in ("http", "https"):
        return (f"not an http(s) URL (scheme {scheme!r})" if scheme else
                "not an http(s) URL (no scheme)") + ": only http and https URLs are downloaded"
    return None


def read_url_list(cfg: InputConfig) -> UrlList:
    """Read ``cfg.urls`` and give every row its uid; raises CurateError on what the user must
    fix (a missing file or column, an unknown format, an empty list, unreadable content)."""
    assert cfg.urls is not None
    path = cfg.urls
    if not Path(path).is_file():
        raise CurateError(f"URL list {path!r} does not exist", "check input.urls")
    fmt = url_list_format(cfg)
    if Path(path).stat().st_size == 0:
        raise CurateError(f"URL list {path!r} has no rows (the file is empty)", "check input.urls")
    text_cols = [c for c in (cfg.url_col, cfg.caption_col, "uid") if c]
    try:
        raw = _read(path, fmt, text_cols)
        names = raw.column_names  # decoded here: a CSV header may hold any bytes
    except CurateError:
        raise
    except RecursionError:
        raise CurateError(f"URL list {path!r} is nested too deeply to read as {fmt}",
                          "give each row flat values") from None
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise CurateError(f"cannot read URL list {path!r} as {fmt}: {exc}".splitlines()[0],
                          "check the file, or set input.format") from exc
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise CurateError(f"URL list {path!r} repeats column names: {', '.join(repeated)}",
                          "give every column its own name")
    if raw.num_rows == 0:
        raise CurateError(f"URL list {path!r} has no rows", "check input.urls")
    url_col = "url" if fmt == "txt" else cfg.url_col
    caption_col = None if fmt == "txt" else cfg.caption_col
    listed = ", ".join(names) or "none"
    if url_col not in names:
        raise CurateError(f"URL list {path!r} has no column {url_col!r} (columns: {listed})",
                          "set input.url_col")
    if caption_col is not None and caption_col not in names:
        raise CurateError(f"URL list {path!r} has no column {caption_col!r} (columns: {listed})",
                          "set input.caption_col (or null for no captions)")
    extra = [c for c in names if c not in (url_col, caption_col, "uid")]
    clash = [c for c in extra if c in RESERVED]
    if clash:
        raise CurateError(
            f"URL list {path!r} has columns named {', '.join(clash)}, which the download "
            f"writes itself (url column {url_col!r}, caption column {caption_col!r})",
            "rename those columns, or set input.url_col / input.caption_col to them")
    url = _text(raw, url_col, path)
    caption = _text(raw, caption_col, path) if caption_col else pa.nulls(raw.num_rows, pa.string())
    given = raw.column("uid").to_pylist() if "uid" in names else None
    uids = assign_uids(url.to_pylist(), caption.to_pylist(), given)
    columns = {"url": url, "caption": caption, "uid": pa.array(uids, pa.string())}
    for name in extra:
        columns[name] = _jsonable(raw.column(name), name, path)
    table = pa.table(columns)
    given_count = sum(normalise_uid(v) is not None for v in given) if given is not None else 0
    return UrlList(path=path, format=fmt, table=table, extra=extra, given_uids=given_count)


def _read(path: str, fmt: str, text_cols: list[str]) -> pa.Table:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    if fmt in ("csv", "tsv"):
        import pyarrow.csv as pcsv

        return pcsv.read_csv(
            path, parse_options=pcsv.ParseOptions(delimiter="," if fmt == "csv" else "\t"),
            convert_options=pcsv.ConvertOptions(
                column_types=dict.fromkeys(text_cols, pa.string())))
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise CurateError(f"URL list {path!r} is not UTF-8 text ({exc.reason} at byte "
                          f"{exc.start})", "save it as UTF-8") from exc
    if fmt == "txt":
        return pa.table({"url": pa.array([s.strip() for s in text.splitlines() if s.strip()],
                                         pa.string())})
    return _json_table(path, text, text_cols)


def _json_table(path: str, text: str, text_cols: list[str]) -> pa.Table:
    """A JSON array of objects, or JSON lines (one object per line, a line ending at ``\\n``:
    JSON strings may hold U+2028 and the other breaks ``str.splitlines`` splits at)."""
    try:
        records = json.loads(text)
    except json.JSONDecodeError:
        try:
            records = [json.loads(line) for line in text.split("\n") if line.strip()]
        except json.JSONDecodeError as exc:
            raise CurateError(f"URL list {path!r} is neither a JSON array nor JSON lines "
                              f"({exc})", "write an array of objects, or one object per "
                              "line") from exc
    if isinstance(records, dict):  # JSON lines of one line
        records = [records]
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise CurateError(f"URL list {path!r} is not a list of JSON objects",
                          "write an array of objects, or one object per line")
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record))
    columns = {}
    for name in names:
        values = [r.get(name) for r in records]
        if name in text_cols:
            values = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
        try:
            columns[name] = pa.array(values)
        except UnicodeEncodeError as exc:
            raise CurateError(f"URL list {path!r}: column {name!r} holds a string that is not "
                              f"valid Unicode ({exc.reason}: {exc.object[exc.start:exc.end]!r})",
                              "write the text as UTF-8, without lone surrogate escapes") from exc
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
            raise CurateError(f"URL list {path!r}: column {name!r} mixes types ({exc})",
                              "give each column values of one type") from exc
    return pa.table(columns)


def _text(table: pa.Table, name: str, path: str) -> pa.ChunkedArray:
    col = table.column(name)
    if pa.types.is_string(col.type):
        return col
    try:
        return pc.cast(col, pa.string())
    except (pa.ArrowException, NotImplementedError) as exc:
        raise CurateError(f"URL list {path!r}: column {name!r} of type {col.type} is not text",
                          "give it strings") from exc


def _json_type(t: pa.DataType) -> bool:
    """Whether Python's json can hold the values of an Arrow type as they come out."""
    if (pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_null(t)
            or pa.types.is_string(t) or pa.types.is_large_string(t)
            or pa.types.is_float32(t) or pa.types.is_float64(t)):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _json_type(t.value_type)
    if pa.types.is_struct(t):
        return all(_json_type(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_dictionary(t):
        return _json_type(t.value_type)
    return False


def _jsonable(col: pa.ChunkedArray, name: str, path: str) -> pa.ChunkedArray:
    if _json_type(col.type):
        return col
    try:
        return pc.cast(col, pa.string())
    except (pa.ArrowException, NotImplementedError) as exc:
        raise CurateError(f"URL list {path!r}: column {name!r} of type {col.type} cannot be "
                          "stored in a sample's json", "drop it or convert it to text or "
                          "numbers") from exc
