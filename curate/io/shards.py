"""Finding and reading webdataset tar shards.

Shards are named by local paths, brace patterns (``pool/{00000..00099}.tar``), globs
(``pool/*.tar``) or any fsspec URL (``s3://bucket/pool/{0000..0999}.tar``, ``file://``,
``memory://``). Reading streams the tar once, groups members into samples by webdataset's key
convention (the member name up to the first dot of its base name), and yields Arrow batches.
Nothing is ever extracted to disk, so member names (``../x``, absolute paths) are only strings.

A member larger than ``max_member_bytes`` is skipped unread (its sample fails, stage ``read``),
so one sample never costs more memory than that. Problems inside a shard never raise: a sample
without an image, a caption that is not UTF-8 or a json member that is not JSON become samples
with ``status = error`` (stage ``read``); a tar that ends early keeps every sample read before
the break and reports the shard as ``truncated``; data that is not a valid header is skipped to
the next one and reported as ``damaged``, and the samples on both sides of it fail, since a
corrupt header does not say whose member it was. A compressed shard (gzip, bzip2, xz) is
decompressed here, with its checksums (a gzip member's CRC and length) checked.
Only a shard that cannot be opened at all raises (the runner retries it, then reports it as
failed): a missing file, or a file that is not a tar archive (``ShardUnreadable``).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import posixpath
import sys
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import braceexpand
import fsspec
import pyarrow as pa

from curate.errors import CurateError
from curate.schema import BATCH_SCHEMA, STATUS_ERROR, STATUS_OK
from curate.store.identity import HashingFile, combine, file_digest
from curate.uid import derive_uid, normalise_uid

# What a tar that ends early or has a corrupt block raises while streaming.
_TRUNCATION = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)

# Members larger than this are not read: their sample fails (stage read) with the size.
MAX_MEMBER_BYTES = 128 * 2**20

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
CAPTION_EXTENSIONS = ("txt", "text", "caption")


class ShardUnreadable(CurateError):
    """A shard that cannot be read at all (not a tar, or empty): the runner retries it, then
    reports it as failed; its samples are never silently counted as zero."""


@dataclass(frozen=True)
class ShardRef:
    """One input shard: where to read it (``url``) and its stable id (relative to the root)."""

    url: str
    shard_id: str
    failures: str | None = None  # img2dataset's per-shard Parquet: URLs that failed to download


def _strip_protocol(url: str) -> tuple[str, str]:
    if "://" in url:
        proto, rest = url.split("://", 1)
        return proto + "://", rest
    return "", url


def list_shards(patterns: str | list[str]) -> list[ShardRef]:
    """Expand ``patterns`` (brace patterns, globs, fsspec URLs) into sorted, unique shards.
    A folder stands for the shards directly in it (``*.tar``, ``*.tar.gz``, ``*.tgz``); a glob
    takes the files it matches, never a folder.

    Raises ``CurateError`` when a pattern matches nothing or a named file does not exist.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    urls: list[str] = []
    for pattern in patterns:
        for expanded in braceexpand.braceexpand(pattern):
            fs, path = fsspec.core.url_to_fs(expanded)
            proto, _ = _strip_protocol(expanded)
            if any(ch in path for ch in "*?["):
                found = sorted(p for p in fs.glob(path) if not fs.isdir(p))  # files only
                if not found:
                    raise CurateError(f"input pattern {expanded!r} matches no file",
                                      "check the path; patterns are relative to the current "
                                      "directory")
                urls.extend(_join_proto(proto, fs, p) for p in found)
            elif not fs.exists(path):
                raise CurateError(f"input shard {expanded!r} does not exist",
                                  "check the path, or run `curate demo-data DIR` for a "
                                  "demo pool")
            elif fs.isdir(path):
                urls.extend(_join_proto(proto, fs, p) for p in _folder_shards(fs, path, expanded))
            else:
                urls.append(_join_proto(proto, fs, path))
    if not urls:
        raise CurateError("the pipeline's input names no shard")
    unique = sorted(set(urls))
    root = _common_root(unique)
    return [ShardRef(url=u, shard_id=_relative(u, root)) for u in unique]


# What a file in a folder given as input must be called to be taken as a shard.
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def _folder_shards(fs: Any, path: str, given: str) -> list[str]:
    """The shards directly in the folder ``path`` (as img2dataset and webdataset write them:
    ``00000.tar``, ...); its other files (img2dataset's Parquet and stats) and its sub-folders
    are not input. A CurateError when it holds none."""
    found = sorted(p for p in fs.ls(path, detail=False)
                   if p.endswith(SHARD_SUFFIXES) and not fs.isdir(p))
    if not found:
        raise CurateError(f"input folder {given!r} holds no shard (*.tar, *.tar.gz, *.tgz)",
                          f"give the shards themselves, e.g. '{given.rstrip('/')}/**/*.tar' "
                          "for shards in sub-folders")
    return found


def _join_proto(proto: str, fs: Any, path: str) -> str:
    if not proto or proto == "file://":
        return os.path.abspath(path) if not proto else "file://" + path
    return proto + path


def _common_root(urls: list[str]) -> str:
    """The deepest directory holding every shard (shard ids are relative to it)."""
    parents = [posixpath.dirname(_strip_protocol(u)[1].replace(os.sep, "/")) for u in urls]
    if len({p.startswith("/") for p in parents}) > 1:
        return ""
    return posixpath.commonpath(parents)


def _relative(url: str, root: str) -> str:
    path = _strip_protocol(url)[1].replace(os.sep, "/")
    return posixpath.relpath(path, root) if root else path


def split_member(name: str) -> tuple[str, str] | None:
    """webdataset's convention: ``dir/abc.seg.jpg`` → key ``dir/abc``, extension ``seg.jpg``."""
    base = posixpath.basename(name)
    if "." not in base or base.startswith("."):
        return None
    prefix = name[: len(name) - len(base)]
    stem, ext = base.split(".", 1)
    return prefix + stem, ext.lower()


def _check_end(offset: int, size: int) -> None:
    """A complete tar has an end-of-archive block (512 zero bytes) after its last member;
    Python's tarfile stops silently when the stream simply ends, so check for it here."""
    if size - offset < 512:
        raise tarfile.ReadError(f"no end-of-archive block after byte {offset} of {size}")


def _decompressor(head: bytes) -> Callable[[], Any] | None:
    """A new decompressor for a shard that starts with ``head``, told by the magic bytes that
    tarfile's ``r|*`` looks for; None for a plain tar. zlib checks each gzip member's CRC and
    length, which tarfile's own stream does not."""
    if head.startswith(b"\x1f\x8b\x08"):
        return lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)
    if head[:3] == b"BZh" and head[4:10] == b"1AY&SY":
        return bz2.BZ2Decompressor
    if head.startswith((b"\x5d\x00\x00\x80", b"\xfd7zXZ")):
        return lzma.LZMADecompressor
    return None


class _TarStream:
    """A shard's tar stream as tarfile reads it (mode ``r|``), decompressed here when the
    shard is compressed, and scanned as it goes by for bytes that are not zero: ``has_data``
    tells a region tarfile skipped from zero padding without reading the shard again.
    Corrupt compressed data (a bad CRC included) and a compressed stream that ends early raise
    ``tarfile.ReadError``; errors reading the file itself pass unchanged (the shard is
    retried)."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self._head = f.read(512)
        self._make = _decompressor(self._head)
        self._d: Any = self._make() if self._make else None
        self._out, self._at = b"", 0  # decompressed; read up to _at
        self.pos = 0  # bytes of the tar stream read so far
        self._data: list[tuple[int, int]] = []  # [start, end) of reads' non-zero bytes

    def read(self, n: int = -1) -> bytes:
        chunk = self._raw(n) if self._d is None else self._decompressed(n)
        body = chunk.lstrip(b"\0")
        if body:
            self._data.append((self.pos + len(chunk) - len(body),
                               self.pos + len(chunk.rstrip(b"\0"))))
        self.pos += len(chunk)
        return chunk

    def has_data(self, start: int, end: int) -> bool:
        """Whether bytes ``start``..``end`` of the stream (read already) hold a non-zero byte
        (regions before the last ``forget`` are not known)."""
        return any(a < end and b > start for a, b in self._data)

    def first_data(self, start: int, end: int) -> int | None:
        """Where the first non-zero byte of ``start``..``end`` is (None: all zeros)."""
        found = [max(a, start) for a, b in self._data if a < end and b > start]
        return min(found) if found else None

    def forget(self, before: int) -> None:
        self._data = [r for r in self._data if r[1] > before]

    def _raw(self, n: int) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            if 0 <= n < len(head):
                head, self._head = head[:n], head[n:]
            return head + (self._f.read(n - len(head)) if n > len(head) else
                           self._f.read() if n < 0 else b"")
        return self._f.read(n)

    def _decompressed(self, n: int) -> bytes:
        n = n if n >= 0 else sys.maxsize
        while len(self._out) - self._at < n:
            raw = self._raw(1 << 16)
            if not raw:
                if not self._d.eof:
                    raise tarfile.ReadError("the compressed stream ends early")
                break
            try:
                out = self._inflate(raw)
            except (zlib.error, OSError, EOFError, lzma.LZMAError) as exc:
                raise tarfile.ReadError(f"invalid compressed data ({exc})") from exc
            self._out, self._at = self._out[self._at:] + out, 0
        chunk = self._out[self._at:self._at + n]
        self._at += len(chunk)
        return chunk

    def _inflate(self, raw: bytes) -> bytes:
        """Decompress ``raw``: concatenated members one after the other, zero bytes between
        or after them skipped (as gzip does)."""
        assert self._make is not None
        out = []
        while raw:
            if self._d.eof:
                raw = raw.lstrip(b"\0")
                if not raw:
                    break
                self._d = self._make()
            out.append(self._d.decompress(raw))
            raw = self._d.unused_data if self._d.eof else b""
        return b"".join(out)


def _text(name: str) -> str:
    """A member name as valid text: bytes that are not UTF-8, which tarfile passes on as
    surrogates (that neither Arrow nor a uid's hash can encode), are written ``\\xNN``."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _valid_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class ShardReadReport:
    """What reading one shard found."""

    samples: int = 0
    read_errors: int = 0
    truncated: str | None = None  # the tar error when the shard ended early
    damaged: str | None = None  # data the reader skipped to resynchronise (first region)
    damaged_regions: int = 0
    damaged_bytes: int = 0
    ignored_members: int = 0
    key_collisions: int = 0


class _Walk:
    """A tar's members in order, read with ``ignore_zeros`` so that an invalid header in the
    middle of the archive does not end it: tarfile then tries every following 512-byte block
    until a valid header, as GNU tar does when it skips to the next header. ``expected`` is
    where the next header should start (where tarfile itself looks: after the data of regular
    files and of types it does not know); a member found further on means skipped data, which
    is reported as damage unless it is all zeros (concatenated archives, ``cat a.tar b.tar``):
    the stream saw every byte tarfile skipped. A header tarfile cannot parse at all (a pax
    number that is not a number) ends the walk as a truncation."""

    def __init__(self, tar: tarfile.TarFile, stream: _TarStream,
                 report: ShardReadReport | None) -> None:
        self.tar, self.stream, self.report = tar, stream, report
        self.expected = 0
        self.gap_inside: tuple[int, int] | None = None  # the last skipped region
        # Whether it began with an end-of-archive marker (two zero blocks): then the sample
        # before it was complete, and only what follows can have lost members.
        self.gap_after_end = False
        self.count = 0  # members found so far

    def members(self) -> Iterator[tarfile.TarInfo]:
        while True:
            try:
                info = self.tar.next()
            except ValueError as exc:  # tarfile's int() of a malformed pax or sparse header
                raise tarfile.ReadError(f"invalid tar header after byte {self.expected} "
                                        f"({exc})") from exc
            if info is None:
                return
            if info.offset > self.expected:
                self.skipped(self.expected, info.offset)
            self.expected = self.tar.offset
            self.stream.forget(self.expected)
            self.count += 1
            yield info

    def skipped(self, start: int, end: int) -> bool:
        """Record ``start``..``end`` as damage if it holds data; True when it does."""
        first = self.stream.first_data(start, end)
        if first is None:
            return False
        self.gap_inside = (start, end)
        self.gap_after_end = first - start >= 2 * 512
        if self.report is not None:
            self.report.damaged_regions += 1
            self.report.damaged_bytes += end - start
            if self.report.damaged is None:
                self.report.damaged = (f"corrupt tar data at byte {start}: skipped {end - start} "
                                       f"bytes to the next valid header")
        return True

    def finish(self) -> None:
        """At the end (tarfile read the stream to its end): a missing end-of-archive block
        means truncation; data after the last member (where only zeros belong) is damage.
        Offsets are the decompressed stream's in a compressed shard."""
        _check_end(self.expected, self.stream.pos)
        if self.skipped(self.expected, self.stream.pos) and self.report is not None:
            self.report.damaged = (self.report.damaged or "").replace(
                "to the next valid header", "to the end of the shard", 1)


def _sample_members(walk: _Walk, report: ShardReadReport | None,
                    ) -> Iterator[tuple[tarfile.TarInfo, str, str]]:
    """(member, key, extension) of every file member that belongs to a sample; directories,
    names without an extension and webdataset's ``__``-prefixed meta members are skipped."""
    for info in walk.members():
        if not info.isfile():
            continue
        parts = split_member(_text(info.name))
        if parts is None or posixpath.basename(parts[0]).startswith("__"):
            if report is not None:
                report.ignored_members += 1
            continue
        yield info, parts[0], parts[1]


@dataclass
class _Pending:
    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    broken: str | None = None
    oversize: list[str] = field(default_factory=list)


class ShardReader:
    """Stream the samples of one shard as Arrow batches (``BATCH_SCHEMA``).

    ``report`` is complete once iteration ends, and so is ``digest``: the SHA-256 identity of
    the shard's bytes (``curate.store.identity``), hashed as the stream goes by. The stream is
    read once, front to back. Each sample's ``image_sha256`` is the SHA-256 of its image
    member's bytes: the output writer checks it before it copies them.

    A downloaded shard (``ref.failures``: img2dataset's Parquet) yields its samples in key
    order, which is the URL list's order: the images in the tar and, between them, one error
    sample for each URL that failed to download.

    Hostile members, decided here once:

    * a member name is never a path: ``../x.jpg`` and ``/etc/x.jpg`` are keys like any other,
      and only regular files are read (links and devices are skipped);
    * a json ``uid`` is used only when it is 32 hex characters (after trimming and
      lower-casing); any other value is ignored and the uid is derived, so a uid is always safe
      as a file name (the output names its members by uid);
    * a repeated key (``k.jpg k.txt k.jpg``) starts a new sample, with its own derived uid;
      no derived uid is given twice in a shard, whatever the keys (``a a a#1``);
    * a member name whose bytes are not UTF-8 is a key with those bytes written ``\\xNN``;
      a json ``url`` that is not valid Unicode (a lone surrogate escape) is an error;
    * a zero-byte caption member is the empty caption ``""`` (status ok; a missing caption
      member is null); a zero-byte json member is an error (``json member is empty
      (0 bytes)``): JSON has no empty value, and the sample's uid and url would be lost;
    * NUL characters in a caption are kept: captions are data, and the output copies their
      bytes. A raw NUL (like any control character) inside a json string makes the json
      invalid, an error; an escaped ``\\u0000`` is kept;
    * the image member is passed on as bytes; decoders find its format from the content
      (``curate.lib.imaging.open_image``), never from the extension;
    * members with other extensions (``.pyd``, ``.pickle``, ``.pth``, ...) are held as bytes
      and never decoded: nothing of the input is executed or unpickled.
    """

    def __init__(self, ref: ShardRef, batch_size: int = 256,
                 max_member_bytes: int = MAX_MEMBER_BYTES) -> None:
        self.ref = ref
        self.batch_size = batch_size
        self.max_member_bytes = max_member_bytes
        self.report = ShardReadReport()
        self.digest: str | None = None
        self._seen: dict[str, int] = {}
        self._derived: set[str] = set()  # the derived uids given so far: each is given once

    def __iter__(self) -> Iterator[pa.Table]:
        rows: list[dict[str, Any]] = []
        for sample in self._samples():
            rows.append(sample)
            if len(rows) >= self.batch_size:
                yield pa.Table.from_pylist(rows, schema=BATCH_SCHEMA)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=BATCH_SCHEMA)

    def _samples(self) -> Iterator[dict[str, Any]]:
        fs, path = fsspec.core.url_to_fs(self.ref.url)
        if self.ref.failures is None:
            yield from self._tar_samples()
            return
        # A download shard whose every URL failed may have no tar; its failures are merged in
        # key order between the tar's samples.
        failed = self._failed_downloads(self.ref.failures)
        pending = next(failed, None)
        tar_digest: str | None = None
        if fs.exists(path):
            for sample in self._tar_samples(number=False):
                while pending is not None and pending["key"] < sample["key"]:
                    yield self._numbered(pending)
                    pending = next(failed, None)
                yield self._numbered(sample)
            tar_digest = self.digest
        while pending is not None:
            yield self._numbered(pending)
            pending = next(failed, None)
        self.digest = combine(tar_digest, file_digest(self.ref.failures))

    def _numbered(self, sample: dict[str, Any]) -> dict[str, Any]:
        sample["index"] = self.report.samples
        self.report.samples += 1
        return sample

    def _failed_downloads(self, path: str) -> Iterator[dict[str, Any]]:
        """One error sample per URL that img2dataset could not download, in key order."""
        import pyarrow.parquet as pq

        with fsspec.open(path, "rb") as f:
            table = pq.read_table(f)
        names = set(table.column_names)
        rows = [r for r in table.to_pylist() if r.get("status") != "success"]
        for row in sorted(rows, key=lambda r: str(r["key"])):
            self.report.read_errors += 1
            uid = normalise_uid(row.get("uid")) or derive_uid(self.ref.shard_id, str(row["key"]))
            yield {"uid": uid, "shard": self.ref.shard_id, "key": str(row["key"]),
                   "index": -1, "image_member": None, "url": row.get("url"),
                   "caption": row.get("caption") if "caption" in names else None,
                   "image_sha256": None, "status": STATUS_ERROR, "error_stage": "download",
                   "error": str(row.get("error_message") or row.get("status") or "failed"),
                   "image": None, "json": None}

    def _tar_samples(self, number: bool = True) -> Iterator[dict[str, Any]]:
        fs, path = fsspec.core.url_to_fs(self.ref.url)
        with fs.open(path, "rb") as raw:  # OSError here: the shard is unreadable (retried)
            f = HashingFile(raw)
            pending: _Pending | None = None
            stream = _TarStream(f)
            walk: _Walk | None = None
            try:
                opened = tarfile.open(fileobj=stream, mode="r|", ignore_zeros=True)
            except _TRUNCATION as exc:  # not a tar at all (or empty): fail, never 0 samples
                raise ShardUnreadable(f"{self.ref.url} is not a tar archive "
                                      f"({type(exc).__name__}: {exc})") from exc
            try:
                with opened as tar:
                    walk = _Walk(tar, stream, self.report)
                    for info, key, ext in _sample_members(walk, self.report):
                        # Skipped data held lost members of the sample before it or of the
                        # one after it (or both): which, a corrupt header does not say.
                        gap, walk.gap_inside = walk.gap_inside, None
                        if gap is not None and pending is not None and (
                                key == pending.key or not walk.gap_after_end):
                            pending.broken = pending.broken or _damage(
                                gap, "inside" if key == pending.key else "right after")
                        if pending is not None and (key != pending.key or ext in pending.members):
                            yield self._finish(pending, number)
                            pending = None
                        if pending is None:
                            pending = _Pending(key)
                            if gap is not None:
                                pending.broken = _damage(gap, "right before")
                        if info.size > self.max_member_bytes:  # skipped unread: bounded memory
                            pending.members[ext] = b""
                            pending.oversize.append(
                                f"member .{ext} is {info.size} bytes, over max_member_bytes "
                                f"{self.max_member_bytes}")
                            continue
                        data = tar.extractfile(info)
                        blob = data.read() if data is not None else b""
                        if len(blob) != info.size:
                            raise tarfile.ReadError(f"member {_text(info.name)} has {len(blob)} "
                                                    f"of {info.size} bytes")
                        pending.members[ext] = blob
                    walk.finish()
                    if walk.count == 0 and self.report.damaged is not None:
                        raise ShardUnreadable(f"{self.ref.url} is not a tar archive (no valid "
                                              "tar header in it)")
                    if walk.gap_inside is not None and pending is not None and \
                            not walk.gap_after_end:  # garbage after the archive's end harms none
                        pending.broken = pending.broken or _damage(walk.gap_inside, "right after")
            except _TRUNCATION as exc:
                if walk is None or walk.count == 0:  # no valid header: not a tar at all
                    raise ShardUnreadable(f"{self.ref.url} is not a tar archive "
                                          f"({type(exc).__name__}: {exc})") from exc
                self.report.truncated = f"{type(exc).__name__}: {exc}"
                if pending is not None:
                    pending.broken = f"the shard ends inside this sample ({self.report.truncated})"
            if pending is not None:
                yield self._finish(pending, number)
            self.digest = f.finish()

    def _finish(self, p: _Pending, number: bool = True) -> dict[str, Any]:
        index = self.report.samples if number else -1
        if number:
            self.report.samples += 1
        n = self._seen.get(p.key, 0)
        self._seen[p.key] = n + 1
        if n:
            self.report.key_collisions += 1
        problems: list[str] = list(p.oversize)
        if p.broken:
            problems.append(p.broken)
        image_ext = next((e for e in IMAGE_EXTENSIONS if e in p.members), None)
        if image_ext is None:
            problems.append("no image member (looked for ." + ", .".join(IMAGE_EXTENSIONS) + ")")
        caption: str | None = None
        cap_ext = next((e for e in CAPTION_EXTENSIONS if e in p.members), None)
        if cap_ext is not None:
            raw = p.members[cap_ext]
            try:
                caption = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                caption = raw.decode("utf-8", errors="replace")
                problems.append(f"caption is not valid UTF-8 ({exc.reason} at byte {exc.start})")
        meta_text: str | None = None
        meta: dict[str, Any] = {}
        if "json" in p.members and not p.members["json"]:
            problems.append("json member is empty (0 bytes)")
        elif "json" in p.members:
            try:
                meta_text = p.members["json"].decode("utf-8")
                loaded = json.loads(meta_text)
                if not isinstance(loaded, dict):
                    raise ValueError("not a JSON object")
                meta = loaded
            except RecursionError:
                meta_text = None
                problems.append("json member is not a valid JSON object (nested too deeply)")
            except (UnicodeDecodeError, ValueError) as exc:
                problems.append(f"json member is not a valid JSON object ({exc})")
        uid = normalise_uid(meta.get("uid")) or self._derived_uid(p.key, n)
        url = meta.get("url")
        if isinstance(url, str) and not _valid_text(url):
            problems.append("json url is not valid Unicode (it holds a lone surrogate)")
            url = None
        image = p.members.get(image_ext) if image_ext else None
        if problems:
            self.report.read_errors += 1
        return {
            "uid": uid,
            "shard": self.ref.shard_id,
            "key": p.key,
            "index": index,
            "image_member": image_ext,
            "url": url if isinstance(url, str) else None,
            "caption": caption,
            "image_sha256": hashlib.sha256(image).hexdigest() if image is not None else None,
            "status": STATUS_ERROR if problems else STATUS_OK,
            "error_stage": "read" if problems else None,
            "error": "; ".join(problems) if problems else None,
            "image": image,
            "json": meta_text,
        }


    def _derived_uid(self, key: str, n: int) -> str:
        """The derived uid of the ``n``-th sample with ``key`` (from ``key#n`` after the first,
        see ``curate.uid``), never one the shard gave already: after two samples ``a``, a
        sample whose key is literally ``a#1`` takes the next free ``a#1#k``."""
        uid = derive_uid(self.ref.shard_id, key if not n else f"{key}#{n}")
        while uid in self._derived:
            n += 1
            uid = derive_uid(self.ref.shard_id, f"{key}#{n}")
        self._derived.add(uid)
        return uid


def _damage(gap: tuple[int, int], where: str) -> str:
    return (f"tar data {where} this sample is damaged (bytes {gap[0]} to {gap[1]} were "
            "skipped)" + ("" if where == "inside" else ": members of it may be lost"))


def read_members(ref: ShardRef, indices: set[int]) -> dict[int, dict[str, bytes]]:
    """The raw members (extension → bytes, plus ``__key__``: the sample's key) of the samples at
    ``indices`` of one shard.

    Used by the writer to copy kept samples byte for byte. Grouping and numbering are the same
    as ``ShardReader``'s (in a download shard, the failed URLs take their places in key order).
    """
    out: dict[int, dict[str, bytes]] = {}
    failed = _failed_keys(ref.failures) if ref.failures is not None else []
    index = -1
    tar_position = -1
    passed = 0  # failed URLs numbered before the current tar sample
    current: str | None = None
    seen_exts: set[str] = set()
    want = max(indices) if indices else -1
    fs, path = fsspec.core.url_to_fs(ref.url)
    if ref.failures is not None and not fs.exists(path):
        return out
    with fs.open(path, "rb") as f:
        try:
            stream = _TarStream(f)
            with tarfile.open(fileobj=stream, mode="r|", ignore_zeros=True) as tar:
                walk = _Walk(tar, stream, None)  # numbering only, as the reader's
                for info, key, ext in _sample_members(walk, None):
                    if key != current or ext in seen_exts:
                        tar_position += 1
                        while passed < len(failed) and failed[passed] < key:
                            passed += 1
                        index = tar_position + passed
                        current, seen_exts = key, set()
                        if index > want:
                            break
                    seen_exts.add(ext)
                    if index in indices:
                        data = tar.extractfile(info)
                        got = out.setdefault(index, {"__key__": key.encode()})
                        got[ext] = data.read() if data else b""
        except _TRUNCATION as exc:
            if set(indices) - set(out):
                raise CurateError(f"shard {ref.url} changed since it was scored: {exc}") from exc
    return out


def _failed_keys(path: str) -> list[str]:
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as f:
        table = pq.read_table(f, columns=["key", "status"])
    return sorted(str(k) for k, s in zip(table.column("key").to_pylist(),
                                         table.column("status").to_pylist(), strict=True)
                  if s != "success")
