"""Search a store's pool or a selection by text, by image or by uid, over the stored embeddings.

What clip-retrieval does for LAION, over the embeddings the ``clip`` scorer already stored
(``clip_image_emb<suffix>``, ``clip_text_emb<suffix>``): no image embedding is computed again.

* **What is searched** (``open_corpus``): a store (a directory holding ``store.json``): every
  sample of its pool, with the current version of the scorer that stores the column; or a
  selection (its directory, or the ``--out`` of ``curate run``): its kept rows (``rows="all"``:
  every row of its manifest), with the scorer version the selection used (``selection.json``)
  and the shards it selected from (``shards.parquet``). Samples without the embedding (failed
  or skipped by the scorer) are not indexed.
* **The index** (``ensure_index``, built by ``curate.audit.knn_index``: exact up to
  ``EXACT_MAX_ROWS`` rows, IVF-PQ sized by a memory budget beyond) lives under the store or the
  selection, in ``search/<rows>/<column>/``: ``<identity>.faiss``, ``<identity>.rows.parquet``
  (uid, shard, index of faiss id 0, 1, ...) and ``current.json``, written last. The identity
  is the SHA-256 of what the index covers: the column, the scorer version storing it, every
  shard's content digest in pool order and, for a selection, the uids of its rows in order.
  A search reuses the index when the identity is the same (and the kind or budget asked for,
  if any, is the one it has); otherwise it builds a new one, says why, and removes the old
  one.
* **Queries**: ``text`` is encoded by the text tower of the same CLIP that made the
  embeddings (the store's record of that scorer version: its ``model`` and ``pretrained``,
  loaded with ``curate.lib.clip_model`` as the scorer loads it); ``image`` (a file's bytes) by
  its image tower and the scorer's own preprocessing (``curate.lib.imaging.FastPreprocess``),
  so a photo of the pool finds its own samples first; ``uid`` uses that sample's stored
  embedding. Embeddings are L2-normalised, so a score is a cosine. An IVF-PQ search fetches
  ``RERANK`` × k candidates and scores them again exactly on the stored embeddings, so the
  scores shown are exact cosines.
* **Hits** (``search``): a polars DataFrame, one row per hit: rank, score, uid, then the
  selection's manifest row (kept, reason, caption, every score) or, for a store, the sample's
  base columns (caption, url, shard, key, index, status...). ``write_html`` writes a page of
  thumbnails read from the input shards (``curate.io.shards.read_members``, as the report).
"""

from __future__ import annotations

import hashlib
import html
import itertools
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.audit.knn_index import (
    DEFAULT_MEMORY,
    DEFAULT_NPROBE,
    IndexPlan,
    build_index,
    load_index,
    parse_memory,
    plan_index,
    save_index,
    search_index,
)
from curate.errors import CurateError
from curate.io.dataset import manifest_path, read_table, scan_sql
from curate.io.fsdir import FsDir, is_url
from curate.io.rundir import READ_ONLY
from curate.store.store import Store, Version, shard_key

log = logging.getLogger("curate")

if TYPE_CHECKING:
    import polars

RowSet = Literal["pool", "kept", "all"]
IndexChoice = Literal["auto", "exact", "ivfpq"]
DEFAULT_COLUMN = "clip_image_emb"
RERANK = 4  # an approximate index returns RERANK × k candidates, scored again exactly
STAMP_FORMAT = 1


@dataclass(frozen=True)
class ShardInfo:
    shard: str
    url: str
    failures: str | None
    digest: str


@dataclass
class Corpus:
    """What a search reads: a store's pool, or a selection's rows (see the module docs)."""

    kind: Literal["store", "selection"]
    location: str  # the store, or the selection directory
    store: Store
    reader: str
    shards: list[ShardInfo]  # pool order
    versions: list[Version]
    rows: RowSet
    sel_dir: Path | None = None
    _candidates: pa.Table | None = field(default=None, repr=False)

    @property
    def dir(self) -> FsDir:
        """Where its indices live: the store, or the selection directory."""
        return self.store.dir if self.sel_dir is None else FsDir.of(self.sel_dir)

    def embedding_columns(self) -> dict[str, Version]:
        return {c: v for v in self.versions for c in v.sidecars}

    def version_of(self, column: str) -> Version:
        cols = self.embedding_columns()
        if column in cols:
            return cols[column]
        what = "selection" if self.kind == "selection" else "store"
        if not cols:
            raise CurateError(f"the {what} {self.location} has no stored embeddings",
                              "score it with `- clip` (embeddings are on unless "
                              "`embeddings: false`), then search again")
        import difflib

        near = difflib.get_close_matches(column, list(cols), n=1)
        raise CurateError(f"the {what} {self.location} has no embedding column {column!r}"
                          + (f" (did you mean {near[0]!r}?)" if near else ""),
                          f"stored embeddings: {', '.join(sorted(cols))}")

    def digests(self) -> dict[str, str]:
        return {s.shard: s.digest for s in self.shards}

    def candidates(self) -> pa.Table:
        """uid, shard, index of every row the search covers, in pool order (before rows
        without the embedding are left out)."""
        if self._candidates is None:
            self._candidates = self._read_candidates()
        return self._candidates

    def _read_candidates(self) -> pa.Table:
        if self.sel_dir is not None:
            t = read_table(manifest_path(self.sel_dir), ["uid", "shard", "index", "kept"])
            if self.rows == "kept":
                t = t.filter(t.column("kept"))
            return t.select(["uid", "shard", "index"])
        parts = []
        for s in self.shards:
            base = self.store.dir.read_parquet(Store.base_name(self.reader, shard_key(s.shard),
                                                               s.digest), ["uid", "index"])
            parts.append(pa.table({"uid": base.column("uid"),
                                   "shard": pa.array([s.shard] * len(base), pa.string()),
                                   "index": base.column("index")}))
        return pa.concat_tables(parts) if parts else pa.table(
            {"uid": pa.array([], pa.string()), "shard": pa.array([], pa.string()),
             "index": pa.array([], pa.int32())})

    def shard_files(self) -> dict[str, ShardInfo]:
        return {s.shard: s for s in self.shards}

    def metadata(self, hits: pa.Table) -> polars.DataFrame:
        """``hits`` (rank, uid, score) joined with the selection's manifest, or with the base
        rows of the store, in rank order."""
        import duckdb

        con = duckdb.connect()
        try:
            con.register("hits", hits)
            if self.sel_dir is not None:
                src = scan_sql(manifest_path(self.sel_dir))
                lead = "m.uid, m.kept, m.reason, m.caption"
                rest = "m.* EXCLUDE (uid, kept, reason, caption)"
            else:
                wanted = sorted(set(hits.column("shard").to_pylist()))
                info = self.shard_files()
                tables = [self.store.dir.read_parquet(Store.base_name(
                    self.reader, shard_key(sid), info[sid].digest)) for sid in wanted]
                con.register("base", pa.concat_tables(tables) if tables else pa.table(
                    {"uid": pa.array([], pa.string()), "caption": pa.array([], pa.string())}))
                src = "base"
                lead = "m.uid, m.caption"
                rest = "m.* EXCLUDE (uid, caption)"
            return con.sql(f"SELECT h.rank, h.score, {lead}, {rest} FROM hits h "
                           f"JOIN {src} m USING (uid) ORDER BY h.rank").pl()
        finally:
            con.close()

    def locate(self, uid: str) -> tuple[str, int] | None:
        """(shard, index) of the sample ``uid`` anywhere in the pool searched."""
        t = self.candidates()
        if self.sel_dir is not None and self.rows == "kept":
            t = read_table(manifest_path(self.sel_dir), ["uid", "shard", "index"])
        import pyarrow.compute as pc

        at = pc.index(t.column("uid"), uid).as_py()
        if at < 0:
            return None
        return str(t.column("shard")[at].as_py()), int(t.column("index")[at].as_py())


def open_corpus(path: str | Path, rows: RowSet | None = None) -> Corpus:
    """The store at ``path`` (a directory holding ``store.json``, or a URL), or the selection
    it names (``curate.audit.catalog.resolve_selection``); ``rows`` for a selection: ``kept``
    (default) or ``all``."""
    text = str(path)
    if is_url(text) or (Path(text) / "store.json").is_file():
        if rows not in (None, "pool"):
            raise CurateError(f"{text} is a store: it has no selection, so no kept rows",
                              "search a selection directory for its kept rows, or drop "
                              "--all / rows=")
        return _store_corpus(Store(text))
    from curate.audit.catalog import resolve_selection

    sel = resolve_selection(text)
    if rows not in (None, "kept", "all"):
        raise CurateError(f"rows={rows!r}: a selection searches its kept rows or all its rows")
    return _selection_corpus(sel, rows or "kept")


def _store_corpus(store: Store) -> Corpus:
    from curate.select.pool import PoolSource

    source = PoolSource.of(store)
    shards = [ShardInfo(s.shard, s.url, s.failures, s.digest) for s in source.shards
              if s.digest is not None]
    return Corpus("store", store.location, store, source.reader, shards, source.versions,
                  "pool")


def _selection_corpus(sel: Path, rows: RowSet) -> Corpus:
    record_path = sel / "selection.json"
    if not record_path.is_file():
        raise CurateError(f"{sel} has no selection.json: it does not say which store it "
                          "selected from", "select again with this curate")
    record = json.loads(record_path.read_text())
    candidates = [record.get("store")]
    if record.get("store_relative"):
        candidates.append(str((sel / record["store_relative"]).resolve()))
    store = next((Store(c) for c in candidates if c and Store(c).exists()), None)
    if store is None:
        raise CurateError(f"the store this selection read ({record.get('store')}) is not "
                          "there", "search needs the store's embeddings: move the store "
                          "back, or search the store itself")
    meta = store.meta()
    versions = []
    for s in record.get("scorers", []):
        v = meta.version(s["label"], s["version"])
        if v is not None:
            versions.append(v)
    t = pq.read_table(sel / "shards.parquet", columns=["shard", "url", "failures", "digest"])
    shards = [ShardInfo(r["shard"], r["url"], r["failures"], r["digest"])
              for r in t.to_pylist() if r["digest"]]
    return Corpus("selection", str(sel), store, record.get("reader") or meta.reader or "",
                  shards, versions, rows, sel_dir=sel)


# -- the vectors of a corpus --------------------------------------------------------------


@dataclass
class StoredVectors:
    """A ``VectorSource`` over one embedding column of some rows of a corpus, read from the
    store shard by shard (memory-mapped), L2-normalised."""

    corpus: Corpus
    column: str
    parts: list[tuple[str, np.ndarray]]  # (shard, positions in it), pool order

    def __post_init__(self) -> None:
        self._reader = _sidecars(self.corpus, self.column)
        sizes = [len(p) for _, p in self.parts]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.rows = int(self.offsets[-1])
        self.dim = int(self.corpus.version_of(self.column).sidecars[self.column])

    def _block(self, sid: str, positions: np.ndarray) -> np.ndarray:
        mat = self._reader.shard(self.column, sid)
        from curate.audit.knn_index import normalised

        return normalised(mat[positions])

    def take(self, positions: np.ndarray) -> np.ndarray:
        out = np.empty((len(positions), self.dim), dtype=np.float32)
        part = np.searchsorted(self.offsets, positions, side="right") - 1
        for p in np.unique(part):
            sel = np.flatnonzero(part == p)
            sid, local = self.parts[p]
            out[sel] = self._block(sid, local[positions[sel] - self.offsets[p]])
        return out

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        for sid, local in self.parts:
            for start in range(0, len(local), size):
                yield self._block(sid, local[start:start + size])


def _sidecars(corpus: Corpus, column: str) -> Any:
    from curate.store.embeddings import SidecarReader

    v = corpus.version_of(column)
    return SidecarReader(corpus.store, {column: (v.label, v.version)}, corpus.digests())


def embedded_rows(corpus: Corpus, columns: Sequence[str]) -> tuple[pa.Table, list[
        tuple[str, np.ndarray]]]:
    """The candidate rows that have every one of ``columns`` (a NaN row is a sample the
    scorer did not embed), and their (shard, positions) parts in pool order."""
    cand = corpus.candidates()
    readers = {c: _sidecars(corpus, c) for c in columns}
    shards = cand.column("shard").to_numpy(zero_copy_only=False)
    index = cand.column("index").to_numpy()
    keep = np.zeros(len(cand), dtype=bool)
    parts: list[tuple[str, np.ndarray]] = []
    if len(cand):
        change = np.flatnonzero(shards[1:] != shards[:-1]) + 1
        bounds = np.concatenate([[0], change, [len(cand)]])
        for a, b in itertools.pairwise(bounds):
            sid = str(shards[a])
            pos = index[a:b].astype(np.int64)
            ok = np.ones(b - a, dtype=bool)
            for c, r in readers.items():
                mat = r.shard(c, sid)
                if len(mat) and pos.max() >= len(mat):
                    raise CurateError(f"the stored {c} of shard {sid} has {len(mat)} rows, "
                                      f"fewer than the rows searched",
                                      "score the pool again into this store")
                ok &= ~np.isnan(np.asarray(mat[pos, 0], dtype=np.float32))
            keep[a:b] = ok
            if ok.any():
                parts.append((sid, pos[ok]))
    return cand.filter(pa.array(keep)), parts


# -- the index -------------------------------------------------------------------------------


@dataclass
class IndexHandle:
    """A loaded index and what it covers."""

    index: Any
    rows: pa.Table  # uid, shard, index of faiss id 0, 1, ...
    plan: IndexPlan
    column: str
    version: Version
    status: Literal["reused", "built"]
    why: str  # why it was built ("" when reused)
    seconds: float  # to build, or to load
    location: str  # its directory

    def describe(self) -> str:
        how = (f"built in {self.seconds:.1f}s ({self.why})" if self.status == "built"
               else f"reused (loaded in {self.seconds:.2f}s)")
        return f"index {self.column}: {self.plan.describe()}, {how}: {self.location}"


def _identity(corpus: Corpus, column: str, version: Version) -> dict[str, Any]:
    shards = hashlib.sha256("\n".join(f"{s.shard}\t{s.digest}" for s in corpus.shards)
                            .encode()).hexdigest()
    stamp: dict[str, Any] = {"format": STAMP_FORMAT, "column": column, "label": version.label,
                             "version": version.version, "reader": corpus.reader,
                             "rows": corpus.rows, "shards": len(corpus.shards),
                             "shards_sha256": shards}
    if corpus.sel_dir is not None:  # the selection's rows (a store's follow from its digests)
        h = hashlib.sha256()
        for chunk in corpus.candidates().column("uid").chunks:
            h.update("\n".join(chunk.to_pylist()).encode())
            h.update(b"\n")
        stamp["uids_sha256"] = h.hexdigest()
    stamp["identity"] = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()
                                       ).hexdigest()[:24]
    return stamp


def _changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    if old.get("format") != new.get("format"):
        return "the index format changed"
    if old.get("version") != new.get("version"):
        return (f"the scorer version changed ({old.get('label')} {old.get('version')} → "
                f"{new.get('version')})")
    if old.get("shards_sha256") != new.get("shards_sha256"):
        return (f"the pool's shards changed ({old.get('shards')} → {new.get('shards')} "
                "shards, or their content digests)")
    if old.get("uids_sha256") != new.get("uids_sha256"):
        return "the selection's rows changed"
    return "what it covers changed"


def ensure_index(corpus: Corpus, column: str = DEFAULT_COLUMN,
                 index: IndexChoice | None = None, memory: str | int | None = None,
                 ) -> IndexHandle:
    """The index of ``column`` over ``corpus``: reused when its stamp matches (and it is of
    the kind and budget asked for), else built and stored (see the module docs)."""
    version = corpus.version_of(column)
    stamp = _identity(corpus, column, version)
    ident = stamp["identity"]
    base = f"search/{corpus.rows}/{column}"
    d = corpus.dir
    where = d.path(base)
    t0 = time.perf_counter()
    why = "no index yet"
    old: dict[str, Any] | None = None
    if d.isfile(f"{base}/current.json"):
        try:
            old = json.loads(d.read_bytes(f"{base}/current.json"))
            plan = IndexPlan.from_json(old["plan"])
        except (ValueError, KeyError, TypeError):
            old = None
            why = "its current.json was unreadable"
    if old is not None:
        same = old.get("identity") == ident
        fits = (index in (None, "auto") or index == plan.kind) and (
            memory is None or parse_memory(memory) == plan.memory)
        files = d.isfile(f"{base}/{ident}.faiss") and d.isfile(f"{base}/{ident}.rows.parquet")
        damaged = None
        if same and fits and files:
            try:
                loaded = load_index(d, f"{base}/{ident}.faiss")
                rows = d.read_parquet(f"{base}/{ident}.rows.parquet")
                return IndexHandle(loaded, rows, plan, column, version, "reused", "",
                                   time.perf_counter() - t0, where)
            except (OSError, RuntimeError, ValueError, pa.ArrowException) as exc:
                # damaged (truncated, overwritten): built again below
                damaged = f"its files were unreadable ({str(exc).strip().splitlines()[0][:120]})"
        if damaged is not None:
            why = damaged
        elif not same:
            why = _changed(old, stamp)
        elif not fits:
            asked = index if index not in (None, "auto") else plan.kind
            why = (f"asked for {asked} with a {memory or DEFAULT_MEMORY} budget; the stored "
                   f"one is {plan.kind} for {plan.memory} bytes")
        else:
            why = "its files were missing"
    rows, parts = embedded_rows(corpus, [column])
    source = StoredVectors(corpus, column, parts)
    if source.rows == 0:
        raise CurateError(f"no row of {corpus.location} has a stored {column} (every sample "
                          "failed or was skipped by the scorer)"
                          if len(corpus.candidates()) else
                          f"{corpus.location} has no rows to search"
                          + (" (nothing was kept)" if corpus.rows == "kept" else ""),
                          "search every row of the selection with --all" if
                          corpus.rows == "kept" else None)
    plan = plan_index(source.rows, source.dim, memory or DEFAULT_MEMORY, index or "auto")
    built = build_index(source, plan)
    seconds = time.perf_counter() - t0
    record = {**stamp, "plan": plan.to_json(), "indexed_rows": source.rows,
              "built_seconds": round(seconds, 3),
              "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        save_index(built, d, f"{base}/{ident}.faiss")
        d.write_parquet(f"{base}/{ident}.rows.parquet", rows)
        d.write_bytes(f"{base}/current.json", json.dumps(record, indent=1).encode())
    except OSError as exc:
        if exc.errno not in READ_ONLY:
            raise
        # A read-only selection or store (an auditor's copy): search it all the same.
        log.warning("the search index was built but not saved (%s is read-only): it is built "
                    "again by the next search", where)
        return IndexHandle(built, rows, plan, column, version, "built", why, seconds, where)
    if old is not None and old.get("identity") not in (None, ident):
        for name in (f"{base}/{old['identity']}.faiss", f"{base}/{old['identity']}.rows.parquet"):
            d.remove(name)
    return IndexHandle(built, rows, plan, column, version, "built", why, seconds, where)


# -- queries ---------------------------------------------------------------------------------


class ClipEncoder:
    """The text and image towers of the CLIP that made a column's embeddings, loaded from
    the store's record of its scorer version, with the scorer's own preprocessing."""

    def __init__(self, version: Version, column: str) -> None:
        if version.name != "clip":
            raise CurateError(f"{column} was made by the {version.name!r} scorer, not by "
                              "clip: there is no CLIP model to encode a text or an image",
                              "search it by --uid (a sample's stored embedding)")
        self.version = version
        self.column = column
        self._loaded: Any = None

    def _load(self) -> Any:
        if self._loaded is not None:
            return self._loaded
        from curate.lib.clip_model import check_weights, load_clip
        from curate.lib.imaging import MAX_PIXELS, FastPreprocess

        p = self.version.params
        model, pretrained = str(p.get("model", "ViT-B-32")), p.get("pretrained")
        try:
            check_weights(model, pretrained)
            loaded = load_clip(model, pretrained)
        except CurateError as exc:
            raise CurateError(
                f"cannot load the CLIP model that made {self.column} ({model}"
                f"{f', pretrained {pretrained}' if pretrained else ''}; scorer "
                f"{self.version.label} version {self.version.version}) to encode the query: "
                f"{exc.message}",
                "the query must be encoded by that same model: make its weights available "
                "at that path (or in the Hugging Face cache), or search by --uid, which "
                "needs no model") from exc
        cfg = loaded.preprocess_cfg
        size = cfg["size"] if isinstance(cfg["size"], (tuple, list)) else (cfg["size"],) * 2
        self._prep = FastPreprocess(loaded.transform, tuple(size),  # type: ignore[arg-type]
                                    cfg.get("resize_mode", "shortest"),
                                    int(p.get("max_pixels") or MAX_PIXELS))
        context = getattr(loaded.tokenizer, "context_length", None) or 77
        from curate.stages.clip import CHARS_PER_TOKEN

        self._chars = CHARS_PER_TOKEN * int(context)
        self._loaded = loaded
        return loaded

    def text(self, text: str) -> np.ndarray:
        import torch

        from curate.stages.base import text_prefix

        loaded = self._load()
        tokens = loaded.tokenizer([text_prefix(text, self._chars)])
        with torch.inference_mode():
            emb = loaded.model.encode_text(tokens)
        return _unit(emb)

    def image(self, data: bytes) -> np.ndarray:
        import torch

        loaded = self._load()
        try:
            tensor = self._prep(data)
        except Exception as exc:
            raise CurateError(f"the query image does not decode: {type(exc).__name__}: "
                              f"{exc}".splitlines()[0], "give a JPEG, PNG or WebP file"
                              ) from exc
        with torch.inference_mode():
            emb = loaded.model.encode_image(tensor.unsqueeze(0))
        return _unit(emb)


def _unit(emb: Any) -> np.ndarray:
    v = emb.float().cpu().numpy().astype(np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


@dataclass
class SearchOutcome:
    """What ``run_search`` found: the hits, the index used and the query."""

    hits: polars.DataFrame
    index: IndexHandle
    query: str
    corpus: Corpus


def run_search(path: str | Path, *, text: str | None = None, image: str | Path | None = None,
               uid: str | None = None, k: int = 20, column: str = DEFAULT_COLUMN,
               rows: RowSet | None = None, index: IndexChoice | None = None,
               memory: str | int | None = None, nprobe: int | None = None,
               corpus: Corpus | None = None) -> SearchOutcome:
    """Search ``path`` (a store or a selection) with exactly one of ``text``, ``image`` (a
    file) or ``uid`` for the ``k`` nearest rows of ``column``."""
    given = [n for n, v in (("text", text), ("image", image), ("uid", uid)) if v is not None]
    if len(given) != 1:
        raise CurateError("give exactly one query: text, image or uid" +
                          (f" (got {', '.join(given)})" if given else ""),
                          "e.g. curate search RUN --text 'a tabby cat'")
    if k < 1:
        raise CurateError(f"k must be at least 1 (got {k})")
    corpus = corpus or open_corpus(path, rows)
    version = corpus.version_of(column)
    if text is not None:
        query = ClipEncoder(version, column).text(text)
        label = f"text {text!r}"
    elif image is not None:
        file = Path(image)
        if not file.is_file():
            raise CurateError(f"query image {image} does not exist")
        query = ClipEncoder(version, column).image(file.read_bytes())
        label = f"image {file}"
    else:
        assert uid is not None
        query = _stored_query(corpus, column, uid)
        label = f"uid {uid}"
    handle = ensure_index(corpus, column, index, memory)
    hits = _nearest(corpus, handle, query, k, nprobe)
    return SearchOutcome(corpus.metadata(hits), handle, label, corpus)


def search(path: str | Path, *, text: str | None = None, image: str | Path | None = None,
           uid: str | None = None, k: int = 20, column: str = DEFAULT_COLUMN,
           rows: RowSet | None = None, index: IndexChoice | None = None,
           memory: str | int | None = None, nprobe: int | None = None) -> polars.DataFrame:
    """The hits of ``run_search`` as a polars DataFrame: rank, score, uid, then the
    manifest's (or the store's base) columns."""
    return run_search(path, text=text, image=image, uid=uid, k=k, column=column, rows=rows,
                      index=index, memory=memory, nprobe=nprobe).hits


def _stored_query(corpus: Corpus, column: str, uid: str) -> np.ndarray:
    where = corpus.locate(uid)
    if where is None:
        raise CurateError(f"no sample of {corpus.location} has uid {uid!r}",
                          "uids are 32 hex characters: curate query SEL \"select uid, caption "
                          "from kept limit 5\"")
    vec = _sidecars(corpus, column).read_rows(column, [where[0]], [where[1]])
    if np.isnan(vec).any():
        raise CurateError(f"sample {uid} has no stored {column}: the scorer did not embed "
                          "it (its image failed, or an input it needs)")
    return vec


def _nearest(corpus: Corpus, handle: IndexHandle, query: np.ndarray, k: int,
             nprobe: int | None) -> pa.Table:
    exact = handle.plan.kind == "exact"
    fetch = k if exact else k * RERANK
    probe = None if exact else (nprobe or DEFAULT_NPROBE)
    scores, ids = search_index(handle.index, query, fetch, probe)
    ids, scores = ids[0], scores[0]
    found = ids >= 0
    ids, scores = ids[found], scores[found]
    if not exact and len(ids):  # exact cosines on the stored embeddings
        shard = handle.rows.column("shard").take(pa.array(ids)).to_pylist()
        pos = handle.rows.column("index").take(pa.array(ids)).to_pylist()
        vecs = _sidecars(corpus, handle.column).read_rows(handle.column, shard, pos)
        scores = vecs @ query[0]
        order = np.argsort(-scores, kind="stable")
        ids, scores = ids[order], scores[order]
    ids, scores = ids[:k], scores[:k]
    picked = handle.rows.take(pa.array(ids, pa.int64()))
    return pa.table({"rank": pa.array(np.arange(1, len(ids) + 1), pa.int32()),
                     "uid": picked.column("uid"), "score": pa.array(scores, pa.float32()),
                     "shard": picked.column("shard"), "index": picked.column("index")})


# -- the HTML page ----------------------------------------------------------------------------


def write_html(outcome: SearchOutcome, dest: str | Path) -> Path:
    """A self-contained page of the hits: thumbnail, rank, score, caption, uid (and kept or
    the drop reason for a selection), thumbnails read from the input shards."""
    from curate.audit.report import _img, _thumbnail
    from curate.io.atomic import write_text
    from curate.io.shards import ShardRef, read_members

    hits = outcome.hits.to_dicts()
    info = outcome.corpus.shard_files()
    thumbs: dict[str, bytes | str] = {}
    by_shard: dict[str, list[dict[str, Any]]] = {}
    for h in hits:
        by_shard.setdefault(h["shard"], []).append(h)
    for sid, group in sorted(by_shard.items()):
        s = info.get(sid)
        if s is None:
            thumbs.update({h["uid"]: "input shard unknown" for h in group})
            continue
        try:
            members = read_members(ShardRef(s.url, sid, s.failures), {h["index"] for h in group})
        except (OSError, CurateError) as exc:
            thumbs.update({h["uid"]: f"input shard unreadable: {exc}" for h in group})
            continue
        for h in group:
            data = members.get(h["index"], {}).get(h.get("image_member") or "")
            thumbs[h["uid"]] = _thumbnail(data) if data else "no image in the input"
    e = html.escape
    cards = []
    for h in hits:
        t = thumbs.get(h["uid"], "not read")
        pic = _img(t, "image/jpeg", (h.get("caption") or "")[:80], "thumb") if isinstance(
            t, bytes) else f'<div class="ph">{e(t)}</div>'
        tag = ""
        if "kept" in h:
            tag = ('<span class="tag kept">kept</span>' if h["kept"] else
                   f'<span class="tag drop">{e(str(h.get("reason")))}</span>')
        cards.append(f'<div class="card">{pic}<div class="meta"><b>#{h["rank"]}</b> '
                     f'{h["score"]:.4f} {tag}</div><div class="cap">'
                     f'{e(h.get("caption") or "")}</div><div class="uid">{e(h["uid"])}</div>'
                     "</div>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>curate search: {e(outcome.query)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#1c1c1c}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:12px}}
.card{{border:1px solid #ddd;border-radius:6px;padding:6px;overflow-wrap:anywhere}}
.thumb{{width:100%;height:180px;object-fit:contain;background:#f4f4f4}}
.ph{{height:180px;background:#eee;color:#777;font-size:12px;padding:4px}}
.meta{{margin:4px 0}} .cap{{font-size:13px}} .uid{{font:11px monospace;color:#777}}
.tag{{font-size:11px;padding:1px 5px;border-radius:3px;color:#fff}}
.kept{{background:#2e7d32}} .drop{{background:#c62828}}
</style></head><body>
<h1>{e(outcome.query)}</h1>
<p>{len(hits)} nearest samples of {e(outcome.corpus.location)}
({e(outcome.corpus.rows)} rows) by {e(outcome.index.column)}: {e(outcome.index.describe())}</p>
<div class="grid">{''.join(cards)}</div>
</body></html>
"""
    dest = Path(dest)
    write_text(page, dest)
    return dest
