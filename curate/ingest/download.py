"""Ingest a URL list by downloading it with img2dataset (its Python API) into webdataset shards.

The URL list is Parquet, CSV, TSV, JSON or plain text with a url column and (optionally) a
caption column; every other column is kept in each sample's json (so a ``uid`` column becomes
the sample's uid). Images are stored exactly as downloaded (``disable_all_reencoding``): no
resize, no re-encode; the ``image_info`` scorer checks them. img2dataset writes ``NNNNN.tar``
plus ``NNNNN.parquet`` with one row per URL and its status; curate reads both, so a URL that
failed to download (404, timeout, not an image) is a sample with ``status = error``,
``error_stage = download`` and img2dataset's message: it is in the manifest, never lost.
Download resumes per shard (img2dataset's incremental mode).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from curate.config import InputConfig
from curate.errors import CurateError
from curate.io.shards import ShardRef

if TYPE_CHECKING:
    from curate.runner import RunLog

_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".txt": "txt", ".json": "json"}


def url_list_format(cfg: InputConfig) -> str:
    assert cfg.urls is not None
    if cfg.format:
        return cfg.format
    fmt = _FORMATS.get(Path(cfg.urls).suffix.lower())
    if fmt is None:
        raise CurateError(f"cannot tell the format of URL list {cfg.urls!r}",
                          "set input.format to parquet, csv, tsv, txt or json")
    return fmt


def _columns(path: str, fmt: str) -> list[str]:
    if fmt == "parquet":
        return list(pq.read_schema(path).names)
    if fmt in ("csv", "tsv"):
        with open(path, encoding="utf-8") as f:
            header = f.readline().rstrip("\r\n")
        return header.split("," if fmt == "csv" else "\t")
    if fmt == "json":
        import pandas as pd

        return list(pd.read_json(path, nrows=1, lines=False).columns)
    return []


def download(cfg: InputConfig, dest: Path, rlog: RunLog | None = None) -> list[ShardRef]:
    """Download ``cfg.urls`` into ``dest`` (resuming) and return its shards."""
    assert cfg.urls is not None
    if not Path(cfg.urls).is_file():
        raise CurateError(f"URL list {cfg.urls!r} does not exist", "check input.urls")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        import img2dataset
    except ImportError as exc:
        raise CurateError(f"URL-list input needs img2dataset, which failed to import: {exc}",
                          "pip install --no-deps img2dataset==1.47.0 plus its dependencies "
                          "(see the Makefile)") from exc
    fmt = url_list_format(cfg)
    cols = _columns(cfg.urls, fmt)
    if fmt != "txt" and cfg.url_col not in cols:
        raise CurateError(f"URL list {cfg.urls!r} has no column {cfg.url_col!r} "
                          f"(columns: {', '.join(cols)})", "set input.url_col")
    if cfg.caption_col and fmt != "txt" and cfg.caption_col not in cols:
        raise CurateError(f"URL list {cfg.urls!r} has no column {cfg.caption_col!r}",
                          "set input.caption_col (or null for no captions)")
    extra = [c for c in cols if c not in (cfg.url_col, cfg.caption_col)]
    dest.mkdir(parents=True, exist_ok=True)
    import ray

    d = cfg.download
    img2dataset.download(
        url_list=str(Path(cfg.urls).absolute()), output_folder=str(dest),
        output_format="webdataset", input_format=fmt, url_col=cfg.url_col,
        caption_col=cfg.caption_col if fmt != "txt" else None,
        save_additional_columns=extra or None, resize_mode="no", disable_all_reencoding=True,
        processes_count=d.processes_count, thread_count=d.thread_count, timeout=d.timeout,
        retries=d.retries, number_sample_per_shard=d.samples_per_shard,
        distributor="ray" if ray.is_initialized() else "multiprocessing",
        incremental_mode="incremental", enable_wandb=False, compute_hash="sha256",
        user_agent_token=d.user_agent_token, max_shard_retry=1)
    refs = []
    for table in sorted(dest.glob("[0-9]*.parquet")):
        tar = table.with_suffix(".tar")
        refs.append(ShardRef(url=str(tar), shard_id=tar.name, failures=str(table)))
    if not refs:
        raise CurateError(f"img2dataset wrote no shard into {dest}",
                          f"see {dest}/*_stats.json and the log above")
    if rlog is not None:
        rlog.event("downloaded", shards=len(refs), dest=str(dest))
    return refs
