"""Writing the curated webdataset shards from the manifest.

Kept samples, in pool order, are cut into output shards of ``samples_per_shard``
(``output/00000.tar``, ...). Each output sample has:

* ``__key__`` = the sample's uid;
* the image member under its original extension, its bytes copied untouched from the input;
* ``txt``: the caption member's original bytes;
* ``json``: the input json object plus ``uid``, ``image_sha256``, ``caption`` (the caption as
  text, where the input json has none: DataComp-style readers look there) and ``scores``
  (every scorer column), and, when the pipeline rewrites captions, ``rewrites``: every rewrite
  with its provenance (model, backend, prompt format, example ids, seed, sampling parameters,
  status, reason). What img2dataset writes into a downloaded sample's json without meaning
  here is left out: ``width``, ``height``, ``original_width`` and ``original_height`` when null
  (curate downloads without resizing, so img2dataset never learns the sizes; ``image_info``
  measures them) and the ``exif`` string (kept with ``output: {keep_exif: true}``);
* ``txt_rw0``, ``txt_rw1``, ...: the accepted rewrites (UTF-8), numbered as in ``rewrites``; a
  rewrite that failed has no member, so a loader picks among ``txt`` and the ``txt_rw*`` present;
* ``txt_syn0``, ``txt_syn1``, ...: the accepted synthetic captions of the image (``recaption:``),
  numbered as in the json's ``recaptions`` (each with its provenance and ALIP signals); a
  caption that failed has no member.

The tars are laid out as webdataset's ``TarWriter(encoder=False, mtime=0)`` lays them out
(``TarWriter`` here, so that writing a shard does not import torch through webdataset); with an
integer mtime no member needs a PAX header, which the float mtime used before added to every
member (1 KiB each: the demo's output shards are 10% smaller).

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
one process, so the driver writes it itself. A small output (at most
``DRIVER_WRITE_MAX_SAMPLES`` samples, no face blurring) in a process that has no Ray yet, with no
cluster named, is also written by the driver: a selection of a few thousand samples is written
in about the time a private Ray takes to start (``curate select`` on the 512-sample demo pool
went from ~11 s to ~3 s).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import posixpath
import re
import sys
import tarfile
import urllib.parse
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import duckdb

from curate.errors import CurateError
from curate.io.dataset import manifest_path, scan_sql
from curate.io.fsdir import PROCESS_LOCAL, FsDir, is_url, protocols, resolve
from curate.io.shards import ShardRef, read_members
from curate.recaption.stage import recaptions_json
from curate.rewrite.stage import rewrites_json
from curate.runtime import Progress, RaySession, RunLog
from curate.sql import ident

if TYPE_CHECKING:
    from curate.config import Selection


# The layout of the json member (see the module docs); part of each shard's digest, so shards
# written with another layout are written again.
JSON_LAYOUT = 2
# Keys img2dataset writes into a sample's json that are null when it did not resize.
IMG2DATASET_SIZES = ("width", "height", "original_width", "original_height")


@dataclass(frozen=True)
class OutputShard:
    number: int
    items: list[dict[str, Any]]  # uid, shard, index, image_member, scores
    group: str | None = None  # subdirectory when the output is split by a column
    keep_exif: bool = False  # keep img2dataset's ``exif`` string in the json member

    @property
    def name(self) -> str:
        """Path relative to the output directory."""
        return f"{self.group}/{self.number:05d}.tar" if self.group else f"{self.number:05d}.tar"

    @property
    def state(self) -> str:
        return self.name.replace("/", "__").removesuffix(".tar") + ".json"

    def digest(self) -> str:
        blob = json.dumps({"json_layout": JSON_LAYOUT, "keep_exif": self.keep_exif,
                           "items": self.items}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


def plan(manifest: Path, score_columns: list[str], samples_per_shard: int,
         split_by: str | None = None, blur_faces: str | None = None,
         blur_quality: int = 100, keep_exif: bool = False) -> list[OutputShard]:
    """Cut the kept rows of ``manifest`` (a dataset or a file) into output shards, in pool
    order; with ``split_by``, each value of that column gets its own directory
    ``<column>=<value>/`` of shards. With ``blur_faces``, the boxes in that column are
    blurred (``curate.write.blur``); with ``keep_exif``, the json keeps img2dataset's
    ``exif``."""
    con = duckdb.connect()
    src = scan_sql(manifest)
    names = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
    has_rw = "rewrites" in names
    has_syn = "recaptions" in names
    check = ", ".join(c if c in names else f"NULL AS {c}"
                      for c in ("key", "image_sha256", "caption"))
    scores = "".join(f", {ident(c)}" for c in score_columns)
    blur = f", {ident(blur_faces)}" if blur_faces else ", NULL"
    group = f"CAST({ident(split_by)} AS VARCHAR)" if split_by else "NULL"
    rows = con.execute(f"""
        SELECT {group} AS grp, uid, shard, "index", image_member,
               {"rewrites" if has_rw else "NULL"} AS rewrites, {check}
               {blur}, {"recaptions" if has_syn else "NULL"} AS recaptions {scores}
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
                      "key": r[5], "image_sha256": r[6], "scores": {c: _json_value(v)
                      for c, v in zip(score_columns, r[10:], strict=True)}}
                     for r in chunk]
            for item, r in zip(items, chunk, strict=True):
                if blur_faces and r[8]:
                    item["blur"] = {"boxes": r[8], "quality": blur_quality}
            if "caption" in names:  # checked against the caption member when copied
                for item, r in zip(items, chunk, strict=True):
                    item["caption"] = r[7]
            if has_rw:
                for item, r in zip(items, chunk, strict=True):
                    item["rewrites"] = rewrites_json(r[4])
            if has_syn:
                for item, r in zip(items, chunk, strict=True):
                    item["recaptions"] = recaptions_json(r[9])
            shards.append(OutputShard(n, items, sub_dir, keep_exif))
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
_Dir = FsDir
resolve_dir = resolve


# An output this small (samples to write, no face blurring) is written by the driver itself
# when this process has no Ray yet and no cluster was named: starting a private Ray takes
# longer than the writing (see ``in_driver``).
DRIVER_WRITE_MAX_SAMPLES = 4096


def in_driver(todo: list[OutputShard], blur_faces: bool, session: RaySession) -> bool:
    """Whether the driver writes ``todo`` itself rather than start Ray for it: only when no Ray
    is running in this process (a run that scored something writes on the Ray it started), no
    cluster address was given (``--address``, ``RAY_ADDRESS``: the user asked for the
    cluster), faces are not blurred (a detector per image) and at most
    ``DRIVER_WRITE_MAX_SAMPLES`` samples are to be written. The shards are the same bytes
    wherever they are written."""
    if session.address or blur_faces:
        return False
    if sum(len(s.items) for s in todo) > DRIVER_WRITE_MAX_SAMPLES:
        return False
    ray = sys.modules.get("ray")
    return ray is None or not ray.is_initialized()


def placement(out: str | Path) -> Placement:
    """Where the runner writes the shards of ``out`` from (see the module docstring)."""
    text = str(out)
    if not is_url(text):
        return "driver_node"
    return "driver_process" if protocols(text) & PROCESS_LOCAL else "spread"


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


class TarWriter:
    """Samples into an uncompressed tar stream, laid out as webdataset's ``TarWriter`` lays
    them out with ``encoder=False, mtime=0`` (members ``KEY.EXT`` in sorted order, mode 0444,
    owner ``bigdata``), so the bytes are the same (``tests/test_output.py`` compares them).
    Written here because importing ``webdataset`` imports torch when it is installed: 1.8 s
    for every process that writes a shard."""

    def __init__(self, f: IO[bytes]) -> None:
        self.tar = tarfile.open(fileobj=f, mode="w|")

    def write(self, sample: dict[str, Any]) -> None:
        key = sample["__key__"]
        for ext in sorted(sample):
            if ext.startswith("_"):
                continue
            value = sample[ext]
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise ValueError(f"{key}.{ext} is {type(value).__name__}, not bytes")
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(value), 0, 0o444
            info.uname = info.gname = "bigdata"
            self.tar.addfile(info, io.BytesIO(value))

    def close(self) -> None:
        self.tar.close()


def write_shard(shard: OutputShard, refs: dict[str, ShardRef], out_dir: str | Path) -> int:
    """Write one output shard (atomically) into ``out_dir``, a local path or an fsspec URL;
    returns its sample count."""
    d = _Dir.of(out_dir)
    wanted: dict[str, set[int]] = defaultdict(set)
    for item in shard.items:
        wanted[item["shard"]].add(item["index"])
    members = {sid: read_members(refs[sid], idx) for sid, idx in wanted.items()}
    for item in shard.items:
        verify(shard, item, members[item["shard"]].get(item["index"]))

    def fill(f: IO[bytes]) -> None:
        writer = TarWriter(f)
        try:
            for item in shard.items:
                m = members[item["shard"]][item["index"]]
                m.pop("__key__", None)
                sample: dict[str, Any] = {"__key__": item["uid"]}
                blurred: dict[str, Any] | None = None
                if item.get("blur"):
                    image, blurred = _blurred(item, m[item["image_member"]])
                    sample[blurred["format"]] = image
                else:
                    sample[item["image_member"]] = m[item["image_member"]]
                caption = next((m[e] for e in ("txt", "text", "caption") if e in m), None)
                if caption is not None:
                    sample["txt"] = caption
                for rw in item.get("rewrites", ()):
                    if rw["status"] == "ok":
                        sample[f"txt_rw{rw['rewrite']}"] = rw["text"].encode("utf-8")
                for syn in item.get("recaptions", ()):
                    if syn["status"] == "ok":
                        sample[f"txt_syn{syn['syn']}"] = syn["text"].encode("utf-8")
                sample["json"] = _json_member(m.get("json"), item, blurred, shard.keep_exif)
                writer.write(sample)
        finally:
            writer.close()  # also on error: the temporary file is then discarded

    d.write(shard.name, fill)
    # The state goes last: a shard whose state is missing or old is written again.
    d.write_bytes(_state_name(shard.name),
                  json.dumps({"digest": shard.digest(), "samples": len(shard.items)}).encode())
    return len(shard.items)


def verify(shard: OutputShard, item: dict[str, Any], members: dict[str, bytes] | None) -> None:
    """Check that the members about to be copied are the ones that were scored: the same key,
    an image whose SHA-256 is the stored ``image_sha256``, and the same caption. Anything else
    means the input changed after scoring, and the output shard fails (nothing is written)."""
    where = f"output shard {shard.name}: sample {item['uid']} ({item['shard']}, position " \
            f"{item['index']})"
    hint = ("its input shard changed after it was scored: score the pool again (the same "
            "`curate run`, or `curate score`), which rescores the changed shard, then select")
    if members is None:
        raise CurateError(f"{where} is no longer in its input shard", hint)
    key = members.get("__key__", b"").decode("utf-8", "replace")
    if item.get("key") is not None and key != item["key"]:
        raise CurateError(f"{where}: the input has key {key!r} there, the scores are of "
                          f"{item['key']!r}", hint)
    image = members.get(item["image_member"])
    digest = hashlib.sha256(image).hexdigest() if image is not None else None
    if item.get("image_sha256") is not None and digest != item["image_sha256"]:
        raise CurateError(f"{where}: its image is not the one that was scored (SHA-256 "
                          f"{(digest or 'none')[:16]}…, the scores are of "
                          f"{item['image_sha256'][:16]}…)", hint)
    caption = next((members[e] for e in ("txt", "text", "caption") if e in members), None)
    text = caption.decode("utf-8", "replace") if caption is not None else None
    if "caption" in item and text != item["caption"]:
        raise CurateError(f"{where}: its caption is not the one that was scored", hint)


def _blurred(item: dict[str, Any], image: bytes) -> tuple[bytes, dict[str, Any]]:
    """The image of a sample whose faces are blurred, and what its json says of it."""
    from curate.write.blur import FORMAT, blur_faces, valid_boxes

    try:
        boxes = valid_boxes(item["blur"]["boxes"])
        data = blur_faces(image, boxes, item["blur"]["quality"])
    except CurateError as exc:
        raise CurateError(f"sample {item['uid']} ({item['shard']}, position {item['index']}): "
                          f"{exc.message}") from exc
    return data, {"boxes": boxes, "replaced": item["image_member"],
                  "replaced_sha256": hashlib.sha256(image).hexdigest(), "format": FORMAT,
                  "quality": item["blur"]["quality"]}


def _json_member(original: bytes | None, item: dict[str, Any],
                 face_blur: dict[str, Any] | None = None, keep_exif: bool = False) -> bytes:
    """The output sample's json (see the module docs)."""
    meta: dict[str, Any] = {}
    if original:
        try:
            loaded = json.loads(original)
            if isinstance(loaded, dict):
                meta = loaded
        except ValueError:
            pass
    for key in IMG2DATASET_SIZES:
        if key in meta and meta[key] is None:
            del meta[key]
    if not keep_exif:
        meta.pop("exif", None)
    if meta.get("caption") is None and item.get("caption") is not None:
        meta["caption"] = item["caption"]
    meta["uid"] = item["uid"]
    if item.get("image_sha256") is not None:
        meta["image_sha256"] = item["image_sha256"]
    meta["scores"] = item["scores"]
    if "rewrites" in item:
        meta["rewrites"] = item["rewrites"]
    if "recaptions" in item:
        meta["recaptions"] = item["recaptions"]
    if face_blur is not None:
        meta["face_blur"] = face_blur
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


def write_output(sel: Selection, columns: list[str], refs: list[ShardRef], sel_dir: Path,
                 rlog: RunLog, progress: bool | None, session: RaySession,
                 max_retries: int = 2) -> int:
    """Write the output shards of a selection into ``output.dir`` (default SEL/output), as Ray
    tasks (Ray is started only when a shard must be written). ``columns`` are the score columns
    that go into each sample's json.

    A plain local path may exist only on the driver's machine, so its tasks are pinned to the
    driver's node (one per CPU there; one at a time when the driver's node has no CPU, e.g. a
    head started with ``--num-cpus 0``). ``file://`` (a mount at the same path on every node)
    and object stores are written from every node (SPREAD). ``memory://`` lives in this
    process, and under Ray Client (``ray://``) this process is on no node of the cluster, so
    in those cases the driver writes the shards itself."""
    p = sel
    out = resolve_dir(p.output.dir if p.output.dir is not None else sel_dir / "output")
    shards = plan(manifest_path(sel_dir), columns, p.output.samples_per_shard,
                  p.output.split_by, p.output.blur_faces, p.output.blur_quality,
                  p.output.keep_exif)
    todo = stale(out, shards)
    if not todo:
        rlog.event("writing_start", shards=len(shards), todo=0, dir=out)
        finish(out, shards)
        return len(shards)
    if in_driver(todo, p.output.blur_faces, session):
        # Starting a private Ray costs more than writing this little here (module docstring)
        rlog.event("writing_start", shards=len(shards), todo=len(todo), dir=out,
                   placement="driver_process", reason="small")
        bar = Progress(len(shards), "writing", progress)
        bar.update(shards=len(shards) - len(todo))
        by_id = {r.shard_id: r for r in refs}
        for s in todo:
            n = write_shard(s, by_id, out)
            rlog.event("output_shard_done", shard=s.name, samples=n, node="driver")
            bar.update(samples=n)
        bar.close()
        finish(out, shards)
        return len(shards)
    session.ensure()
    import ray
    from ray.util.client import ray as ray_client
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    where = placement(out)
    if where == "driver_node" and ray_client.is_connected():
        where = "driver_process"  # Ray Client (ray://): this process is on no cluster node
    driver = ray.get_runtime_context().get_node_id()
    rlog.event("writing_start", shards=len(shards), todo=len(todo), dir=out, placement=where,
               driver_node=driver)
    bar = Progress(len(shards), "writing", progress)
    bar.update(shards=len(shards) - len(todo))
    refs_by_id = {r.shard_id: r for r in refs}
    if where == "driver_process":
        for s in todo:
            n = write_shard(s, refs_by_id, out)
            rlog.event("output_shard_done", shard=s.name, samples=n, node=driver)
            bar.update(samples=n)
    elif todo:
        def write(shard: OutputShard, by_id: dict[str, ShardRef], dest: str,
                  ) -> tuple[int, str]:
            return write_shard(shard, by_id, dest), \
                ray.get_runtime_context().get_node_id()

        if where == "driver_node":
            cpus = next((n["Resources"].get("CPU", 0.0) for n in ray.nodes()
                         if n["NodeID"] == driver), 0.0)
            opts: dict[str, Any] = {
                "num_cpus": 1 if cpus >= 1 else 0,
                "scheduling_strategy": NodeAffinitySchedulingStrategy(driver, soft=False)}
            window = max(1, int(cpus))
        else:
            opts = {"num_cpus": 1, "scheduling_strategy": "SPREAD"}
            window = len(todo)
        task = ray.remote(write).options(max_retries=max_retries, **opts)
        shared = ray.put(refs_by_id)
        queue = deque(todo)
        pending: dict[Any, OutputShard] = {}
        first_error: BaseException | None = None
        while (queue and first_error is None) or pending:
            while queue and first_error is None and len(pending) < window:
                s = queue.popleft()
                pending[task.remote(s, shared, out)] = s
            ready, _ = ray.wait(list(pending), num_returns=1)
            for fut in ready:
                s = pending.pop(fut)
                try:
                    n, node = ray.get(fut)
                except Exception as exc:  # noqa: BLE001 - re-raised once the others settle
                    rlog.event("output_shard_failed", shard=s.name,
                               error=f"{type(exc).__name__}: {exc}".splitlines()[0])
                    first_error = first_error or exc
                    continue
                rlog.event("output_shard_done", shard=s.name, samples=n, node=node)
                bar.update(samples=n)
        if first_error is not None:
            # Raised only now: the tasks still writing when it failed have finished (each one
            # complete, or its temporary file removed), so nothing is left half-written.
            bar.close()
            cause = getattr(first_error, "cause", None)
            if isinstance(cause, CurateError):  # ours, raised in the task: say it plainly
                raise cause from None
            raise first_error
    bar.close()
    finish(out, shards)
    return len(shards)
