"""Checking that a store's files are what their names say.

A store file is found by its name (``base/<reader>/<shard>.<digest>.parquet``,
``scores/<label>/<version>/...``), but a name proves nothing: a copy, a sync tool, a disk error
or a bug in another writer can put other bytes under it. Every file therefore carries its
identity (``curate.store.store``), and this module compares the two:

* a Parquet file must open (its footer is whole), and its metadata must name the shard, the
  content digest and the scorer version its name gives; its row count must be the shard's
  sample count (the base file's, or the pool's record);
* each embedding file a scorer's Parquet names must exist with the recorded shape
  ``[rows, dim]`` (a truncated file is caught by its size) and the recorded SHA-256 of its first
  and last rows (another shard's file is caught by its content); a deep check also reads every
  page of the Parquet (Parquet's CRC checksums) and hashes all the embeddings against the
  SHA-256 the scorer recorded.

``damage_of`` checks one shard's files and returns what is wrong; a file whose embeddings are
wrong counts as wrong itself, since a scorer's Parquet is what marks its work done. Scoring
runs the cheap check on every file it would reuse and recomputes what fails it; selection
refuses to read a store with damage; ``curate store verify`` runs the deep check on every file.
Files that predate a key (written by an older curate) are checked on the keys they have.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.store.store import (
    KEY_DIGEST,
    KEY_INFO,
    KEY_SHARD,
    KEY_SIDECARS,
    KEY_VERSION,
    Store,
    shard_key,
)

THREADS = 8  # footers are read on threads: the work is waiting on the disk or the network


@dataclass(frozen=True)
class Damage:
    """One store file that is not what its name says."""

    name: str  # relative to the store
    shard: str  # the shard id its name gives
    problem: str  # e.g. "does not belong to shard 00002.tar (it holds shard 00001.tar's)"
    label: str | None = None  # the scorer whose file it is (None: the reader's base file)

    def line(self) -> str:
        return f"store file {self.name} {self.problem}"


@dataclass(frozen=True)
class ScorerFiles:
    """What a stored scorer version writes per shard: its Parquet and its embedding files."""

    label: str
    version: str
    sidecars: dict[str, int] = field(default_factory=dict)  # embedding column -> dimension


@dataclass(frozen=True)
class ShardFiles:
    """The files of one shard to check: its base file (when ``base``) and the files of
    ``scorers``, for the bytes of content ``digest``."""

    shard: str
    digest: str
    base: bool
    scorers: tuple[ScorerFiles, ...] = ()
    samples: int | None = None  # the pool's record of its sample count, when known


def _short(d: str | None) -> str:
    return f"{d[:12]}…" if d else "?"


def _footer(store: Store, name: str) -> tuple[pq.FileMetaData | None, str | None]:
    try:
        if store.dir.local:
            return pq.read_metadata(store.dir.path(name)), None
        with store.dir.open(name) as f:
            return pq.read_metadata(f), None
    except FileNotFoundError:
        return None, "is missing"
    except (OSError, pa.ArrowException, ValueError) as exc:
        return None, f"is unreadable (truncated or not Parquet: {_first_line(exc)})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _read_all(store: Store, name: str) -> str | None:
    """Read every page of a Parquet file, checking the pages' CRCs: the problem, or None."""
    try:
        if store.dir.local:
            pq.read_table(store.dir.path(name), page_checksum_verification=True)
        else:
            with store.dir.open(name) as f:
                pq.read_table(f, page_checksum_verification=True)
    except (OSError, pa.ArrowException, ValueError) as exc:
        return f"is unreadable (a damaged page: {_first_line(exc)})"
    return None


def _identity(meta: dict[bytes, bytes], shard: str, digest: str,
              version: str | None) -> str | None:
    """What in the metadata contradicts the name, or None."""
    recorded = meta.get(KEY_SHARD, b"").decode() or None
    if recorded is not None and shard_key(recorded) != shard_key(shard):
        return f"does not belong to shard {shard} (it holds shard {recorded}'s)"
    got = meta.get(KEY_DIGEST, b"").decode() or None
    if got is not None and got != digest:
        return (f"does not belong to shard {shard} as stored (it was computed from content "
                f"{_short(got)}, its name says {_short(digest)})")
    got = meta.get(KEY_VERSION, b"").decode() or None
    if version is not None and got is not None and got != version:
        return f"is scorer version {got}'s, not {version}'s"
    return None


def array_sha256(mat: np.ndarray) -> str:
    """SHA-256 of an embedding matrix's values (C order, as ``.npy`` stores them)."""
    return hashlib.sha256(np.ascontiguousarray(mat).data).hexdigest()


def edges_sha256(mat: np.ndarray) -> str:
    """SHA-256 of an embedding matrix's first and last rows: a check cheap enough for every
    scoring pass, that tells one shard's embeddings from another's."""
    return array_sha256(np.concatenate([mat[:1], mat[-1:]])) if len(mat) else array_sha256(mat)


def sidecar_record(mat: np.ndarray) -> dict[str, Any]:
    """What a scorer's Parquet records of one of its embedding files."""
    rows, dim = (int(mat.shape[0]), int(mat.shape[1])) if mat.ndim == 2 else (len(mat), 0)
    return {"rows": rows, "dim": dim, "sha256": array_sha256(mat), "edges": edges_sha256(mat)}


# numpy parses a .npy header with ast.literal_eval, and CPython 3.11's parser is not safe to
# run on several threads at once ("AST constructor recursion depth mismatch"): headers are
# parsed one at a time (the data is mapped, or was fetched, outside the lock).
_NPY_HEADER = threading.Lock()


def _load_npy(store: Store, name: str) -> np.ndarray:
    if store.dir.local:
        with _NPY_HEADER:
            return np.load(store.dir.path(name), mmap_mode="r", allow_pickle=False)
    data = store.dir.read_bytes(name)
    with _NPY_HEADER:
        return np.load(io.BytesIO(data), allow_pickle=False)


def _check_sidecar(store: Store, name: str, rows: int | None, dim: int | None,
                   rec: dict[str, Any], deep: bool) -> str | None:
    try:
        mat = _load_npy(store, name)
    except FileNotFoundError:
        return "is missing"
    except (OSError, ValueError, EOFError) as exc:
        return f"is unreadable (truncated or not .npy: {_first_line(exc)})"
    shape = tuple(mat.shape)
    want = (rows if rows is not None else shape[0], dim if dim is not None else
            (shape[1] if len(shape) == 2 else None))
    if len(shape) != 2 or shape != want:
        return f"holds an array of shape {shape}, not {want}"
    differs = "does not hold the embeddings its scorer recorded (their SHA-256 differs)"
    if rec.get("edges") is not None and edges_sha256(mat) != rec["edges"]:
        return differs
    if deep and rec.get("sha256") is not None and array_sha256(mat) != rec["sha256"]:
        return differs
    return None


def damage_of(store: Store, reader: str, files: ShardFiles, deep: bool = False,
              ) -> list[Damage]:
    """What is wrong with one shard's files (empty: nothing)."""
    key = shard_key(files.shard)
    out: list[Damage] = []
    rows = files.samples
    if files.base:
        name = Store.base_name(reader, key, files.digest)
        md, problem = _footer(store, name)
        if md is not None:
            meta = md.metadata or {}
            problem = _identity(meta, files.shard, files.digest, None)
            if problem is None and meta.get(KEY_INFO):
                try:
                    info = json.loads(meta[KEY_INFO])
                except ValueError:
                    info = {}
                owner = info.get("shard") if isinstance(info, dict) else None
                if owner and shard_key(str(owner)) != key:
                    problem = (f"does not belong to shard {files.shard} (it holds shard "
                               f"{owner}'s)")
            if problem is None and rows is not None and md.num_rows != rows:
                problem = f"holds {md.num_rows} rows; the shard has {rows} samples"
            if problem is None:
                rows = md.num_rows
            if problem is None and deep:
                problem = _read_all(store, name)
        if problem is not None:
            out.append(Damage(name, files.shard, problem))
    for s in files.scorers:
        name = Store.score_name(s.label, s.version, key, files.digest)
        md, problem = _footer(store, name)
        recorded: dict[str, Any] = {}
        if md is not None:
            meta = md.metadata or {}
            problem = _identity(meta, files.shard, files.digest, s.version)
            if problem is None and rows is not None and md.num_rows != rows:
                problem = f"holds {md.num_rows} rows; the shard has {rows} samples"
            if problem is None and meta.get(KEY_SIDECARS):
                try:
                    recorded = json.loads(meta[KEY_SIDECARS])
                except ValueError:
                    problem = "has unreadable metadata"
            if problem is None and deep:
                problem = _read_all(store, name)
        if problem is not None:
            out.append(Damage(name, files.shard, problem, s.label))
            continue
        for col in sorted(set(s.sidecars) | set(recorded)):
            dim = s.sidecars.get(col)
            rec = recorded.get(col) or {}
            side = Store.sidecar_name(s.label, s.version, col, key, files.digest)
            problem = _check_sidecar(store, side, rec.get("rows", rows), rec.get("dim", dim),
                                     rec, deep)
            if problem is not None:
                # Its Parquet marks the scorer's work on the shard done: it goes with it.
                out.append(Damage(side, files.shard, problem, s.label))
                out.append(Damage(name, files.shard, f"names the damaged embeddings {side}",
                                  s.label))
                break
    return out


def damage_many(store: Store, reader: str, shards: Iterable[ShardFiles], deep: bool = False,
                threads: int = THREADS, done: Callable[[], None] | None = None,
                ) -> list[Damage]:
    """``damage_of`` for many shards, on threads; in the order given."""
    def one(files: ShardFiles) -> list[Damage]:
        got = damage_of(store, reader, files, deep)
        if done is not None:
            done()
        return got

    items = list(shards)
    if len(items) <= 1:
        return [d for f in items for d in one(f)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return [d for found in pool.map(one, items) for d in found]


def repair_hint(location: str) -> str:
    """What repairs damaged files of the store at ``location``."""
    return (f"curate store verify --repair {location} removes them; then run the `curate "
            "score` (or `curate run`) command that filled the store again: it recomputes "
            "exactly those")


def summary(damage: Sequence[Damage], limit: int = 3) -> str:
    """``store file X ...`` for the first ``limit`` files, and how many more."""
    lines = [d.line() for d in damage[:limit]]
    more = len(damage) - limit
    return "; ".join(lines) + (f"; and {more} more" if more > 0 else "")


@dataclass
class Verified:
    """What ``verify_store`` found."""

    files: int = 0  # store files checked (Parquet and embeddings)
    shards: int = 0  # (shard, content) pairs they describe
    damage: list[Damage] = field(default_factory=list)
    records: list[str] = field(default_factory=list)  # store.json / pool.parquet problems
    removed: list[str] = field(default_factory=list)  # with repair: what was removed


def verify_store(store: Store, repair: bool = False,
                 done: Callable[[int, int], None] | None = None) -> Verified:
    """Check every file of ``store`` deeply: its records (``store.json``, ``pool.parquet``),
    and every base and scorer file with its embeddings, of every stored version and content
    (not only the pool as last scored). With ``repair``, what is damaged is removed (a damaged
    record is kept beside as ``<name>.damaged``), so that the next scoring pass recomputes it."""
    from curate.errors import CurateError
    from curate.store.store import META, POOL, StoreMeta

    out = Verified()
    try:
        meta = store.meta()
    except CurateError as exc:
        out.records.append(exc.message)
        meta = StoreMeta()
        if repair and store.dir.isfile(META):
            store.dir.write_bytes(META + ".damaged", store.dir.read_bytes(META))
            store.dir.remove(META)
            out.removed.append(f"{META} (kept as {META}.damaged)")
    try:
        pool = store.pool()
    except CurateError as exc:
        out.records.append(exc.message)
        pool = []
        if repair:
            store.dir.write_bytes(POOL + ".damaged", store.dir.read_bytes(POOL))
            store.dir.remove(POOL)
            out.removed.append(f"{POOL} (kept as {POOL}.damaged)")
    by_key = {shard_key(p.shard): p for p in pool}
    sidecars: dict[tuple[str, str], dict[str, int]] = {}
    for label, entry in meta.scorers.items():
        for version, d in entry.get("versions", {}).items():
            sidecars[(label, version)] = dict(d.get("sidecars", {}))
    jobs: dict[tuple[str, str, str], dict[str, Any]] = {}  # (reader, key, digest) -> files

    def job(reader: str, key: str, digest: str) -> dict[str, Any]:
        return jobs.setdefault((reader, key, digest), {"base": False, "scorers": []})

    readers = [r for r in _subdirs(store, "base")]
    for reader in readers:
        for key, digests in store.stored(f"base/{reader}").items():
            for digest in digests:
                job(reader, key, digest)["base"] = True
    reader_of = {v: d.get("reader") for e in meta.scorers.values()
                 for v, d in e.get("versions", {}).items()}
    for label in _subdirs(store, "scores"):
        for version in _subdirs(store, f"scores/{label}"):
            reader = reader_of.get(version) or meta.reader or (readers[0] if readers else "")
            for key, digests in store.stored(f"scores/{label}/{version}").items():
                for digest in digests:
                    job(reader, key, digest)["scorers"].append(
                        ScorerFiles(label, version, sidecars.get((label, version), {})))
    total = len(jobs)
    count = [0]

    def tick() -> None:
        count[0] += 1
        if done is not None:
            done(count[0], total)

    for reader in sorted({r for r, _, _ in jobs}):
        items = []
        for (r, key, digest), f in sorted(jobs.items()):
            if r != reader:
                continue
            rec = by_key.get(key)
            shard = rec.shard if rec is not None else key
            samples = rec.samples if rec is not None and rec.digest == digest else None
            items.append(ShardFiles(shard, digest, f["base"], tuple(f["scorers"]), samples))
            out.files += int(f["base"]) + sum(1 + len(sc.sidecars) for sc in f["scorers"])
        out.damage.extend(damage_many(store, reader, items, deep=True, done=tick))
    out.shards = total
    if repair:
        for name in sorted({d.name for d in out.damage}):
            store.dir.remove(name)
            out.removed.append(name)
    return out


def _subdirs(store: Store, sub: str) -> list[str]:
    """The directories directly in ``sub`` of the store."""
    try:
        entries = store.dir.fs.ls(store.dir.path(sub), detail=True)
    except FileNotFoundError:
        return []
    return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries
                  if e.get("type") == "directory")
