"""The library entry points behind ``curate run``, ``curate score`` and ``curate select``.

* ``score(pipeline, store)``: every input shard through the pipeline's scorers into the store,
  computing only what the store lacks (``curate.score.engine``).
* ``select(store, selection, out)``: rules and selectors over the store's scores, then
  (optionally) caption rewrites, synthetic captions and the curated shards, into one
  selection directory. It computes no score.
* ``run(pipeline, out)``: both, the one-command path. The store is the pipeline's ``store:``
  (default ``OUT/store``) and the selection goes to ``OUT/selections/<pipeline name>``, so
  running other pipelines into the same ``OUT`` scores only what is new and keeps one
  selection each.

Ray is started only when there is work for it (scoring, hashing changed shards, writing output
shards, rewriting), locally unless an address is given or Ray is already initialised in the
process, and stopped after.

A selection directory::

    selection.json       the store it selects from and the scorer versions it uses
    pipeline.yaml        the selection (or pipeline) as run, its paths absolute
    log.jsonl            machine-readable events of its runs (one JSON object per line)
    manifest/            one row per input sample: scores, kept, reason (a Parquet
                         dataset: part-00000.parquet, ... in pool order; read it as one table)
    funnel.parquet       the selection funnel; stages.parquet: per-scorer counters
    shards.parquet       per input shard: identity, status, counts, last scoring
    output/*.tar         curated webdataset shards (+ sizes.json)
    reports/             selectors' reports
    stats.json           summary; catalog.duckdb: views over all of the above
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from curate import __version__
from curate.audit.catalog import write_catalog
from curate.config import Pipeline, Selection, check_selection, load_pipeline
from curate.errors import ConfigError, CurateError
from curate.io.atomic import write_parquet, write_text
from curate.io.fsdir import resolve
from curate.io.rundir import (
    READ_ONLY,
    RunLock,
    as_directory,
    disk_error,
    read_only_dir,
    remove_leftovers,
)
from curate.io.shards import ShardRef, list_shards
from curate.runtime import Notes, Progress, RaySession, RunLog
from curate.saved import SAVED, absolute_paths
from curate.schema import SAMPLE_COLUMNS, SHARD_SCHEMA
from curate.score.engine import ScoreResult, score_pool, stage_totals
from curate.score.plan import scorer_versions
from curate.select.metadata import SelectMetadata, file_stamps, metadata_files
from curate.select.pool import PoolSource
from curate.select.selection import Selection as Selected
from curate.select.selection import select as select_pool
from curate.store.identity import shard_stamp
from curate.store.store import LOG, PoolShard, Store, Version

log = logging.getLogger("curate")

SELECTIONS = "selections"


@dataclass
class SelectResult:
    """What a selection did."""

    dir: Path
    store: str
    samples: int
    kept: int
    funnel: list[tuple[str, int]]
    shards: int
    output_shards: int
    seconds: float
    stages: dict[str, dict[str, float | int]] = field(default_factory=dict)
    rewrite: dict[str, Any] | None = None  # RewriteSummary.as_dict() when it rewrites
    recaption: dict[str, Any] | None = None  # RecaptionSummary.as_dict() when it recaptions
    output_dir: str = ""  # where the curated shards are: SEL/output or output.dir
    selection_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class RunResult(SelectResult):
    """What ``run`` did: the selection, plus the scoring pass that preceded it."""

    scoring: ScoreResult | None = None

    @property
    def run_dir(self) -> Path:
        return self.dir

    @property
    def shards_resumed(self) -> int:
        """Shards for which this run computed nothing (every score was in the store)."""
        return self.scoring.shards - len(self.scoring.computed) if self.scoring else self.shards


def default_store(pipeline: Pipeline, out: str | Path) -> str:
    return pipeline.store if pipeline.store is not None else str(Path(out).absolute() / "store")


def selection_dir(out: str | Path, name: str) -> Path:
    return Path(out).absolute() / SELECTIONS / name


def list_refs(pipeline: Pipeline) -> list[ShardRef] | None:
    """The input shards of a pipeline with tar input (None for a URL list)."""
    return list_shards(pipeline.input.shards) if pipeline.input.shards is not None else None


# --------------------------------------------------------------------------------------------
# score


def score(pipeline: Pipeline | str | Path, store: str | Path | Store, *,
          address: str | None = None, progress: bool | None = None,
          session: RaySession | None = None, measure_transfer: bool = False,
          local: bool = False) -> ScoreResult:
    """Score the pipeline's input into ``store`` (see the module docs). ``local`` scores in
    this process without Ray (small pools, tests, debugging)."""
    p = pipeline if isinstance(pipeline, Pipeline) else load_pipeline(pipeline)
    st = store if isinstance(store, Store) else Store(store)
    if st.local_root is not None:
        as_directory(st.local_root, "the store")
    listed = list_refs(p)  # a wrong input path costs nothing
    own = session is None
    session = session or RaySession(address or p.run.address, progress)
    try:
        if st.local_root is not None and read_only_dir(st.local_root):
            # An auditor's copy: nothing is written (no lock, log or record); it works when
            # every score is stored, and otherwise says what would need scoring.
            if listed is None:
                raise CurateError(f"the store {st.location} is read-only: a URL list cannot be "
                                  "downloaded into it", "give a writable store")
            nowhere = RunLog(Path(os.devnull))
            try:
                return score_pool(
                    p.scorer_stages(), listed, st, session=session, rlog=nowhere,
                    progress=progress, batch_size=p.run.batch_size,
                    max_member_bytes=p.input.max_member_bytes, max_retries=p.run.max_retries,
                    workers=p.run.workers, verify=p.input.verify == "always", local=True,
                    read_only=True)
            finally:
                nowhere.close()
        with st.lock():
            root = st.local_root
            if root is not None:
                remove_leftovers(root)
            rlog = RunLog(Path(root / LOG) if root is not None else Path(os.devnull))
            doing = f"the store {st.location}"
            rlog.event("score_start", pipeline=p.name, source=p.source, curate=__version__,
                       pid=os.getpid())
            try:
                refs = listed if listed is not None else _download(p, st, rlog, session)
                rlog.event("shards_listed", count=len(refs))
                return score_pool(
                    p.scorer_stages(), refs, st, session=session, rlog=rlog, progress=progress,
                    batch_size=p.run.batch_size, max_member_bytes=p.input.max_member_bytes,
                    max_retries=p.run.max_retries, workers=p.run.workers,
                    verify=p.input.verify == "always",
                    input_section=p.input.model_dump(mode="json"),
                    measure_transfer=measure_transfer, local=local)
            except BaseException as exc:
                full = disk_error(exc, doing)
                rlog.event("score_failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
                if full is not None:
                    raise full from exc
                raise
            finally:
                rlog.close()
    finally:
        if own:
            session.close()


def _download(p: Pipeline, store: Store, rlog: RunLog, session: RaySession) -> list[ShardRef]:
    from curate.ingest.download import download

    root = store.local_root
    if root is None:
        raise CurateError("a URL list can be downloaded into a local store only (for now)",
                          "give the pipeline a local `store:` path")
    # img2dataset uses the run's Ray when it is up, else its own processes
    return download(p.input, root / "download", rlog)


# --------------------------------------------------------------------------------------------
# select


def select(store: str | Path | Store, selection: Selection | Pipeline, out: str | Path, *,
           address: str | None = None, progress: bool | None = None,
           session: RaySession | None = None, versions: list[Version] | None = None,
           pool: list[PoolShard] | None = None, check_inputs: bool = True,
           workers: int | None = None) -> SelectResult:
    """Apply ``selection`` to the scores in ``store``, into the directory ``out``; computes
    no score (a rule on a column no stored scorer has fails before anything is written).
    The pool is selected in ``workers`` partitions (``curate.select.partitioned``): in this
    process by default; on Ray actors when more than one is asked for or a cluster is named
    (then one per CPU of the cluster unless ``workers`` says). The manifest is the same
    either way."""
    if workers is not None and workers < 1:
        raise CurateError(f"--workers {workers}: give at least 1",
                          "1 selects in this process; more select in that many partitions "
                          "on Ray")
    st = store if isinstance(store, Store) else Store(store)
    sel = selection.selection() if isinstance(selection, Pipeline) else selection
    out_dir = as_directory(out, "the selection directory")
    if versions is None and sel.scorers is not None:
        versions = _stored_versions(st, sel)
    source = PoolSource.of(st, versions, pool)
    meta = None
    columns = source.columns()
    if sel.metadata is not None:
        meta = SelectMetadata(sel.metadata, metadata_files(sel.metadata))
        clash = sorted(set(sel.metadata.columns) & set(columns))
        if clash:
            raise ConfigError(f"{sel.source}: metadata column {clash[0]!r} is also a column of "
                              f"the store {st.location}", "leave it out of metadata.columns")
        columns = {**columns, **sel.metadata_columns()}
    check_selection(sel, columns, set(source.sidecar_columns()), st.location)
    if check_inputs:
        _check_inputs(source, sel.output.write_shards)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno not in READ_ONLY:
            raise
        raise CurateError(f"the selection directory {out_dir} cannot be created "
                          f"({os.strerror(exc.errno or 0).lower()})",
                          "give --out a writable directory") from None
    own = session is None
    session = session or RaySession(address or sel.run.address, progress)
    try:
        _preflight(sel, session)
        with RunLock(out_dir):
            return _select_locked(st, sel, source, out_dir, progress, session, meta, workers)
    finally:
        if own:
            session.close()


def _preflight(sel: Selection, session: RaySession) -> None:
    """Checks of the rewrite and recaption backends that need the cluster (e.g. vllm's
    GPUs)."""
    if sel.rewrite is None and sel.recaption is None:
        return
    session.ensure()
    if sel.rewrite is not None:
        from curate.rewrite.stage import preflight

        preflight(sel.rewrite)
    if sel.recaption is not None:
        from curate.recaption.stage import preflight as recaption_preflight

        recaption_preflight(sel.recaption)


def _stored_versions(store: Store, sel: Selection) -> list[Version]:
    """The store versions of the scorers a selection names (their parameters must have been
    scored into the store)."""
    meta = store.meta()
    if meta.reader is None:
        raise CurateError(f"{store.location} is not a scored store (no store.json)")
    out = []
    for spec in scorer_versions(sel.scorer_stages() or [], meta.reader):
        v = meta.version(spec.label, spec.version)
        if v is None:
            have = meta.scorers.get(spec.label)
            why = ("the store has no such scorer" if have is None else
                   f"the store has it with other parameters (versions: "
                   f"{', '.join(sorted(have['versions']))})")
            raise CurateError(f"{sel.source}: scorer {spec.label} with these parameters is not "
                              f"in the store {store.location}: {why}",
                              f"score the pool with it first: curate score {sel.source} "
                              f"--store {store.location}")
        out.append(v)
    return out


def _check_inputs(source: PoolSource, need: bool) -> None:
    """A selection run on its own (not right after scoring) checks that the input shards are
    the ones that were scored, by their stamps: a changed shard must be scored again first."""
    changed, gone = [], []
    for s in source.shards:
        stamp = shard_stamp(s.url, s.failures)
        if stamp == s.stamp:
            continue
        if stamp.split("|")[0] == "absent" and s.failures is None:
            gone.append(s.shard)
        else:
            changed.append(s.shard)
    if changed:
        names = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5
                                          else "")
        raise CurateError(f"{len(changed)} input shards changed since they were scored: "
                          f"{names}", "score the pool again (curate score, or the same "
                          "`curate run`): unchanged shards cost nothing, changed ones are "
                          "rescored")
    if gone and need:
        raise CurateError(f"{len(gone)} input shards are not there to copy samples from: "
                          f"{', '.join(gone[:5])}", "restore them, or select without writing "
                          "shards (no --write-shards, no `output: {write_shards: true}`)")


def _select_locked(store: Store, sel: Selection, source: PoolSource, out_dir: Path,
                   progress: bool | None, session: RaySession,
                   meta: SelectMetadata | None = None,
                   workers: int | None = None) -> SelectResult:
    t0 = time.perf_counter()
    leftovers = remove_leftovers(out_dir)
    rlog = RunLog(out_dir / "log.jsonl")
    rlog.event("select_start", selection=sel.name, source=sel.source, store=store.location,
               curate=__version__, pid=os.getpid(), leftovers_removed=leftovers,
               scorers={v.label: v.version for v in source.versions})
    doing = f"the selection directory {out_dir}"
    try:
        # Paths absolute: the selection is audited (and rerun) from any directory.
        write_text(yaml.safe_dump(absolute_paths(sel.raw), sort_keys=False), out_dir / SAVED)
        record = _selection_record(store, source, out_dir)
        # The score columns that go into each output sample's json (``curate write`` reads
        # them here: the manifest also holds columns that are not scores).
        record["json_columns"] = [c for c in source.columns() if c not in SAMPLE_COLUMNS] + \
            list(sel.metadata_columns()) + list(sel.selector_columns())
        if meta is not None:
            record["metadata_files"] = file_stamps(meta.files)
        write_text(json.dumps(record, indent=1), out_dir / "selection.json")
        doing = f"the manifest in {out_dir}"
        t_sel = time.perf_counter()
        on_ray = (workers or 1) > 1 or session.address is not None
        if on_ray:
            session.ensure()
            if workers is None:
                import ray

                workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        selected = select_pool(sel.select, source, out_dir, meta, Notes(progress),
                               workers=workers or 1, on_ray=on_ray)
        write_parquet(_funnel_table(selected), out_dir / "funnel.parquet")
        write_parquet(_shards_table(source.shards, selected), out_dir / "shards.parquet")
        stages = stage_totals(store, source.shards, source.versions, source.reader)
        write_parquet(_stages_table(stages), out_dir / "stages.parquet")
        rlog.event("selected", samples=selected.samples, kept=selected.kept,
                   seconds=round(time.perf_counter() - t_sel, 3), steps=selected.seconds,
                   partitions=selected.partitions, on_ray=selected.on_ray)
        if sel.rewrite is not None:
            doing = f"caption rewrites in {out_dir}"
            rewrite = _rewrite(sel, store, out_dir, rlog, progress, session)
        else:
            rewrite = None
            (out_dir / "rewrites.parquet").unlink(missing_ok=True)  # from an earlier run
        refs = [ShardRef(s.url, s.shard, s.failures) for s in source.shards]
        if sel.recaption is not None:
            doing = f"synthetic captions in {out_dir}"
            recaption = _recaption(sel, store, source, refs, out_dir, rlog, progress, session)
        else:
            recaption = None
            (out_dir / "recaptions.parquet").unlink(missing_ok=True)  # from an earlier run
        out_location = _output_location(sel, out_dir)
        if sel.output.write_shards:
            doing = f"the output shards in {out_location}"
            n_out = _write_shards(sel, record["json_columns"], refs, out_dir, rlog, progress,
                                  session)
        else:
            n_out = 0
            rlog.event("no_shards", hint=f"curate write {out_dir}")
        doing = f"the catalogue in {out_dir}"
        write_catalog(out_dir)
        result = SelectResult(
            dir=out_dir, store=store.location, samples=selected.samples, kept=selected.kept,
            funnel=[(f.reason, f.dropped) for f in selected.funnel], shards=len(source.shards),
            output_shards=n_out, seconds=round(time.perf_counter() - t0, 3), stages=stages,
            rewrite=rewrite, recaption=recaption, output_dir=out_location,
            selection_seconds=selected.seconds)
        stats = {"selection": sel.name, "store": store.location, "samples": result.samples,
                 "kept": result.kept,
                 "funnel": [{"reason": r, "dropped": n} for r, n in result.funnel],
                 "shards": result.shards, "output_shards": n_out, "output_dir": out_location,
                 "seconds": result.seconds, "stages": stages,
                 "scorers": {v.label: v.version for v in source.versions}}
        if rewrite is not None:
            stats["rewrite"] = rewrite
        if recaption is not None:
            stats["recaption"] = recaption
        write_text(json.dumps(stats, indent=1), out_dir / "stats.json")
    except BaseException as exc:
        full = disk_error(exc, doing)
        rlog.event("select_failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0],
                   disk_full=full is not None)
        rlog.close()
        if full is not None:
            raise full from exc
        raise
    rlog.event("select_end", samples=result.samples, kept=result.kept, seconds=result.seconds)
    rlog.close()
    return result


def _output_location(sel: Selection, sel_dir: Path) -> str:
    return resolve(sel.output.dir if sel.output.dir is not None else sel_dir / "output")


def _write_shards(sel: Selection, columns: list[str], refs: list[ShardRef], sel_dir: Path,
                  rlog: RunLog, progress: bool | None, session: RaySession) -> int:
    from curate.write.output import write_output

    return write_output(sel, columns, refs, sel_dir, rlog, progress, session,
                        sel.run.max_retries)


def _selection_record(store: Store, source: PoolSource, out_dir: Path) -> dict[str, Any]:
    rel = None
    root = store.local_root
    if root is not None:
        rel = os.path.relpath(root, out_dir)
    return {"format": 1, "store": store.location, "store_relative": rel,
            "reader": source.reader, "shards": len(source.shards),
            "scorers": [{"label": v.label, "version": v.version, "name": v.name,
                         "params": v.params} for v in source.versions]}


def _rewrite(sel: Selection, store: Store, out_dir: Path, rlog: RunLog, progress: bool | None,
             session: RaySession) -> dict[str, Any]:
    from curate.rewrite.stage import rewrite_kept

    assert sel.rewrite is not None
    session.ensure()
    root = store.local_root
    cache = Path(sel.rewrite.cache) if sel.rewrite.cache else (
        root / "rewrite_cache.sqlite" if root is not None else out_dir / "rewrite_cache.sqlite")
    summary = rewrite_kept(sel.rewrite, out_dir, max_retries=sel.run.max_retries,
                           event=rlog.event, cache=cache,
                           progress=lambda n: Progress(n, "rewriting", progress, "caption"))
    return summary.as_dict()


def _recaption(sel: Selection, store: Store, source: PoolSource, refs: list[ShardRef],
               out_dir: Path, rlog: RunLog, progress: bool | None,
               session: RaySession) -> dict[str, Any]:
    from curate.recaption.stage import recaption_kept

    assert sel.recaption is not None
    session.ensure()
    root = store.local_root
    cache = Path(sel.recaption.cache) if sel.recaption.cache else (
        root / "rewrite_cache.sqlite" if root is not None else out_dir / "rewrite_cache.sqlite")
    summary = recaption_kept(sel.recaption, out_dir, refs, source=source,
                             max_retries=sel.run.max_retries, event=rlog.event, cache=cache,
                             progress=lambda n: Progress(n, "captioning", progress, "caption"))
    return summary.as_dict()


def _stages_table(stages: dict[str, dict[str, float | int]]) -> pa.Table:
    return pa.Table.from_pylist(
        [{"stage": k, **v} for k, v in stages.items()],
        schema=pa.schema({"stage": pa.string(), "samples": pa.int64(), "errors": pa.int64(),
                          "skipped": pa.int64(), "seconds": pa.float64()}))


def _funnel_table(sel: Selected) -> pa.Table:
    rows, remaining = [], sel.samples
    for i, f in enumerate(sel.funnel):
        remaining -= f.dropped
        rows.append({"step": i + 1, "stage": f.stage, "reason": f.reason, "dropped": f.dropped,
                     "remaining": remaining})
    return pa.Table.from_pylist(rows, schema=pa.schema(
        {"step": pa.int32(), "stage": pa.string(), "reason": pa.string(),
         "dropped": pa.int64(), "remaining": pa.int64()}))


def _shards_table(shards: list[PoolShard], selected: Selected) -> pa.Table:
    rows = []
    for s in shards:
        n, errors = selected.shard_counts.get(s.shard, (0, 0))
        rows.append({"shard": s.shard, "url": s.url, "failures": s.failures,
                     "status": s.status, "samples": n,
                     "errors": errors, "read_error": s.read_error, "attempts": s.attempts,
                     "seconds": s.seconds, "node": s.node, "digest": s.digest,
                     "error": s.error})
    return pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)


# --------------------------------------------------------------------------------------------
# write


@dataclass
class WriteResult:
    """What ``write`` did."""

    dir: Path  # the selection directory
    output_dir: str  # where the curated shards are
    shards: int  # output shards (written now or already current)
    samples: int  # kept samples in them
    seconds: float


def write(selection: str | Path, *, dir: str | None = None,
          samples_per_shard: int | None = None, address: str | None = None,
          progress: bool | None = None, session: RaySession | None = None) -> WriteResult:
    """Write the curated webdataset shards of a finished selection (``curate write``): its kept
    samples, copied from the input shards and checked against the scored bytes, into
    ``output.dir`` of the selection (or ``dir``), as ``curate select --write-shards`` would
    have. A selection writes no shards unless asked: it is a query over the store. Shards that
    are already current are not written again."""
    from curate.audit.catalog import resolve_selection
    from curate.config import load_selection

    sel_dir = resolve_selection(selection, "stats.json").absolute()
    record = json.loads((sel_dir / "selection.json").read_text())
    if "json_columns" not in record:
        raise CurateError(f"{sel_dir} was selected by an older curate: its record does not say "
                          "which columns are scores", "run its `curate select` (or "
                          "`curate run`) command again, then write it")
    sel = load_selection(sel_dir / SAVED)
    update: dict[str, Any] = {"write_shards": True}
    if dir is not None:
        update["dir"] = dir
    if samples_per_shard is not None:
        update["samples_per_shard"] = samples_per_shard
    sel.output = type(sel.output).model_validate({**sel.output.model_dump(), **update})
    shards = pq.read_table(sel_dir / "shards.parquet",
                           columns=["url", "shard", "failures"]).to_pylist()
    refs = [ShardRef(r["url"], r["shard"], r["failures"]) for r in shards]
    _check_present(refs)
    location = _output_location(sel, sel_dir)
    t0 = time.perf_counter()
    own = session is None
    session = session or RaySession(address or sel.run.address, progress)
    try:
        with RunLock(sel_dir):
            rlog = RunLog(sel_dir / "log.jsonl")
            rlog.event("write_start", dir=location, curate=__version__, pid=os.getpid())
            try:
                n = _write_shards(sel, record["json_columns"], refs, sel_dir, rlog, progress,
                                  session)
                stats = json.loads((sel_dir / "stats.json").read_text())
                stats.update(output_shards=n, output_dir=location)
                write_text(json.dumps(stats, indent=1), sel_dir / "stats.json")
            except BaseException as exc:
                full = disk_error(exc, f"the output shards in {location}")
                rlog.event("write_failed",
                           error=f"{type(exc).__name__}: {exc}".splitlines()[0])
                if full is not None:
                    raise full from exc
                raise
            finally:
                rlog.close()
    finally:
        if own:
            session.close()
    samples = int(stats["kept"])
    seconds = round(time.perf_counter() - t0, 3)
    return WriteResult(dir=sel_dir, output_dir=location, shards=n, samples=samples,
                       seconds=seconds)


def _check_present(refs: list[ShardRef]) -> None:
    """Every input tar the samples are copied from is there, before anything is written."""
    gone = [r.shard_id for r in refs
            if r.failures is None and shard_stamp(r.url).split("|")[0] == "absent"]
    if gone:
        names = ", ".join(gone[:5]) + (f" and {len(gone) - 5} more" if len(gone) > 5 else "")
        raise CurateError(f"{len(gone)} input shards are not there to copy samples from: "
                          f"{names}", "restore them (the selection itself needs only the "
                          "store: query it, diff it and export its uids without them)")


# --------------------------------------------------------------------------------------------
# run


def run(pipeline: Pipeline | str | Path, out: str | Path, *, address: str | None = None,
        progress: bool | None = None, name: str | None = None,
        measure_transfer: bool = False) -> RunResult:
    """Score the pipeline into its store, then select into ``OUT/selections/<name>`` (see the
    module docs). Raises ``ShardFailed`` when shards still fail after their retries (the
    finished ones are kept for the next attempt)."""
    p = pipeline if isinstance(pipeline, Pipeline) else load_pipeline(pipeline)
    out = as_directory(out, "--out")
    store = Store(default_store(p, out))
    sel = p.selection()
    if name is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise CurateError(f"selection name {name!r}: use letters, digits, '_', '-' and '.'",
                              "it names the directory OUT/selections/<name>")
        sel.name = name
    dest = selection_dir(out, sel.name)
    t0 = time.perf_counter()
    with RaySession(address or p.run.address, progress) as session:
        _preflight(sel, session)  # a rewrite or recaption that cannot run fails before scoring
        scored = score(p, store, progress=progress, session=session,
                       measure_transfer=measure_transfer)
        selected = select(store, sel, dest, progress=progress, session=session,
                          versions=scored.versions, pool=scored.pool, check_inputs=False)
    fields = {k: getattr(selected, k) for k in SelectResult.__dataclass_fields__}
    fields["seconds"] = round(time.perf_counter() - t0, 3)
    result = RunResult(**fields, scoring=scored)
    _add_scoring_to_stats(dest, scored)
    return result


def _add_scoring_to_stats(dest: Path, scored: ScoreResult) -> None:
    path = dest / "stats.json"
    stats = json.loads(path.read_text())
    stats["scoring"] = {"store": scored.store, "shards": scored.shards,
                        "seconds": scored.seconds, "changed": scored.changed,
                        "computed": {k: v.computed for k, v in scored.scorers.items()},
                        "reused": {k: v.reused for k, v in scored.scorers.items()},
                        "read": {"computed": scored.reader.computed,
                                 "reused": scored.reader.reused}}
    write_text(json.dumps(stats, indent=1), path)
