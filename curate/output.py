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

``output/sizes.json`` maps shard names to sample counts (open_clip's training loader reads it to
know the dataset size). Every tar is written atomically; ``output/.state/NNNNN.json`` records a
digest of what the shard holds, so a rerun rewrites only shards whose content changed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import webdataset as wds

from curate.io.atomic import atomic_path, write_text
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
        sub_dir = f"{split_by}={value if value is not None else 'none'}" if split_by else None
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


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def is_current(out_dir: Path, shard: OutputShard) -> bool:
    state = out_dir / ".state" / shard.state
    if not (out_dir / shard.name).is_file() or not state.is_file():
        return False
    try:
        return json.loads(state.read_text()).get("digest") == shard.digest()
    except (OSError, ValueError):
        return False


def write_shard(shard: OutputShard, refs: dict[str, ShardRef], out_dir: str) -> int:
    """Write one output shard (atomically); returns its sample count."""
    out = Path(out_dir)
    wanted: dict[str, set[int]] = defaultdict(set)
    for item in shard.items:
        wanted[item["shard"]].add(item["index"])
    members = {sid: read_members(refs[sid], idx) for sid, idx in wanted.items()}
    with atomic_path(out / shard.name) as tmp:
        with open(tmp, "wb") as f:
            writer = wds.TarWriter(f, encoder=False, mtime=0.0)
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
            writer.close()
    write_text(json.dumps({"digest": shard.digest(), "samples": len(shard.items)}),
               out / ".state" / shard.state)
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


def finish(out_dir: Path, shards: list[OutputShard]) -> None:
    """Remove shards left over from an earlier run with other output; write sizes.json (one in
    the output directory, and one per split directory for open_clip)."""
    keep = {s.name for s in shards}
    for old in out_dir.rglob("[0-9][0-9][0-9][0-9][0-9].tar"):
        rel = old.relative_to(out_dir).as_posix()
        if rel not in keep:
            old.unlink()
            state = rel.replace("/", "__").removesuffix(".tar") + ".json"
            (out_dir / ".state" / state).unlink(missing_ok=True)
    groups: dict[str | None, dict[str, int]] = {}
    for s in shards:
        groups.setdefault(s.group, {})[s.name.rsplit("/", 1)[-1]] = len(s.items)
    if any(g is not None for g in groups):
        for g, sizes in groups.items():
            write_text(json.dumps(sizes, indent=1, sort_keys=True), out_dir / str(g) /
                       "sizes.json")
    write_text(json.dumps({s.name: len(s.items) for s in shards}, indent=1, sort_keys=True),
               out_dir / "sizes.json")
