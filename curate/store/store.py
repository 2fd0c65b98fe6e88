"""The scored pool store: every score of every input shard, kept per scorer and reused by
identity.

A store is a directory (a local path or an fsspec URL such as ``s3://bucket/pool`` or
``file:///shared/pool``)::

    store.json                                   every scorer version stored, the current one
    pool.parquet                                 the pool as last scored: one row per shard
    base/<reader>/<shard>.<digest>.parquet       what the reader found: uid, key, url, caption,
                                                 image_sha256, status ... (one row per sample)
    scores/<label>/<version>/<shard>.<digest>.parquet          one scorer's columns
    scores/<label>/<version>/<column>/<shard>.<digest>.npy     its embeddings (float16)
    download/                                    URL lists, downloaded by img2dataset
    log.jsonl                                    one JSON line per scoring event
    rewrite_cache.sqlite                         cached caption rewrites (shared by selections)

* ``<shard>`` is the shard id (its path relative to the pool root) without ``.tar``, with ``%``
  and ``/`` percent-encoded; ``<digest>`` is the shard's content identity
  (``curate.store.identity``). A file is therefore found only for the bytes it describes.
* ``<reader>`` fingerprints the reader's settings (``input.max_member_bytes``); ``<version>``
  fingerprints a scorer: its name, code version, parameters (and local weights), the reader's
  fingerprint and the versions of the scorers whose outputs it reads. Changing a scorer's
  parameters makes a new version and new versions of the scorers that read it; every other
  scorer's files are reused. Old versions stay (nothing is deleted); ``store.json`` records
  each version's parameters and which one is current.
* Every scorer file has one row per sample of its shard, in shard order, with ``__status``
  (``ok``, ``error``, ``skipped``: an input it needs failed) and ``__error`` beside its columns.
  An embedding file holds float16 ``[samples, dim]``, NaN rows where the scorer did not succeed.
* Every file carries its identity, and readers check it rather than trust the name
  (``curate.store.verify``): a Parquet's metadata holds the shard id, the shard digest, the
  scorer version and the scorer's counters (its row count is the footer's), and its pages carry
  CRC checksums; a scorer's Parquet also records the shape and SHA-256 of each of its
  embedding files. A file that does not match is treated as missing: scoring recomputes it,
  selection refuses it, ``curate store verify`` lists it.
* Every file is written atomically; a scorer's embeddings are written before its Parquet, so
  an existing Parquet means the scorer's work on that shard is complete.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from curate.errors import CurateError
from curate.io.fsdir import PROCESS_LOCAL, FsDir, is_url, protocols, resolve
from curate.io.rundir import READ_ONLY, DirLock

log = logging.getLogger("curate")

FORMAT = 1
META = "store.json"
POOL = "pool.parquet"
LOG = "log.jsonl"
STATUS = "__status"
ERROR = "__error"
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

# Metadata keys of the files in a store.
KEY_VERSION = b"curate.version"
KEY_DIGEST = b"curate.digest"
KEY_STAMP = b"curate.stamp"
KEY_INFO = b"curate.info"  # JSON: counters (scorer files) or the read report (base files)
KEY_SHARD = b"curate.shard"  # the shard id the file describes
KEY_SIDECARS = b"curate.sidecars"  # JSON (scorer files): column -> rows, dim, sha256 of its .npy


def shard_key(shard_id: str) -> str:
    """The file name stem of a shard id: ``.tar`` dropped, ``%`` and ``/`` percent-encoded (an
    injective mapping, so two shards never share files)."""
    stem = shard_id[:-4] if shard_id.endswith(".tar") else shard_id
    return stem.replace("%", "%25").replace("/", "%2F")


def schema_to_text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_from_text(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


@dataclass(frozen=True)
class Version:
    """One stored version of a scorer."""

    label: str  # the scorer's name in columns and counters (e.g. clip_b32)
    version: str  # its fingerprint (see the module docs)
    name: str  # the registered scorer name (e.g. clip)
    params: dict[str, Any]
    reads: dict[str, str]  # label -> version of each scorer whose outputs it reads
    reader: str  # the reader fingerprint it was computed over
    schema: pa.Schema  # the columns it stores in its Parquet (without __status / __error)
    sidecars: dict[str, int]  # embedding column -> dimension
    first_scored: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "reads": self.reads,
                "reader": self.reader, "schema": schema_to_text(self.schema),
                "sidecars": self.sidecars, "first_scored": self.first_scored}

    @classmethod
    def from_json(cls, label: str, version: str, d: dict[str, Any]) -> Version:
        return cls(label=label, version=version, name=d["name"], params=d["params"],
                   reads=d["reads"], reader=d["reader"], schema=schema_from_text(d["schema"]),
                   sidecars=d["sidecars"], first_scored=d.get("first_scored", ""))

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)


@dataclass
class PoolShard:
    """One input shard of the pool as last scored (a row of ``pool.parquet``)."""

    shard: str
    url: str
    failures: str | None = None  # img2dataset's Parquet beside a downloaded shard
    stamp: str | None = None
    digest: str | None = None
    samples: int | None = None
    status: str = "done"  # done | truncated | damaged | failed
    read_error: str | None = None
    attempts: int = 0
    seconds: float | None = None  # seconds of its last scoring
    node: str | None = None  # Ray node of its last scoring
    error: str | None = None  # failed: the error of the last attempt
    # "read" and "<label>@<version>" -> that stage's counters on this shard
    counters: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return shard_key(self.shard)


POOL_SCHEMA = pa.schema({
    "shard": pa.string(), "url": pa.string(), "failures": pa.string(), "stamp": pa.string(),
    "digest": pa.string(), "samples": pa.int64(), "status": pa.string(),
    "read_error": pa.string(), "attempts": pa.int32(), "seconds": pa.float64(),
    "node": pa.string(), "error": pa.string(), "counters": pa.string()})


@dataclass
class StoreMeta:
    """The content of ``store.json``."""

    scorers: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> entry
    order: list[str] = field(default_factory=list)
    reader: str | None = None  # the reader fingerprint of the last scoring
    input: dict[str, Any] | None = None  # the input section of the last scoring

    def version(self, label: str, version: str | None = None) -> Version | None:
        entry = self.scorers.get(label)
        if entry is None:
            return None
        v = version or entry["current"]
        d = entry["versions"].get(v)
        return None if d is None else Version.from_json(label, v, d)

    def current(self) -> list[Version]:
        """The current version of every stored scorer, in an order that depends on the
        scorers only, never on the order in which they were added: by label, each after the
        scorers whose outputs it reads. (A selection that does not name its scorers reads them
        in this order, which decides the error stage of a sample that fails in several.)"""
        found = {label: self.version(label) for label in sorted(self.scorers)}
        todo = {k: v for k, v in found.items() if v is not None}
        out: list[Version] = []
        while todo:
            ready = [k for k, v in todo.items() if not (set(v.reads) & set(todo))]
            for k in ready or sorted(todo)[:1]:  # (a cycle cannot be stored; never stall)
                out.append(todo.pop(k))
        return out


class Store:
    """A scored pool store (see the module docs)."""

    def __init__(self, location: str | Path) -> None:
        text = str(location)
        if not text.strip():
            raise CurateError("the store location is empty", "give a path or a URL")
        self.location = resolve(text)
        if is_url(self.location) and protocols(self.location) & PROCESS_LOCAL:
            raise CurateError(f"store {self.location}: memory:// lives in one process, and "
                              "every scoring worker must read and write the store",
                              "use a local path, file:// (a mount every node sees) or an "
                              "object store (s3://...)")
        self.dir = FsDir.of(self.location)

    def __repr__(self) -> str:
        return f"Store({self.location!r})"

    @property
    def shared(self) -> bool:
        """Whether every node of a cluster sees the store: a URL (``file://`` for a shared
        mount, or an object store). A plain path may exist on the driver's machine only."""
        return is_url(self.location)

    @property
    def local_root(self) -> Path | None:
        return Path(self.dir.root) if self.dir.local else None

    def exists(self) -> bool:
        return self.dir.isfile(META)

    # -- names ----------------------------------------------------------------------------

    @staticmethod
    def base_name(reader: str, key: str, digest: str) -> str:
        return f"base/{reader}/{key}.{digest}.parquet"

    @staticmethod
    def score_name(label: str, version: str, key: str, digest: str) -> str:
        return f"scores/{label}/{version}/{key}.{digest}.parquet"

    @staticmethod
    def sidecar_name(label: str, version: str, column: str, key: str, digest: str) -> str:
        return f"scores/{label}/{version}/{column}/{key}.{digest}.npy"

    def stored(self, sub: str) -> dict[str, set[str]]:
        """Shard key -> the digests that ``sub`` (``base/<reader>`` or
        ``scores/<label>/<version>``) holds a Parquet for: one listing, no file opened."""
        out: dict[str, set[str]] = {}
        for name in self.dir.listdir(sub):
            if not name.endswith(".parquet") or name.startswith("."):
                continue
            stem = name[: -len(".parquet")]
            key, dot, digest = stem.rpartition(".")
            if dot and len(digest) == 64:
                out.setdefault(key, set()).add(digest)
        return out

    # -- store.json -----------------------------------------------------------------------

    def meta(self, damaged_ok: bool = False) -> StoreMeta:
        """``store.json``. A damaged one is an error, or with ``damaged_ok`` (scoring, which
        records its scorers anew) a warning: it is kept beside as ``store.json.damaged`` and
        an empty record is returned."""
        if not self.dir.isfile(META):
            return StoreMeta()
        try:
            d = json.loads(self.dir.read_bytes(META))
            if not isinstance(d, dict) or not isinstance(d.get("scorers", {}), dict) or not \
                    isinstance(d.get("order", []), list):
                raise ValueError("not a store record")
        except (ValueError, UnicodeDecodeError) as exc:
            problem = f"{self.location}/{META} is damaged (not a store record: {exc})"
            if damaged_ok:
                self.dir.write_bytes(META + ".damaged", self.dir.read_bytes(META))
                self.dir.remove(META)
                log.warning("%s: kept as %s.damaged; this pass records its scorers anew "
                            "(versions it does not use are no longer listed)", problem, META)
                return StoreMeta()
            raise CurateError(problem, "run the `curate score` (or `curate run`) command that "
                              "filled the store again: it records its scorers anew and "
                              "recomputes nothing that is intact (or restore the file)"
                              ) from None
        if d.get("format") != FORMAT:
            raise CurateError(f"{self.location} is a store of format {d.get('format')!r}; "
                              f"this curate reads format {FORMAT}",
                              "score into a new store")
        return StoreMeta(scorers=d.get("scorers", {}), order=d.get("order", []),
                         reader=d.get("reader"), input=d.get("input"))

    def save_meta(self, meta: StoreMeta) -> None:
        d = {"format": FORMAT, "reader": meta.reader, "input": meta.input,
             "order": meta.order, "scorers": meta.scorers}
        self.dir.write_bytes(META, json.dumps(d, indent=1, sort_keys=True).encode())

    def register(self, versions: list[Version], reader: str,
                 input_section: dict[str, Any] | None) -> StoreMeta:
        """Record ``versions`` (making each its label's current version) and the reader."""
        meta = self.meta(damaged_ok=True)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for v in versions:
            if not _LABEL.fullmatch(v.label):
                raise CurateError(f"scorer label {v.label!r} cannot name a store directory",
                                  "use letters, digits, '_', '-' and '.'")
            entry = meta.scorers.setdefault(v.label, {"current": v.version, "versions": {}})
            entry["current"] = v.version
            if v.version not in entry["versions"]:
                entry["versions"][v.version] = {**v.to_json(), "first_scored": now}
            if v.label not in meta.order:
                meta.order.append(v.label)
        meta.reader = reader
        meta.input = input_section
        self.save_meta(meta)
        return meta

    # -- pool.parquet ---------------------------------------------------------------------

    def pool(self, damaged_ok: bool = False) -> list[PoolShard]:
        """The pool as last scored, in pool order (empty for a new store). A damaged
        ``pool.parquet`` is an error, or with ``damaged_ok`` (scoring, which rebuilds it from
        the store's files) a warning and an empty pool."""
        if not self.dir.isfile(POOL):
            return []
        try:
            table = self.dir.read_parquet(POOL)
            missing = [n for n in ("shard", "url", "digest") if n not in table.column_names]
            if missing:
                raise ValueError(f"no column {missing[0]!r}")
            out = []
            for r in table.to_pylist():
                r["counters"] = json.loads(r.get("counters") or "{}")
                out.append(PoolShard(**{k: r.get(k) for k in POOL_SCHEMA.names}))
        except (OSError, ValueError, TypeError, pa.ArrowException) as exc:
            problem = (f"{self.location}/{POOL} (the pool as last scored) is damaged: "
                       f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc!r}")
            if damaged_ok:
                log.warning("%s: rebuilt by this pass from the store's files", problem)
                return []
            raise CurateError(problem, "run the `curate score` (or `curate run`) command that "
                              "filled the store again: it rebuilds it from the store's files "
                              "and recomputes nothing that is intact") from None
        return out

    def write_pool(self, shards: list[PoolShard]) -> None:
        rows = [{**asdict(s), "counters": json.dumps(s.counters, sort_keys=True)}
                for s in shards]
        self.dir.write_parquet(POOL, pa.Table.from_pylist(rows, schema=POOL_SCHEMA))

    # -- locking and logging ----------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive scoring: ``DirLock`` on ``STORE/.lock`` for a local store (released by the
        kernel when the holder dies). A store on a URL is not locked: run one scoring into it
        at a time."""
        root = self.local_root
        if root is None:
            yield
            return
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno not in READ_ONLY:
                raise
            raise CurateError(f"the store {self.location} cannot be created here "
                              f"({os.strerror(exc.errno or 0).lower()})",
                              "give --store (or the pipeline's store:) a writable path") from None
        with DirLock(root, f"is scoring into the store {self.location}",
                     "wait for it to end: two scorings into one store would compute the same "
                     "scores twice", "the store"):
            yield
