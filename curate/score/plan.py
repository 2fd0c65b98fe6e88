"""What a scoring pass must compute, decided before any worker starts.

* ``scorer_versions``: each scorer of the pipeline as the store names it: its label and version
  (a fingerprint of its name, code version, parameters, the reader's settings and the versions
  of the scorers whose outputs it reads).
* ``identify``: each input shard's content identity (``curate.store.identity``): from its
  stamp when unchanged, by hashing it again when its stamp changed; a new shard is identified
  by the read that scores it.
* ``plan``: per shard, whether the reader must run and which scorers must compute: those
  whose file for this shard's bytes is missing, and every scorer that reads the output of one
  that computes. Everything else is reused from the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from curate.io.shards import MAX_MEMBER_BYTES, ShardRef
from curate.schema import BATCH_ONLY_COLUMNS, SAMPLE_COLUMNS
from curate.stages.base import Scorer
from curate.store.identity import shard_stamp
from curate.store.store import KEY_STAMP, PoolShard, Store, Version, shard_key
from curate.store.verify import Damage, ScorerFiles, ShardFiles, damage_many

log = logging.getLogger("curate")

READER_VERSION = 4  # bump when the reader's columns, grouping, uids or recovery change


def reader_fingerprint(max_member_bytes: int = MAX_MEMBER_BYTES) -> str:
    blob = json.dumps({"reader": READER_VERSION, "max_member_bytes": max_member_bytes})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ScorerVersion:
    """A scorer of the pipeline with its store identity."""

    scorer: Scorer
    label: str
    version: str
    reads: dict[str, str]  # label -> version of the scorers whose outputs it reads
    stored: dict[str, pa.DataType]  # columns in its Parquet
    sidecars: dict[str, pa.DataType]  # columns stored as embeddings

    @property
    def needs_members(self) -> bool:
        """Whether it reads the raw members (image bytes, json), so the tar must be read."""
        return bool(set(self.scorer.inputs()) & set(BATCH_ONLY_COLUMNS))

    def record(self, reader: str) -> Version:
        return Version(label=self.label, version=self.version, name=self.scorer.name,
                       params=self.scorer.params.model_dump(mode="json"), reads=self.reads,
                       reader=reader, schema=pa.schema(self.stored),
                       sidecars={c: t.list_size for c, t in self.sidecars.items()})  # type: ignore[attr-defined]


def scorer_versions(scorers: Sequence[Scorer], reader: str) -> list[ScorerVersion]:
    """The store identity of each scorer, in pipeline order (see the module docs)."""
    producer: dict[str, str] = {}
    versions: dict[str, str] = {}
    out: list[ScorerVersion] = []
    for s in scorers:
        reads = {producer[c]: versions[producer[c]] for c in s.inputs() if c in producer}
        blob = json.dumps([s.fingerprint(), reader, sorted(reads.items())])
        version = hashlib.sha256(blob.encode()).hexdigest()[:16]
        side = set(s.sidecars())
        outputs = dict(s.outputs())
        out.append(ScorerVersion(
            scorer=s, label=s.label, version=version, reads=dict(sorted(reads.items())),
            stored={c: t for c, t in outputs.items() if c not in side},
            sidecars={c: t for c, t in outputs.items() if c in side}))
        versions[s.label] = version
        for c in outputs:
            producer[c] = s.label
    return out


@dataclass
class Identity:
    """What is known of a shard's bytes before scoring."""

    stamp: str
    digest: str | None  # None: a new shard, identified by the read that scores it
    changed_from: str | None = None  # the digest it had when last scored, if it changed
    hashed: bool = False  # hashed again in this pass (its stamp had changed)


def identify(store: Store, refs: Sequence[ShardRef], reader: str, verify: bool,
             hash_many: Callable[[list[ShardRef]], dict[str, str]],
             records: dict[str, PoolShard] | None = None) -> dict[str, Identity]:
    """The identity of every shard (see the module docs). ``hash_many`` hashes shards (on Ray
    workers when the runner has them) and returns shard id -> digest."""
    records = {r.shard: r for r in store.pool()} if records is None else records
    base = store.stored(f"base/{reader}")
    out: dict[str, Identity] = {}
    to_hash: list[ShardRef] = []
    previous: dict[str, str] = {}
    for ref in refs:
        stamp = shard_stamp(ref.url, ref.failures)
        rec = records.get(ref.shard_id)
        digest = rec.digest if rec is not None and rec.url == ref.url else None
        if digest is None:  # no record (a new shard, or a run that died before writing one)
            digest = _digest_from_base(store, reader, ref, stamp, base.get(shard_key(ref.shard_id),
                                                                             set()))
            if digest is not None:
                out[ref.shard_id] = Identity(stamp, digest)
                continue
            known = base.get(shard_key(ref.shard_id))
            if known:  # scored before, under another stamp: hash it to know
                to_hash.append(ref)
                previous[ref.shard_id] = sorted(known)[0] if len(known) == 1 else ""
            else:
                out[ref.shard_id] = Identity(stamp, None)
            continue
        if rec is not None and rec.stamp == stamp and not verify:
            out[ref.shard_id] = Identity(stamp, digest)
        else:
            to_hash.append(ref)
            previous[ref.shard_id] = digest
    if to_hash:
        digests = hash_many(to_hash)
        for ref in to_hash:
            d = digests[ref.shard_id]
            before = previous.get(ref.shard_id) or None
            changed = before if before is not None and before != d else None
            out[ref.shard_id] = Identity(shard_stamp(ref.url, ref.failures), d, changed, True)
    return out


def _digest_from_base(store: Store, reader: str, ref: ShardRef, stamp: str,
                      digests: set[str]) -> str | None:
    """The digest of a stored base file of this shard whose recorded stamp is ``stamp``."""
    for d in sorted(digests):
        try:
            meta = store.dir.parquet_schema(Store.base_name(reader, shard_key(ref.shard_id),
                                                            d)).metadata or {}
        except (OSError, pa.ArrowInvalid):
            continue
        if meta.get(KEY_STAMP, b"").decode() == stamp:
            return d
    return None


@dataclass
class ShardPlan:
    """What one shard needs."""

    ref: ShardRef
    identity: Identity
    read_base: bool
    compute: list[str] = field(default_factory=list)  # scorer labels, pipeline order

    @property
    def key(self) -> str:
        return shard_key(self.ref.shard_id)

    @property
    def digest(self) -> str | None:
        return self.identity.digest

    @property
    def todo(self) -> bool:
        return self.read_base or bool(self.compute)


def plan(store: Store, refs: Sequence[ShardRef], versions: Sequence[ScorerVersion], reader: str,
         identities: dict[str, Identity], records: dict[str, PoolShard] | None = None,
         damage: list[Damage] | None = None) -> list[ShardPlan]:
    """Per shard, the reader and the scorers that must run (see the module docs). A stored
    file that fails its identity check (``curate.store.verify``) counts as missing: it is
    recomputed, and appended to ``damage``."""
    base = store.stored(f"base/{reader}")
    have = {v.label: store.stored(f"scores/{v.label}/{v.version}") for v in versions}
    found = _check_stored(store, refs, versions, reader, identities, records or {}, base, have)
    if damage is not None:
        damage.extend(found)
    plans: list[ShardPlan] = []
    for ref in refs:
        ident = identities[ref.shard_id]
        key, digest = shard_key(ref.shard_id), ident.digest
        read_base = digest is None or digest not in base.get(key, set())
        compute: list[str] = []
        for v in versions:
            if (digest is None or digest not in have[v.label].get(key, set())
                    or any(r in compute for r in v.reads)):
                compute.append(v.label)
        plans.append(ShardPlan(ref, ident, read_base, compute))
    return plans


def _check_stored(store: Store, refs: Sequence[ShardRef], versions: Sequence[ScorerVersion],
                  reader: str, identities: dict[str, Identity], records: dict[str, PoolShard],
                  base: dict[str, set[str]], have: dict[str, dict[str, set[str]]],
                  ) -> list[Damage]:
    """Check the stored files the plan would reuse; drop the damaged ones from ``base`` and
    ``have`` (so that they are recomputed) and return them."""
    jobs: list[ShardFiles] = []
    for ref in refs:
        digest = identities[ref.shard_id].digest
        if digest is None:
            continue
        key = shard_key(ref.shard_id)
        scorers = tuple(
            ScorerFiles(v.label, v.version,
                        {c: t.list_size for c, t in v.sidecars.items()})  # type: ignore[attr-defined]
            for v in versions if digest in have[v.label].get(key, set()))
        in_base = digest in base.get(key, set())
        if not in_base and not scorers:
            continue
        rec = records.get(ref.shard_id)
        samples = rec.samples if rec is not None and rec.digest == digest else None
        jobs.append(ShardFiles(ref.shard_id, digest, in_base, scorers, samples))
    found = damage_many(store, reader, jobs)
    digests = {j.shard: j.digest for j in jobs}
    for d in found:
        key = shard_key(d.shard)
        where = base if d.label is None else have[d.label]
        where.get(key, set()).discard(digests[d.shard])
    return found


def base_columns() -> dict[str, pa.DataType]:
    """The columns of a base file (what the reader records for every sample)."""
    return dict(SAMPLE_COLUMNS)
