"""``curate validate PIPELINE`` and ``curate run --dry-run``: every check a run makes before it
starts, and the plan it would follow, without starting Ray or writing anything.

``dry_run(pipeline, store, out)`` loads the pipeline (all of its validation: keys, stages,
parameters, columns, plugins), lists the input shards, reads what the store holds (nothing is
created: a store that does not exist is reported as new), identifies each shard as a scoring
pass would (``curate.score.plan.identify``) but without hashing, and plans per shard what the
reader and each scorer would compute or reuse (``curate.score.plan.plan``). Shards whose stamp
changed are counted: a run hashes them first, and rescores them only when their bytes changed
(the plan counts them as unchanged). Each scorer that would compute runs its ``check()`` (model
weights that cannot be had fail here, as they would at the start of the run). Then the
selection steps in order (the rule's SQL, a selector's reasons), the selection and output
directories, the rewrite and the recaption are listed. A URL list is not downloaded: its rows
are counted.
"""

from __future__ import annotations

import re
import shutil
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from curate.config import Pipeline
from curate.io.shards import ShardRef
from curate.stages.base import Rule, Selector


@dataclass
class ScorerPlan:
    """One scorer (or the reader, label ``(read)``): its version and how many shards it would
    compute and reuse."""

    label: str
    version: str
    compute: int
    reuse: int


@dataclass
class StepPlan:
    """One selection step: its place, kind, name, drop reasons and what it keeps."""

    where: str
    kind: str
    name: str
    reasons: list[str]
    detail: str


@dataclass
class DryRun:
    """What a run of ``pipeline`` would do (see the module docs)."""

    pipeline: str
    source: str
    input: str  # the input as listed: N shards, or the URL list
    shards: int | None  # None for a URL list (downloaded at run time)
    store: str
    store_exists: bool
    scorers: list[ScorerPlan]
    stamp_changed: list[str]  # shards a run hashes again first
    new_shards: list[str]  # shards the store has never seen
    steps: list[StepPlan]
    selection_dir: str
    output: str
    rewrite: str | None
    recaption: str | None = None
    checked: list[str] = field(default_factory=list)  # scorers whose check() ran

    @property
    def todo(self) -> int:
        """Shards a run would read or score (0: the store has everything)."""
        return max((s.compute for s in self.scorers), default=0)

    def format(self) -> str:
        """The plan as ``curate validate`` prints it."""
        lines = [f"pipeline {self.pipeline} ({self.source}): valid"]
        lines.append(f"input: {self.input}")
        state = "exists" if self.store_exists else "new: everything is computed"
        lines.append(f"store: {self.store} ({state})")
        if self.scorers:
            width = max(len(s.label) for s in self.scorers) + 2
            lines.append(f"  {'scorer':<{width}}{'version':<18}{'compute':>8}{'reuse':>7}")
            for s in self.scorers:
                lines.append(f"  {s.label:<{width}}{s.version:<18}{s.compute:>8}{s.reuse:>7}")
        if self.new_shards:
            lines.append(f"  {len(self.new_shards)} shards are new to the store")
        if self.stamp_changed:
            names = ", ".join(self.stamp_changed[:5]) + (" ..." if len(
                self.stamp_changed) > 5 else "")
            lines.append(f"  {len(self.stamp_changed)} shards changed size or modification time "
                         f"since they were scored ({names}): a run hashes them first and "
                         "rescores only those whose bytes changed (counted here as unchanged)")
        if self.checked:
            lines.append(f"  checked (models and files): {', '.join(self.checked)}")
        lines.append(f"select ({len(self.steps)} steps, in order; each sees what the earlier "
                     "ones kept):" if self.steps else "select: no steps (every sample is kept)")
        w_kind = max((len(f"{s.kind} {s.name}") for s in self.steps), default=0) + 2
        width = max(60, shutil.get_terminal_size((100, 24)).columns)
        for i, s in enumerate(self.steps, start=1):
            m = re.search(r"\(preset (\S+?)\[", s.where)
            text = (f"{', '.join(s.reasons)}{': ' + s.detail if s.detail else ''}"
                    f"{f' (preset {m.group(1)})' if m else ''}")
            head = f"  {i:>2}. {s.kind + ' ' + s.name:<{w_kind}}"
            lines += textwrap.wrap(text, width=width, initial_indent=head,
                                   subsequent_indent=" " * len(head))
        lines.append(f"selection: {self.selection_dir}")
        lines.append(f"output: {self.output}")
        if self.rewrite:
            lines.append(f"rewrite: {self.rewrite}")
        if self.recaption:
            lines.append(f"recaption: {self.recaption}")
        if self.shards is None:
            lines.append("Ray: not started (a run downloads the URL list, then scores)")
        elif self.todo:
            lines.append(f"Ray: not started (a run starts it for the {self.todo} shards to "
                         "score)")
        else:
            lines.append("Ray: not started (a run computes no score: the store has them all)")
        return "\n".join(lines)


def dry_run(pipeline: Pipeline, store: str | Path, selection_dir: str | Path) -> DryRun:
    """Plan a run of ``pipeline`` into ``store`` and ``selection_dir`` (see the module docs);
    raises what the run would raise before starting (``ConfigError``, ``CurateError``)."""
    from curate.io.fsdir import resolve
    from curate.io.shards import list_shards
    from curate.score.plan import Identity, identify, plan, reader_fingerprint, scorer_versions
    from curate.store.identity import shard_stamp
    from curate.store.store import Store

    st = Store(store)
    reader = reader_fingerprint(pipeline.input.max_member_bytes)
    versions = scorer_versions(pipeline.scorer_stages(), reader)
    exists = st.exists()
    if pipeline.input.shards is not None:
        refs = list_shards(pipeline.input.shards)
        shown = pipeline.input.shards if isinstance(pipeline.input.shards, str) else ", ".join(
            pipeline.input.shards)
        input_text = f"{len(refs)} shards ({shown})"
    else:
        refs = []
        input_text = f"URL list {pipeline.input.urls} ({_url_rows(pipeline)} rows; a run " \
            "downloads the rows not downloaded before)"
    records = {r.shard: r for r in st.pool()} if exists else {}
    rehash: list[ShardRef] = []

    def assume_unchanged(to_hash: list[ShardRef]) -> dict[str, str]:
        rehash.extend(to_hash)
        out = {}
        for ref in to_hash:
            rec = records.get(ref.shard_id)
            out[ref.shard_id] = rec.digest if rec is not None and rec.digest else "0" * 64
        return out

    if exists:
        identities = identify(st, refs, reader, pipeline.input.verify == "always",
                              assume_unchanged, records)
    else:
        identities = {r.shard_id: Identity(shard_stamp(r.url, r.failures), None) for r in refs}
    plans = plan(st, refs, versions, reader, identities) if exists else []
    rows = [ScorerPlan("(read)", reader, sum(p.read_base for p in plans) if exists else
                       len(refs), sum(not p.read_base for p in plans))]
    checked = []
    for v in versions:
        compute = sum(v.label in p.compute for p in plans) if exists else len(refs)
        rows.append(ScorerPlan(v.label, v.version, compute, len(refs) - compute))
        if compute or pipeline.input.shards is None:
            v.scorer.check()
            checked.append(v.label)
    new = [r.shard_id for r in refs if identities[r.shard_id].digest is None]
    steps = []
    for step in pipeline.select:
        stage = step.stage
        if isinstance(stage, Rule):
            steps.append(StepPlan(step.where, "rule", stage.name, [stage.reason],
                                  f"keep {stage.keep_sql('pool')}"))
        elif isinstance(stage, Selector):
            extra = ", ".join(stage.extra_columns())
            steps.append(StepPlan(step.where, "selector", stage.name, list(stage.reasons()),
                                  f"adds {extra}" if extra else ""))
    out = pipeline.output
    sel_dir = Path(selection_dir).absolute()
    dest = resolve(out.dir) if out.dir is not None else str(sel_dir / "output")
    if out.write_shards:
        output = f"{dest}: curated shards of {out.samples_per_shard} samples" + (
            f", one directory per {out.split_by}" if out.split_by else "") + (
            f", faces in {out.blur_faces} blurred" if out.blur_faces else "")
    else:
        output = (f"no shards (a selection is a query): manifest and catalogue only; "
                  f"`curate write {sel_dir}` (or --write-shards) writes them to {dest}")
    rewrite = None
    if pipeline.rewrite is not None:
        rw = pipeline.rewrite
        rewrite = f"{rw.rewrites} rewrites per kept caption by {rw.backend} {rw.model}"
    recaption = None
    if pipeline.recaption is not None:
        rc = pipeline.recaption
        signals = ("no ALIP signals" if rc.clip is None else
                   "ALIP signals from the stored embeddings of " +
                   ("the clip scorer" if rc.clip == "auto" else rc.clip))
        recaption = (f"{rc.captions} synthetic caption{'s' if rc.captions > 1 else ''} per kept "
                     f"image by {rc.backend} {rc.model}, {signals}")
    return DryRun(pipeline=pipeline.name, source=pipeline.source, input=input_text,
                  shards=len(refs) if pipeline.input.shards is not None else None,
                  store=st.location, store_exists=exists, scorers=rows,
                  stamp_changed=sorted(r.shard_id for r in rehash), new_shards=new,
                  steps=steps, selection_dir=str(sel_dir), output=output, rewrite=rewrite,
                  recaption=recaption,
                  checked=checked)


def _url_rows(pipeline: Pipeline) -> int:
    from curate.ingest.urls import read_url_list

    return read_url_list(pipeline.input).table.num_rows
