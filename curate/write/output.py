"""Writing the curated webdataset shards from the manifest.

Kept samples, in pool order, are cut into output shards of ``samples_per_shard``
(``output/00000.tar``, ...). Each output sample has:

* ``__key__`` = the sample's uid;
* the image member under its original extension, its bytes copied untouched from the input;
* ``txt``: the caption member's original bytes;
* ``json``: the input json object plus ``uid`` and ``scores`` (every scorer column), and, when
  the pipeline rewrites captions, ``rewrites``: every rewrite with its provenance (model,
  backend, prompt format, example ids, seed, sampling parameters, status, reason);
* ``txt_rw0``, ``txt_rw1``, ...: the accepted rewrites (UTF-8), numbered as in ``rewrites``; a
  rewrite that failed has no member, so a loader picks among ``txt`` and the ``txt_rw*`` present.

``sizes.json`` maps shard names to sample counts (open_clip's training loader reads it to know
the dataset size). ``.state/NNNNN.json`` records a digest of what a shard holds, so a rerun
rewrites only shards whose content changed, and ``finish`` deletes only shards that have such a
record (tars it did not write are never deleted).

The output directory is ``RUN/output`` or ``output.dir``: a local path or any fsspec URL
(``s3://bucket/curated``, ``gs://...``, ``file:///shared/x``, ``memory://x``). Every file
appears complete or not at all:

* local paths and ``file://``: written to a temporary file beside the target, then renamed;
* other filesystems (object stores): written to a local temporary file, then uploaded in one
  ``put``, which an object store shows complete or not at all.

``placement`` says where the runner writes shards from: a plain local path may exist only on
the driver's machine, so its shards are written on the driver's node; ``file://`` (a mount at the
same path on every node) and object stores are written from any node; ``memory://`` lives in
one process, so the driver writes it itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import posixpath
import re
import tempfile
import urllib.parse
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import duckdb
import fsspec
import webdataset as wds
from fsspec.implementations.local import LocalFileSystem

from curate.io.atomic import atomic_path
from curate.io.shards import ShardRef, read_members
from curate.rewrite.stage import rewrites_json
from curate.sql import ident, literal


@dataclass(frozen=True)
class OutputShard:
    number: int
    items: list[dict[str, Any]]  # uid, shard, index, image_member, scores
    group: str | None = None  # subdirectory when the output is split by a column

    @property
    def name(self) -> str:
        """Path relative to the output directory."""
        return f"{self.group}/{self.number:05d}.tar" if self.group else f"{self.number:05d}.tar"

    @property
    def state(self) -> str:
        return self.name.replace("/", "__").removesuffix(".tar") + ".json"

    def digest(self) -> str:
        blob = json.dumps(self.items, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


def plan(manifest: Path, score_columns: list[str], samples_per_shard: int,
         split_by: str | None = None) -> list[OutputShard]:
    """Cut the kept rows of ``manifest`` into output shards, in pool order; with ``split_by``,
    each value of that column gets its own directory ``<column>=<value>/`` of shards."""
    con = duckdb.connect()
    src = f"read_parquet({literal(str(manifest))})"
    has_rw = "rewrites" in {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
    scores = "".join(f", {ident(c)}" for c in score_columns)
    group = f"CAST({ident(split_by)} AS VARCHAR)" if split_by else "NULL"
    rows = con.execute(f"""
        SELECT {group} AS grp, uid, shard, "index", image_member,
               {"rewrites" if has_rw else "NULL"} AS rewrites {scores}
        FROM {src} WHERE kept
        ORDER BY {ident(split_by) + " NULLS LAST, " if split_by else ""}shard, "index"
    """).fetchall()
    con.close()
    by_group: dict[str | None, list[tuple[Any, ...]]] = {}
    for r in rows:
        by_group.setdefault(r[0], []).append(r[1:])
    shards: list[OutputShard] = []
    for value, members in by_group.items():
        sub_dir = f"{split_by}={_dir_name(value)}" if split_by else None
        for n in range(math.ceil(len(members) / samples_per_shard)):
            chunk = members[n * samples_per_shard:(n + 1) * samples_per_shard]
            items = [{"uid": r[0], "shard": r[1], "index": r[2], "image_member": r[3],
                      "scores": {c: _json_value(v)
                                 for c, v in zip(score_columns, r[5:], strict=True)}}
                     for r in chunk]
            if has_rw:
                for item, r in zip(items, chunk, strict=True):
                    item["rewrites"] = rewrites_json(r[4])
            shards.append(OutputShard(n, items, sub_dir))
    return shards


def _dir_name(value: Any) -> str:
    """A split value as part of one path component: percent-encoded, so a value from the data
    (``a/../../x``) can never name another directory; ``none`` for null."""
    return "none" if value is None else urllib.parse.quote(str(value), safe="")


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


Placement = Literal["driver_node", "spread", "driver_process"]

_SHARD_NAME = re.compile(r"[0-9]{5}\.tar")
# Temporary files of a killed local write (see curate.io.atomic): ".00003.tar.k2j_x9.tmp".
_LEFTOVER = re.compile(r"\.([0-9]{5}\.tar|sizes\.json|[^/]+\.json)\.[^./]+\.tmp")
_PROCESS_LOCAL = frozenset({"memory"})


def _is_url(out: str) -> bool:
    return "://" in out or "::" in out


def resolve_dir(out: str | Path) -> str:
    """``out`` as every process reads it alike: a local path made absolute, ``file://`` plus an
    absolute path, or any other URL as given (without a trailing slash)."""
    text = str(out)
    if not _is_url(text):
        return str(Path(text).expanduser().absolute())
    if text.startswith("file://"):
        return "file://" + fsspec.core.url_to_fs(text)[1]
    proto, sep, rest = text.rpartition("://")
    return f"{proto}{sep}{rest.rstrip('/')}"


def placement(out: str | Path) -> Placement:
    """Where the runner writes the shards of ``out`` from (see the module docstring)."""
    text = str(out)
    if not _is_url(text):
        return "driver_node"
    fs, _ = fsspec.core.url_to_fs(text)
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    return "driver_process" if protocols & _PROCESS_LOCAL else "spread"


@dataclass(frozen=True)
class _Dir:
    """An output directory on some fsspec filesystem; names are relative, '/'-separated."""

    fs: Any
    root: str

    @classmethod
    def of(cls, out: str | Path) -> _Dir:
        fs, root = fsspec.core.url_to_fs(str(out))
        return cls(fs, root.rstrip("/") if root != "/" else root)

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, name: str) -> str:
        return posixpath.join(self.root, name) if self.root else name

    def files(self) -> set[str]:
        """Every file under the directory (recursively), by relative name."""
        found = self.fs.find(self.root)
        if self.root in ("", "/"):  # a filesystem's root (e.g. memory://)
            return {p.lstrip("/") for p in found}
        return {posixpath.relpath(p, self.root) for p in found}

    def read(self, names: list[str]) -> dict[str, bytes]:
        """The bytes of existing files (missing ones are left out), in one batch request."""
        if not names:
            return {}
        paths = {self.fs._strip_protocol(self.path(n)): n for n in names}
        got = self.fs.cat(list(paths), on_error="omit")
        return {paths[k]: v for k, v in ((self.fs._strip_protocol(p), v)
                                          for p, v in got.items()) if k in paths}

    def write(self, name: str, fill: Callable[[IO[bytes]], None]) -> None:
        """Write ``name`` atomically; ``fill`` writes its bytes into a binary file."""
        if self.local:
            with atomic_path(self.path(name)) as tmp, open(tmp, "wb") as f:
                fill(f)
            return
        fd, tmp = tempfile.mkstemp(prefix="curate-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                fill(f)
            self.fs.put_file(tmp, self.path(name))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def write_bytes(self, name: str, data: bytes) -> None:
        if self.local:
            self.write(name, lambda f: f.write(data))
        else:
            self.fs.pipe_file(self.path(name), data)  # one request: whole or nothing

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(name))


def _state_name(name: str) -> str:
    return ".state/" + name.replace("/", "__").removesuffix(".tar") + ".json"


def _digest_in(blob: bytes | None) -> str | None:
    if blob is None:
        return None
    try:
        state = json.loads(blob)
    except ValueError:
        return None
    return state.get("digest") if isinstance(state, dict) else None


def stale(out_dir: str | Path, shards: list[OutputShard]) -> list[OutputShard]:
    """The shards of ``shards`` that ``out_dir`` does not hold with this content yet (one
    listing and one batched read, so it is cheap on object stores too)."""
    d = _Dir.of(out_dir)
    files = d.files()
    have = [s for s in shards if s.name in files and _state_name(s.name) in files]
    states = d.read([_state_name(s.name) for s in have])
    current = {s.name for s in have if _digest_in(states.get(_state_name(s.name))) == s.digest()}
    return [s for s in shards if s.name not in current]


def is_current(out_dir: str | Path, shard: OutputShard) -> bool:
    """Whether ``out_dir`` holds ``shard`` with exactly this content."""
    d = _Dir.of(out_dir)
    try:
        if not d.fs.isfile(d.path(shard.name)):
            return False
        blob = d.fs.cat_file(d.path(_state_name(shard.name)))
    except OSError:
        return False
    return _digest_in(blob) == shard.digest()


def write_shard(shard: OutputShard, refs: dict[str, ShardRef], out_dir: str | Path) -> int:
    """Write one output shard (atomically) into ``out_dir``, a local path or an fsspec URL;
    returns its sample count."""
    d = _Dir.of(out_dir)
    wanted: dict[str, set[int]] = defaultdict(set)
    for item in shard.items:
        wanted[item["shard"]].add(item["index"])
    members = {sid: read_members(refs[sid], idx) for sid, idx in wanted.items()}

    def fill(f: IO[bytes]) -> None:
        writer = wds.TarWriter(f, encoder=False, mtime=0.0)
        try:
            for item in shard.items:
                m = members[item["shard"]][item["index"]]
                sample: dict[str, Any] = {"__key__": item["uid"],
                                          item["image_member"]: m[item["image_member"]]}
                caption = next((m[e] for e in ("txt", "text", "caption") if e in m), None)
                if caption is not None:
                    sample["txt"] = caption
                for rw in item.get("rewrites", ()):
                    if rw["status"] == "ok":
                        sample[f"txt_rw{rw['rewrite']}"] = rw["text"].encode("utf-8")
                sample["json"] = _json_member(m.get("json"), item)
                writer.write(sample)
        finally:
            writer.close()  # also on error: the temporary file is then discarded

    d.write(shard.name, fill)
    # The state goes last: a shard whose state is missing or old is written again.
    d.write_bytes(_state_name(shard.name),
                  json.dumps({"digest": shard.digest(), "samples": len(shard.items)}).encode())
    return len(shard.items)


def _json_member(original: bytes | None, item: dict[str, Any]) -> bytes:
    meta: dict[str, Any] = {}
    if original:
        try:
            loaded = json.loads(original)
            if isinstance(loaded, dict):
                meta = loaded
        except ValueError:
            pass
    meta["uid"] = item["uid"]
    meta["scores"] = item["scores"]
    if "rewrites" in item:
        meta["rewrites"] = item["rewrites"]
    return json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()


def finish(out_dir: str | Path, shards: list[OutputShard]) -> None:
    """Remove shards an earlier write left that ``shards`` no longer has (only those with a
    ``.state`` record: tars this writer did not make are kept), and temporary files of a killed
    local write; write sizes.json (one in the output directory, and one per split directory for
    open_clip)."""
    d = _Dir.of(out_dir)
    keep = {s.name for s in shards}
    files = d.files()
    for name in sorted(files):
        base = posixpath.basename(name)
        if _SHARD_NAME.fullmatch(base) and name not in keep and _state_name(name) in files:
            d.remove(name)
            d.remove(_state_name(name))
        elif d.local and _LEFTOVER.fullmatch(base):
            d.remove(name)
    groups: dict[str | None, dict[str, int]] = {}
    for s in shards:
        groups.setdefault(s.group, {})[s.name.rsplit("/", 1)[-1]] = len(s.items)
    if any(g is not None for g in groups):
        for g, sizes in groups.items():
            d.write_bytes(f"{g}/sizes.json",
                          json.dumps(sizes, indent=1, sort_keys=True).encode())
    d.write_bytes("sizes.json", json.dumps({s.name: len(s.items) for s in shards}, indent=1,
                                           sort_keys=True).encode())
