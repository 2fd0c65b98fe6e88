"""Downloading a URL list with img2dataset into reproducible webdataset shards.

``download(cfg, dest)`` keeps ``dest`` (``STORE/download``) as a set of finished shards,
``NNNNN.tar`` + ``NNNNN.parquet``, and adds to it only what the URL list has that those shards
do not:

1. The list is read and every row gets its uid (``curate.ingest.urls``: stable when rows are
   appended or reordered).
2. The ledger of what was downloaded is the ``uid`` column of every finished shard's Parquet. A
   row whose uid is not in it is *new*. Without new rows nothing is downloaded.
3. The new rows (url, caption, uid and every other column), in list order, go to img2dataset
   as a Parquet list, into the scratch directory ``dest/.incoming`` (emptied first). Images are
   stored exactly as downloaded (``disable_all_reencoding``, no resize) with their SHA-256. A
   row whose URL is null, empty or not http(s) is not requested: img2dataset records it as
   failed and curate writes the reason as its ``error_message``.
4. Each shard img2dataset finished (it wrote ``NNNNN_stats.json``) is made canonical and moved
   into ``dest`` under the next free number: the tar's samples sorted by key, every member with
   mtime 0, uid/gid 0, no user or group name and mode 0644, member bytes unchanged except that
   keys (img2dataset's: the shard number, 5 digits, then the index in the shard) carry the
   final shard number, also in the json member's ``key``; the Parquet sorted by key with the
   same keys (zstd). The tar is written before the Parquet, each atomically, so an existing
   Parquet marks a finished shard. A shard img2dataset did not finish is not moved: its rows
   stay new and are downloaded on the next run. The scratch directory is removed at the end.

So ``dest`` holds only ``NNNNN.tar`` and ``NNNNN.parquet`` (img2dataset's stats files, which
hold timings, are not kept), two downloads of one list from the same server give identical
bytes (with the same pyarrow version), and a shard, once written, is never rewritten: the store
identifies shards by their bytes, so nothing downloaded is ever scored twice.

Every row of the list is a sample: an image in a tar, or a row of its Parquet with the reason
it failed (404, timeout, not downloadable), which the shard reader turns into an error sample
(``curate.io.shards``). A failed row is in the ledger like any other, so it is not retried on
the next run; to retry failures, download into a fresh directory. Rows downloaded earlier but
no longer in the list keep their shards (with a warning saying how many): they remain samples
of the pool, because a shard is never rewritten; download the list into a fresh store to drop
them.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import shutil
import signal
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate.config import InputConfig
from curate.errors import CurateError
from curate.ingest.urls import UrlList, not_downloadable, read_url_list
from curate.io.atomic import atomic_path
from curate.io.shards import ShardRef

if TYPE_CHECKING:
    from curate.runtime import RunLog

log = logging.getLogger("curate")

SCRATCH = ".incoming"
_SHARD_FILE = re.compile(r"(\d+)\.(tar|parquet)")
_MEMBER_MODE = 0o644


@dataclass(frozen=True)
class DownloadShard:
    """A finished download shard in ``dest``."""

    number: int
    tar: Path
    parquet: Path

    def ref(self) -> ShardRef:
        return ShardRef(url=str(self.tar), shard_id=self.tar.name, failures=str(self.parquet))


def finished_shards(dest: Path) -> list[DownloadShard]:
    """The finished shards in ``dest`` (a Parquet beside its tar), by number."""
    found: dict[int, dict[str, Path]] = {}
    for path in dest.iterdir() if dest.is_dir() else ():
        m = _SHARD_FILE.fullmatch(path.name)
        if m is not None and path.is_file():
            found.setdefault(int(m.group(1)), {})[m.group(2)] = path
    shards = []
    for number in sorted(found):
        files = found[number]
        if "parquet" not in files:
            continue  # a tar whose Parquet was never written: not finished
        if "tar" not in files:
            raise CurateError(f"download shard {files['parquet']} has no tar beside it",
                              f"restore {files['parquet'].with_suffix('.tar').name}, or move "
                              f"{dest} away to download the list again")
        shards.append(DownloadShard(number, files["tar"], files["parquet"]))
    return shards


def _remove_unfinished(dest: Path) -> None:
    """Delete tars whose Parquet was never written (a run stopped between the two): they are
    no shard, and their rows are downloaded again."""
    for path in sorted(dest.glob("[0-9]*.tar")):
        if _SHARD_FILE.fullmatch(path.name) and not path.with_suffix(".parquet").exists():
            log.info("removing %s: its download did not finish", path)
            path.unlink()


def _ledger(shards: list[DownloadShard]) -> set[str]:
    """The uids already downloaded into ``shards``."""
    uids: set[str] = set()
    for shard in shards:
        if "uid" not in pq.read_schema(shard.parquet).names:
            raise CurateError(
                f"{shard.parquet} has no uid column: its directory was written by an earlier "
                "curate, whose shards cannot be matched to the list's rows",
                f"move {shard.parquet.parent} away (or point the pipeline at a new store) to "
                "download the list again")
        uids.update(pq.read_table(shard.parquet, columns=["uid"]).column("uid").to_pylist())
    return uids


def download(cfg: InputConfig, dest: Path, rlog: RunLog | None = None) -> list[ShardRef]:
    """Download the rows of ``cfg.urls`` that ``dest`` lacks (see the module docs); return
    every finished shard in ``dest``, in name order."""
    urls = read_url_list(cfg)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dest / SCRATCH, ignore_errors=True)  # what a killed run left
    _remove_unfinished(dest)
    shards = finished_shards(dest)
    ledger = _ledger(shards)
    uids = urls.uids
    new = urls.table.filter(pa.array([u not in ledger for u in uids], pa.bool_()))
    gone = len(ledger - set(uids))
    if gone:
        log.warning("%d rows downloaded into %s earlier are no longer in %s; their shards are "
                    "kept (a shard is never rewritten), so they stay in the pool", gone, dest,
                    cfg.urls)
    written = recorded = 0
    if new.num_rows:
        first = shards[-1].number + 1 if shards else 0
        log.info("downloading %d new rows of %s (%d already downloaded)", new.num_rows,
                 cfg.urls, len(uids) - new.num_rows)
        written, recorded = _download_new(cfg, urls, new, dest, first)
        shards = finished_shards(dest)
    left = new.num_rows - recorded
    if left:
        log.warning("%d rows of %s were not downloaded (img2dataset did not finish their "
                    "shard, or recorded nothing for them); the next run downloads them", left,
                    cfg.urls)
    if rlog is not None:
        rlog.event("download", urls=cfg.urls, dest=str(dest), rows=len(uids),
                   uids_from_list=urls.given_uids,
                   already=len(uids) - new.num_rows, new=new.num_rows, shards_written=written,
                   rows_written=recorded, left=left, gone=gone, shards=len(shards))
    if not shards:
        raise CurateError(f"img2dataset finished no shard into {dest}",
                          "see its messages above; rerunning downloads the missing rows")
    return [s.ref() for s in shards]


def _import_img2dataset() -> Any:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        import img2dataset
    except ImportError as exc:
        raise CurateError(f"URL-list input needs img2dataset, which failed to import: {exc}",
                          "pip install --no-deps img2dataset==1.47.0 plus its dependencies "
                          "(see the Makefile)") from exc
    return img2dataset


def _download_new(cfg: InputConfig, urls: UrlList, new: pa.Table, dest: Path,
                  first: int) -> tuple[int, int]:
    """Download the rows ``new`` into shards ``first``, ``first + 1``, ... of ``dest``;
    returns (shards written, rows they hold)."""
    img2dataset = _import_img2dataset()
    captions = urls.format != "txt" and cfg.caption_col is not None
    reasons = [not_downloadable(u) for u in new.column("url").to_pylist()]
    listing = new.set_column(
        new.schema.get_field_index("url"), "url",
        pa.array([None if r else u for u, r in zip(new.column("url").to_pylist(), reasons,
                                                   strict=True)], pa.string()))
    if not captions:
        listing = listing.drop_columns(["caption"])
    scratch = dest / SCRATCH
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        pq.write_table(listing, scratch / "list.parquet")
        out = scratch / "shards"
        _run_img2dataset(img2dataset, cfg, scratch / "list.parquet", out, captions,
                         ["uid", *urls.extra])
        sps = cfg.download.samples_per_shard
        written = recorded = 0
        for sid in _finished_scratch(out):
            rows = _canonical_shard(out, sid, dest, first + written, sps, new, reasons)
            if rows is not None:
                written += 1
                recorded += rows
        return written, recorded
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_img2dataset(img2dataset: Any, cfg: InputConfig, listing: Path, out: Path,
                     captions: bool, columns: list[str]) -> None:
    import ray

    d = cfg.download
    # img2dataset installs its own SIGINT handler (which exits with status 0); put ours back.
    main = threading.current_thread() is threading.main_thread()
    old = signal.getsignal(signal.SIGINT) if main else None
    try:
        img2dataset.download(
            url_list=str(listing), output_folder=str(out), input_format="parquet",
            output_format="webdataset", url_col="url",
            caption_col="caption" if captions else None, save_additional_columns=columns,
            resize_mode="no", disable_all_reencoding=True, compute_hash="sha256",
            processes_count=d.processes_count, thread_count=d.thread_count,
            timeout=d.timeout, retries=d.retries, number_sample_per_shard=d.samples_per_shard,
            user_agent_token=d.user_agent_token,
            distributor="ray" if ray.is_initialized() else "multiprocessing",
            # The scratch directory is empty, so "incremental" starts from nothing; img2dataset
            # 1.47's "overwrite" deletes the output folder after creating its _tmp in it.
            incremental_mode="incremental", enable_wandb=False, max_shard_retry=1)
    finally:
        if main and old is not None:
            signal.signal(signal.SIGINT, old)


def _finished_scratch(out: Path) -> list[int]:
    """The scratch shards img2dataset finished (its stats file is written last)."""
    done = []
    for stats in out.glob("*_stats.json"):
        head = stats.name.split("_", 1)[0]
        if head.isdigit() and (out / f"{head}.tar").is_file() \
                and (out / f"{head}.parquet").is_file():
            done.append(int(head))
    return sorted(done)


def _key(shard: int, index: int, digits: int) -> str:
    """img2dataset's key: the shard number (5 digits) followed by the index (``digits``)."""
    return f"{shard * 10 ** digits + index:0{digits + 5}d}"


def _canonical_shard(out: Path, sid: int, dest: Path, number: int, per_shard: int,
                     new: pa.Table, reasons: list[str | None]) -> int | None:
    """Write scratch shard ``sid`` as ``dest/<number>`` in canonical form (module docs);
    returns its row count, or None when its tar cannot be read (it is then not moved)."""
    digits = math.ceil(math.log10(per_shard))  # as img2dataset computes it
    table = pq.read_table(out / f"{sid:05d}.parquet")
    keys: dict[str, str] = {}
    positions: list[int] = []
    for old in table.column("key").to_pylist():
        index = int(old) - sid * 10 ** digits
        if not 0 <= index < per_shard:
            raise RuntimeError(f"img2dataset key {old!r} is not in scratch shard {sid}")
        keys[old] = _key(number, index, digits)
        positions.append(sid * per_shard + index)
    listed = new.column("uid").take(pa.array(positions, pa.int64())).to_pylist()
    if listed != table.column("uid").to_pylist():
        raise RuntimeError(f"img2dataset's scratch shard {sid} does not match its rows")
    table = _fix_rows(table, keys, positions, new, reasons)
    try:
        with atomic_path(dest / f"{number:05d}.tar") as tmp:
            dropped = _canonical_tar(out / f"{sid:05d}.tar", tmp, keys)
    except (tarfile.TarError, EOFError) as exc:
        log.warning("img2dataset's shard %s is unreadable (%s); its rows are downloaded on the "
                    "next run", out / f"{sid:05d}.tar", exc)
        return None
    if dropped:
        log.warning("%d images in img2dataset's shard %05d had no row in its Parquet and were "
                    "left out; the next run downloads them again", dropped, sid)
    with atomic_path(dest / f"{number:05d}.parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return table.num_rows


def _fix_rows(table: pa.Table, keys: dict[str, str], positions: list[int], new: pa.Table,
              reasons: list[str | None]) -> pa.Table:
    """The scratch Parquet with final keys, sorted by key; rows that were not requested get
    their URL back and the reason as their error message."""
    urls = table.column("url").to_pylist()
    errors = table.column("error_message").to_pylist()
    listed = new.column("url").to_pylist()
    for row, pos in enumerate(positions):
        if reasons[pos] is not None:
            urls[row], errors[row] = listed[pos], reasons[pos]

    def put(t: pa.Table, name: str, values: list[Any]) -> pa.Table:
        i = t.schema.get_field_index(name)
        return t.set_column(i, t.schema.field(i), pa.array(values, t.schema.field(i).type))

    table = put(table, "url", urls)
    table = put(table, "error_message", errors)
    table = put(table, "key", [keys[k] for k in table.column("key").to_pylist()])
    return table.sort_by("key").replace_schema_metadata(None)


def _canonical_tar(src: Path, dest: Path, keys: dict[str, str]) -> int:
    """Copy the tar ``src`` to ``dest``, samples sorted by their new key (``keys``), members
    with fixed metadata; returns how many samples were left out (no Parquet row)."""
    dropped: set[str] = set()
    with tarfile.open(src, "r:") as tar:
        members = []
        for info in tar.getmembers():
            if not info.isfile():
                continue
            old, _, ext = info.name.partition(".")
            if old not in keys:
                dropped.add(old)
                continue
            members.append((keys[old], ext, info))
        members.sort(key=lambda m: (m[0], m[1]))
        with tarfile.open(dest, "w", format=tarfile.USTAR_FORMAT) as out:
            for key, ext, info in members:
                f = tar.extractfile(info)
                data = f.read() if f is not None else b""
                if ext == "json":
                    data = _rekey_json(data, key)
                member = tarfile.TarInfo(f"{key}.{ext}")
                member.size = len(data)
                member.mtime = 0
                member.mode = _MEMBER_MODE
                member.uid = member.gid = 0
                member.uname = member.gname = ""
                out.addfile(member, io.BytesIO(data))
    return len(dropped)


def _rekey_json(data: bytes, key: str) -> bytes:
    """The json member with its ``key`` field set to ``key`` (written as img2dataset writes it:
    ``json.dumps(meta, indent=4)``)."""
    with contextlib.suppress(ValueError):
        meta = json.loads(data)
        if isinstance(meta, dict) and "key" in meta:
            meta["key"] = key
            return json.dumps(meta, indent=4).encode("utf-8")
    return data
