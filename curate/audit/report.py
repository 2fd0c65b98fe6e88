"""``curate report``: an HTML report that explains a finished selection to an auditor.

The page (``SEL/report/index.html``) shows the selection's configuration and timings, the
selection funnel, the score distributions of kept and dropped samples with the rule thresholds,
for each ``threshold`` rule the curve of how many samples would be kept as its threshold moves
(the chosen one marked), languages and caption lengths, selector reports (MetaCLIP's
entry-count curve), caption rewrites, synthetic captions (status, ALIP's signals, examples
beside their image), the input shards that failed, were truncated or had
sample errors, and a gallery of kept and dropped samples. Every drop reason, and the kept
samples, also get their own gallery in ``SEL/report/gallery/``: pages of ``per_page``
thumbnails, at most ``max_pages`` pages each (the first samples by uid; the page says how many
were left out). Each card shows the scores that the step which dropped the sample reads, a few
key scores, the error of a failed sample, and the original beside a duplicate.

Every page is self-contained: images are embedded as ``data:`` URIs, pages link to each other
by relative paths, and the plots are also written as PNG files next to the index. Thumbnails
are re-encoded as small JPEGs for the report only; the run's shards are never touched.

The manifest is never loaded whole: histograms, curves, language counts and the galleries'
samples are aggregations and ``LIMIT`` queries in DuckDB over the manifest dataset, so a
100M-row run's report needs about as much memory as the demo's, and its size is bounded by
``per_page`` × ``max_pages`` thumbnails per reason.

The selection's steps come from ``SEL/pipeline.yaml``; when it does not load, the report is
still written, without thresholds or per-step scores, and says why at the top (and the reason
is also issued as a ``ReportWarning``).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import re
import tarfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.errors import CurateError
from curate.io.dataset import MANIFEST, manifest_path, num_rows, read_schema, scan_sql
from curate.saved import SAVED, saved_selection

if TYPE_CHECKING:
    import duckdb
    import numpy as np
    import pyarrow as pa
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from curate.config import Selection
    from curate.stages.base import Rule

MAX_SCORE_PLOTS = 12
MAX_CURVES = 12  # kept-vs-threshold curves (one per bound of a threshold rule)
CURVE_POINTS = 41  # thresholds per curve, evenly spaced over the candidates' values
TOP_LANGS = 15
THUMB_PX = 160
CAPTION_CHARS = 140
REWRITE_EXAMPLES = 6
PER_PAGE = 48  # thumbnails per gallery page
MAX_PAGES = 20  # gallery pages per reason (and for the kept samples)
MAX_SHARD_ROWS = 50  # rows of the per-shard problems table
CARD_SCORES = 8  # score rows on a card
# Thumbnails are read from at most this many input shards (those holding the most shown
# samples): reading a member streams its shard up to it, so this bounds the report's reads.
MAX_THUMB_SHARDS = 256
# Scores shown on every card when the sample has them (after the columns its step reads).
KEY_SCORES = ("clip_score", "caption_words", "lang", "lang_score", "width", "height")
# Plot text sizes (points): legends and tick labels stay readable when a plot is scaled down
# to fit its column of the page.
FONT = 10
TITLE_FONT = 12
KEPT_COLOR = "#2b8a3e"
DROPPED_COLOR = "#c92a2a"
# Manifest columns that identify a sample rather than score it (and rewrites_ok and
# recaptions_ok, which the rewrites and synthetic captions sections cover).
IDENTITY_COLUMNS = {"index", "uid", "shard", "key", "image_member", "url", "caption", "status",
                    "error_stage", "error", "reason", "kept", "duplicate_of", "rewrites_ok",
                    "recaptions_ok",
                    # perceptual hashes are bit patterns: a histogram of them means nothing
                    "phash", "dhash", "whash"}
# Columns naming the sample that a dropped one duplicates (exact_dedup, semdedup, near_dedup).
ORIGINAL_COLUMNS = ("duplicate_of", "semantic_duplicate_of", "near_duplicate_of")


class ReportWarning(UserWarning):
    """Something the report could not show (e.g. the saved pipeline does not load)."""


@dataclass(frozen=True)
class Bound:
    """One bound of a ``threshold`` rule, drawn as a vertical line on its column's histogram."""

    op: str
    value: float
    reason: str
    field: str = ""  # the rule's parameter: min, max, gt or lt


@dataclass
class _Page:
    """The report being assembled: HTML sections and the plots written so far."""

    out_dir: Path
    sections: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)

    def plot(self, fig: Figure, name: str, alt: str) -> str:
        """Save ``fig`` as ``name``.png next to the page; return its ``<img>`` tag."""
        from curate.io.atomic import atomic_path

        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        data = buf.getvalue()
        path = self.out_dir / f"{name}.png"
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        self.plots.append(path)
        return _img(data, "image/png", alt, "plot")


def write_report(run_dir: str | Path, out: str | Path | None = None, gallery: int = 12,
                 per_page: int = PER_PAGE, max_pages: int = MAX_PAGES) -> Path:
    """Write the HTML report of the finished selection in ``run_dir`` (a selection directory,
    or a run's ``--out`` holding one selection); return its path.

    ``out`` defaults to ``SEL/report/index.html``; the plots are saved as PNG files in the same
    directory, and the per-reason galleries in its ``gallery/`` folder (``per_page`` samples a
    page, at most ``max_pages`` pages per reason; ``max_pages=0`` writes none). ``gallery`` is
    the number of kept and of dropped samples shown on the page itself (each).
    """
    from curate.audit.catalog import resolve_selection
    from curate.io.rundir import writing_into

    if per_page <= 0 or max_pages < 0:
        raise CurateError("per_page must be 1 or more and max_pages 0 or more")
    run = resolve_selection(run_dir, MANIFEST)
    if not (run / "funnel.parquet").is_file():
        raise CurateError(f"{run} is not a finished selection (no funnel.parquet)",
                          "run the same command again to resume it")
    dest = Path(out) if out is not None else run / "report" / "index.html"
    # a read-only selection (an auditor's copy) is reported elsewhere with --out
    with writing_into(dest.parent, "the report's directory",
                      f"write it elsewhere: curate report {run_dir} --out DIR/index.html"):
        return _write_report(run, dest, gallery, per_page, max_pages)


def _write_report(run: Path, dest: Path, gallery: int, per_page: int, max_pages: int) -> Path:
    from curate.io.atomic import write_text

    dest.parent.mkdir(parents=True, exist_ok=True)
    page = _Page(dest.parent)
    data = _RunData.load(run)
    gal = _galleries(run, data, dest, gallery, per_page, max_pages)
    page.sections.append(_header(data))
    page.sections.append(_funnel(page, data))
    page.sections.append(_scores(page, data))
    page.sections.append(_curves(page, data))
    page.sections.append(_captions(page, data))
    page.sections.append(_selector_reports(run))
    page.sections.append(_rewrites(run, data))
    page.sections.append(_recaptions(run, data))
    page.sections.append(_shard_problems(run, data))
    page.sections.append(_gallery_index(gal, per_page, max_pages))
    page.sections.append(_gallery(gal))
    title = f"curate report: {data.name}"
    body = "\n".join(s for s in page.sections if s)
    write_text(_HTML.format(title=_e(title), css=_CSS, body=body), dest)
    return dest


def report_command(args: argparse.Namespace) -> int:
    """``curate report RUN_DIR [--out FILE] [--gallery N] [--per-page N] [--max-pages N]``;
    what the report could not show goes to stderr as ``warning:`` lines."""
    import sys

    per_page = getattr(args, "per_page", PER_PAGE)
    max_pages = getattr(args, "max_pages", MAX_PAGES)
    if args.gallery < 0:
        raise CurateError("--gallery must be 0 or more", "e.g. --gallery 12")
    if per_page < 1 or max_pages < 0:
        raise CurateError("--per-page must be 1 or more and --max-pages 0 or more",
                          "e.g. --per-page 48 --max-pages 20")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReportWarning)
        path = write_report(args.run_dir, args.out, gallery=args.gallery, per_page=per_page,
                            max_pages=max_pages)
    for w in caught:
        if issubclass(w.category, ReportWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(path)
    return 0


# --- data -----------------------------------------------------------------------------------


@dataclass
class _RunData:
    run: Path
    name: str
    description: str | None
    pipeline_text: str | None
    stats: dict[str, Any]
    funnel: list[dict[str, Any]]
    samples: int
    kept: int
    con: duckdb.DuckDBPyConnection  # view ``manifest`` over the manifest dataset
    schema: pa.Schema  # the manifest's columns
    bounds: dict[str, list[Bound]]
    selection: Selection | None = None  # the saved pipeline's steps (None: they do not load)
    selection_error: str | None = None  # why they do not load

    @classmethod
    def load(cls, run: Path) -> _RunData:
        import pyarrow.parquet as pq
        import yaml

        stats_path = run / "stats.json"
        stats: dict[str, Any] = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
        text = None
        raw: dict[str, Any] = {}
        if (run / "pipeline.yaml").is_file():
            text = (run / "pipeline.yaml").read_text(encoding="utf-8")
            try:
                loaded = yaml.safe_load(text)
            except yaml.YAMLError:  # saved_selection below says what is wrong with it
                loaded = None
            raw = loaded if isinstance(loaded, dict) else {}
        funnel = pq.read_table(run / "funnel.parquet").to_pylist()
        con = _manifest_view(manifest_path(run))
        schema = read_schema(manifest_path(run))
        samples = int(stats["samples"]) if "samples" in stats else num_rows(manifest_path(run))
        kept = int(stats["kept"]) if "kept" in stats else int(
            con.sql("SELECT count(*) FILTER (WHERE kept) FROM manifest").fetchall()[0][0])
        selection, error = None, None
        try:
            selection = saved_selection(run / SAVED)
        except CurateError as exc:
            error = str(exc)
            warnings.warn(f"{error}: the report has no thresholds and no per-step scores",
                          ReportWarning, stacklevel=3)
        return cls(run=run, name=str(raw.get("name") or stats.get("pipeline") or run.name),
                   description=raw.get("description"), pipeline_text=text, stats=stats,
                   funnel=funnel, samples=samples, kept=kept, con=con, schema=schema,
                   bounds=_bounds(selection) if selection is not None else {},
                   selection=selection, selection_error=error)


def _manifest_view(source: Path | pa.Table) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view ``manifest`` over ``source`` (a Parquet
    dataset or file, or an Arrow table)."""
    import duckdb

    con = duckdb.connect()
    if isinstance(source, Path):
        con.execute(f"CREATE VIEW manifest AS SELECT * FROM {scan_sql(source)}")
    else:
        con.register("manifest", source)
    return con


def threshold_bounds(pipeline_yaml: Path, run: Path | None = None) -> dict[str, list[Bound]]:
    """Column → the bounds of the selection's ``threshold`` rules (presets already expanded),
    read from a saved ``SEL/pipeline.yaml``.

    Only the selection steps are read (not the scorers, whose models may not load where the
    report is written). A file that does not load (missing, or a stage removed since) raises
    ``CurateError`` naming the file and why: never an empty answer that looks like "no rules".
    ``run`` is accepted for older callers and not used.
    """
    return _bounds(saved_selection(pipeline_yaml))


def _bounds(selection: Selection) -> dict[str, list[Bound]]:
    from curate.stages.threshold import Threshold, ThresholdParams

    out: dict[str, list[Bound]] = {}
    for step in selection.select:
        if not isinstance(step.stage, Threshold):
            continue
        p: ThresholdParams = step.stage.params  # type: ignore[assignment]
        for op, key, v in (("≥", "min", p.min), ("≤", "max", p.max), (">", "gt", p.gt),
                           ("<", "lt", p.lt)):
            if v is not None:
                out.setdefault(p.column, []).append(Bound(op, float(v), step.stage.reason, key))
    return out


# --- sections -------------------------------------------------------------------------------


def _header(d: _RunData) -> str:
    share = f" ({100 * d.kept / d.samples:.1f}%)" if d.samples else ""
    facts = [("samples in", f"{d.samples:,}"), ("kept", f"{d.kept:,}{share}"),
             ("dropped", f"{d.samples - d.kept:,}")]
    if "seconds" in d.stats:
        facts.append(("run time", _duration(float(d.stats["seconds"]))))
    if "shards" in d.stats:
        facts.append(("input shards", f"{int(d.stats['shards']):,}"))
    if "output_shards" in d.stats:
        facts.append(("output shards", f"{int(d.stats['output_shards']):,}"))
    cards = "".join(f'<div class="fact"><div class="v">{_e(v)}</div><div class="k">{_e(k)}</div>'
                    "</div>" for k, v in facts)
    parts = [f"<header><h1>{_e(d.name)}</h1>"]
    if d.description:
        parts.append(f'<p class="desc">{_e(d.description)}</p>')
    parts.append(f'<p class="path">selection directory: <code>{_e(str(d.run.resolve()))}'
                 '</code></p>')
    parts.append(f'<div class="facts">{cards}</div></header>')
    if d.selection_error is not None:
        parts.append(f'<p class="warn">warning: {_e(d.selection_error)}. Threshold lines, '
                     "kept-vs-threshold curves and the scores each step reads are left out."
                     "</p>")
    if d.pipeline_text is not None:
        parts.append("<details><summary>Run configuration (pipeline.yaml)</summary>"
                     f"<pre>{_e(d.pipeline_text)}</pre></details>")
    stages = _stage_rows(d)
    if stages:
        parts.append("<h2>Scorers</h2>" + _table(
            ["stage", "samples", "errors", "skipped", "seconds"], stages, numeric=(1, 2, 3, 4)))
    return "<section>" + "".join(parts) + "</section>"


def _stage_rows(d: _RunData) -> list[list[str]]:
    import pyarrow.parquet as pq

    path = d.run / "stages.parquet"
    if not path.is_file():
        return []
    return [[str(r["stage"]), f"{int(r['samples']):,}", f"{int(r['errors']):,}",
             f"{int(r.get('skipped') or 0):,}", f"{float(r['seconds']):.2f}"]
            for r in pq.read_table(path).to_pylist()]


def _funnel(page: _Page, d: _RunData) -> str:
    steps = [(str(r["reason"]), int(r["dropped"])) for r in d.funnel]
    rows = [["samples in", f"{d.samples:,}", "", ""]]
    remaining = d.samples
    for reason, n in steps:
        remaining -= n
        rows.append([f"− {reason}", f"{n:,}", _pct(n, d.samples), f"{remaining:,}"])
    rows.append(["kept", f"{d.kept:,}", _pct(d.kept, d.samples), ""])
    table = _table(["step", "samples", "share", "remaining"], rows, numeric=(1, 2, 3),
                   row_class={0: "total", len(rows) - 1: "total"})

    fig, ax = _figure(6.4, 0.9 + 0.34 * (len(steps) + 2))
    labels = ["samples in", *steps_labels(steps), "kept"]
    values = [d.samples, *(n for _, n in steps), d.kept]
    colors = ["#495057", *([DROPPED_COLOR] * len(steps)), KEPT_COLOR]
    ys = range(len(labels))
    ax.barh(list(ys), values, color=colors)
    ax.set_yticks(list(ys), labels)
    ax.invert_yaxis()
    top = max(values) if values else 1
    for y, v in zip(ys, values, strict=True):
        ax.text(v + top * 0.01, y, f"{v:,}", va="center", fontsize=FONT)
    ax.set_xlim(0, top * 1.12 or 1)
    ax.set_xlabel("samples", fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    ax.set_title("Drops per reason, in pipeline order", fontsize=TITLE_FONT)
    img = page.plot(fig, "funnel", "selection funnel")
    return ('<section><h2>Selection funnel</h2><p>Each step sees only the samples that earlier '
            'steps kept; a dropped sample counts for the first step that dropped it.</p>'
            f'<div class="split">{table}<div class="grow">{img}</div></div></section>')


def steps_labels(steps: Sequence[tuple[str, int]]) -> list[str]:
    return [f"− {r}" for r, _ in steps]


def _numeric_columns(schema: pa.Schema) -> list[str]:
    import pyarrow as pa

    return [f.name for f in schema if f.name not in IDENTITY_COLUMNS
            and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))]


def _caption_length(d: _RunData) -> tuple[str, str] | None:
    """The caption length to plot and its SQL: ``caption_words`` when scored, else the number
    of words (runs of non-space characters) in the caption."""
    from curate.sql import ident

    names = d.schema.names
    if "caption_words" in names:
        return "caption_words", ident("caption_words")
    if "caption" in names:
        return "caption words", "len(regexp_extract_all(coalesce(caption, ''), '\\S+'))"
    return None


def _scores(page: _Page, d: _RunData) -> str:
    from curate.sql import ident

    cap = _caption_length(d)
    cols = [c for c in _numeric_columns(d.schema) if not (cap and c == cap[0])]
    # Thresholded columns first, then the pipeline's column order.
    cols.sort(key=lambda c: c not in d.bounds)
    shown = cols[:MAX_SCORE_PLOTS]
    if not shown:
        return ""
    imgs = []
    for col in shown:
        fig = _histogram(_column_hist(d.con, ident(col)), col, d.bounds.get(col, []))
        imgs.append(f'<figure>{page.plot(fig, f"score_{_slug(col)}", col)}'
                    f"<figcaption>{_e(col)}</figcaption></figure>")
    note = (f" Showing {len(shown)} of {len(cols)} numeric columns." if len(cols) > len(shown)
            else "")
    return ('<section><h2>Scores: kept vs dropped</h2><p>Distributions of each numeric manifest '
            'column for kept (green) and dropped (red) samples. Dashed lines are the thresholds '
            f'of the pipeline\'s <code>threshold</code> rules.{_e(note)}</p>'
            f'<div class="plots">{"".join(imgs)}</div></section>')


def _captions(page: _Page, d: _RunData) -> str:
    figs = []
    if "lang" in d.schema.names:
        counts = d.con.sql("""
            SELECT lang, count(*) FILTER (WHERE coalesce(kept, false)) AS k,
                   count(*) FILTER (WHERE NOT coalesce(kept, false)) AS dr
            FROM manifest WHERE lang IS NOT NULL AND lang <> ''
            GROUP BY lang ORDER BY k + dr DESC, lang""").fetchall()
        top = [str(r[0]) for r in counts[:TOP_LANGS]]
        if top:
            k = [int(r[1]) for r in counts[:TOP_LANGS]]
            dr = [int(r[2]) for r in counts[:TOP_LANGS]]
            fig, ax = _figure(4.6, max(3.0, 1.1 + 0.24 * len(top)))
            ys = list(range(len(top)))
            ax.barh(ys, k, color=KEPT_COLOR, label="kept")
            ax.barh(ys, dr, left=k, color=DROPPED_COLOR, label="dropped")
            ax.set_yticks(ys, top)
            ax.invert_yaxis()
            most = max(a + b for a, b in zip(k, dr, strict=True))
            for y, (a, b) in enumerate(zip(k, dr, strict=True)):
                ax.text(a + b + most * 0.01, y, f"{a:,} / {a + b:,}", va="center",
                        fontsize=FONT)
            ax.set_xlim(0, most * 1.25)
            ax.set_xlabel("samples (kept / all)", fontsize=FONT)
            ax.tick_params(labelsize=FONT)
            other = sum(int(r[1]) + int(r[2]) for r in counts[TOP_LANGS:])
            extra = f" ({other:,} in other languages)" if other else ""
            ax.set_title(f"Languages, top {len(top)}{extra}", fontsize=TITLE_FONT)
            ax.legend(fontsize=FONT)
            figs.append(f"<figure>{page.plot(fig, 'languages', 'languages')}"
                        "<figcaption>language (lang)</figcaption></figure>")
    cap = _caption_length(d)
    if cap is not None:
        name, sql = cap
        fig = _histogram(_column_hist(d.con, sql), name, d.bounds.get(name, []))
        figs.append(f"<figure>{page.plot(fig, 'caption_length', 'caption length')}"
                    f"<figcaption>caption length ({_e(name)})</figcaption></figure>")
    if not figs:
        return ""
    return ('<section><h2>Captions and languages</h2>'
            f'<div class="plots">{"".join(figs)}</div></section>')


def _selector_reports(run: Path) -> str:
    reports = sorted((run / "reports").glob("*.json")) if (run / "reports").is_dir() else []
    parts = []
    for path in reports:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            parts.append(f"<h3>{_e(path.stem)}</h3><p class='bad'>unreadable: {_e(str(exc))}</p>")
            continue
        if not isinstance(data, dict):
            data = {"value": data}
        body = []
        png = path.with_suffix(".png")
        plot = data.get("plot")
        if isinstance(plot, str) and (run / "reports" / plot).is_file():
            png = run / "reports" / plot
        if png.is_file():
            body.append(f"<div>{_img(png.read_bytes(), 'image/png', path.stem, 'plot')}</div>")
        scalars = [[str(k), _fmt(v, str(k))] for k, v in data.items()
                   if not isinstance(v, (list, dict)) and k != "plot"]
        nested = [[str(k), _short(json.dumps(v, default=str))] for k, v in data.items()
                  if isinstance(v, dict)]
        body.append(_table(["key", "value"], scalars + nested, numeric=(1,)))
        tops = data.get("top_entries")
        if isinstance(tops, list) and tops and all(isinstance(x, dict) for x in tops):
            keys = list(tops[0])
            rows = [[_fmt(x.get(k), k) for k in keys] for x in tops[:10]]
            body.append(f"<div><h4>top entries</h4>{_table(keys, rows)}</div>")
        title = "MetaCLIP balancing" if path.stem == "metaclip_balance" else path.stem
        parts.append(f"<h3>{_e(title)}</h3><div class='split'>{''.join(body)}</div>")
    if not parts:
        return ""
    return ("<section><h2>Selector reports</h2><p>From <code>reports/*.json</code>.</p>"
            + "".join(parts) + "</section>")


def _rewrites(run: Path, d: _RunData) -> str:
    from curate.sql import path_literal

    path = run / "rewrites.parquet"
    if not path.is_file():
        return ""
    con = d.con
    con.execute(f"CREATE OR REPLACE VIEW rewrites AS SELECT * FROM read_parquet("
                f"{path_literal(path)})")
    status = con.sql("SELECT coalesce(status, 'None'), count(*) AS n FROM rewrites "
                     "GROUP BY 1 ORDER BY n DESC, 1").fetchall()
    reasons = con.sql("""
        SELECT reason, count(*) AS n FROM rewrites
        WHERE status IS DISTINCT FROM 'ok' AND coalesce(reason, '') <> ''
        GROUP BY 1 ORDER BY n DESC, 1 LIMIT 8""").fetchall()
    total = sum(int(n) for _, n in status)
    counts = _table(["status", "rewrites", "share"],
                    [[str(st), f"{int(n):,}", _pct(int(n), total)] for st, n in status],
                    numeric=(1, 2))
    why = _table(["not ok because", "rewrites"],
                 [[str(r), f"{int(n):,}"] for r, n in reasons], numeric=(1,)) if reasons else ""
    # One accepted rewrite per caption, the first by uid; the original caption beside it.
    ok = con.sql(f"""
        WITH first AS (SELECT uid, arg_min(text, rewrite) AS text FROM rewrites
                       WHERE status = 'ok' GROUP BY uid ORDER BY uid LIMIT {REWRITE_EXAMPLES})
        SELECT f.uid, min(m.caption), min(f.text) FROM first f LEFT JOIN manifest m USING (uid)
        GROUP BY f.uid ORDER BY f.uid""").fetchall()
    examples = _table(["original", "rewrite"],
                      [[str(cap or ""), str(text)] for _, cap, text in ok]) if ok else ""
    return ("<section><h2>Caption rewrites</h2><p>LLM rewrites of the kept captions "
            "(<code>rewrites.parquet</code>); the original caption is always kept.</p>"
            f"<div class='split'>{counts}{why}</div><h3>Examples</h3>{examples}</section>")


def _recaptions(run: Path, d: _RunData) -> str:
    """The synthetic captions (``recaptions.parquet``): how many are ok and why the others are
    not, the distributions of ALIP's signals over the accepted ones, and a few kept images with
    their original and synthetic captions."""
    from curate.sql import path_literal

    path = run / "recaptions.parquet"
    if not path.is_file():
        return ""
    con = d.con
    con.execute(f"CREATE OR REPLACE VIEW recaptions AS SELECT * FROM read_parquet("
                f"{path_literal(path)})")
    status = con.sql("SELECT coalesce(status, 'None'), count(*) AS n FROM recaptions "
                     "GROUP BY 1 ORDER BY n DESC, 1").fetchall()
    reasons = con.sql("""
        SELECT reason, count(*) AS n FROM recaptions
        WHERE status IS DISTINCT FROM 'ok' AND coalesce(reason, '') <> ''
        GROUP BY 1 ORDER BY n DESC, 1 LIMIT 8""").fetchall()
    total = sum(int(n) for _, n in status)
    counts = _table(["status", "captions", "share"],
                    [[str(st), f"{int(n):,}", _pct(int(n), total)] for st, n in status],
                    numeric=(1, 2))
    why = _table(["not ok because", "captions"],
                 [[str(r), f"{int(n):,}"] for r, n in reasons], numeric=(1,)) if reasons else ""
    model = con.sql("SELECT any_value(model), any_value(backend) FROM recaptions").fetchall()[0]
    signals = ""
    sims = con.sql("""SELECT count(image_sim), avg(image_sim), quantile_cont(image_sim, 0.5),
                             count(text_sim), avg(text_sim), quantile_cont(text_sim, 0.5)
                      FROM recaptions WHERE status = 'ok'""").fetchall()[0]
    if sims[0] or sims[3]:
        rows = [[name, f"{int(n):,}", _fmt(mean), _fmt(median)]
                for name, n, mean, median in (("image · synthetic (syn_image_sim)", *sims[:3]),
                                              ("raw text · synthetic (syn_text_sim)", *sims[3:]))
                if n]
        table = _table(["CLIP cosine similarity", "captions", "mean", "median"], rows,
                       numeric=(1, 2, 3))
        signals = ("<h3>ALIP's consistency signals</h3><p>CLIP similarity of each accepted "
                   "synthetic caption with its image and with the raw caption, from the stored "
                   "embeddings of the clip scorer. The manifest's <code>syn_image_sim</code> and "
                   "<code>syn_text_sim</code> average them per sample; their histograms are "
                   "with the other scores.</p>"
                   f"<div class='split'>{table}</div>")
    picked = con.sql(f"""
        WITH first AS (SELECT DISTINCT uid FROM recaptions WHERE status = 'ok'
                       ORDER BY uid LIMIT {REWRITE_EXAMPLES})
        SELECT {_row_struct(con)} FROM manifest JOIN first USING (uid) ORDER BY uid
        """).fetchall()
    samples = [_sample(r) for (r,) in picked]
    examples = ""
    if samples:
        syn: dict[str, list[tuple[str, Any]]] = {}
        for uid, text, sim in con.sql("""
                SELECT uid, text, image_sim FROM recaptions
                WHERE status = 'ok' AND uid IN (SELECT unnest($uids)) ORDER BY uid, syn""",
                params={"uids": [x.uid for x in samples]}).fetchall():
            syn.setdefault(str(uid), []).append((str(text), sim))
        cards = _Cards(_thumbnails(run, samples), {}, {})
        rows = []
        for x in samples:
            lines = "".join(f"<li>{_e(t)}" + (f" <small>({_fmt(v)})</small>" if v is not None
                                                else "") + "</li>" for t, v in syn[x.uid])
            rows.append(f"<tr><td>{cards.pic(x)}</td><td>{_e(x.caption)}</td>"
                        f"<td><ul>{lines}</ul></td></tr>")
        examples = ("<h3>Examples</h3><table><thead><tr><th>image</th><th>original</th>"
                    "<th>synthetic (image similarity)</th></tr></thead><tbody>"
                    + "".join(rows) + "</tbody></table>")
    who = f" by {_e(str(model[1]))} <code>{_e(str(model[0]))}</code>" if model and model[0] \
        else ""
    return ("<section><h2>Synthetic captions</h2><p>Captions generated from the kept images"
            f"{who} (<code>recaptions.parquet</code>, the <code>txt_syn</code> members of the "
            "output); the original caption is always kept.</p>"
            f"<div class='split'>{counts}{why}</div>{signals}{examples}</section>")


def _curves(page: _Page, d: _RunData) -> str:
    """Per bound of each ``threshold`` rule: how many samples would be kept as the bound
    moves, the others held, with the chosen bound marked."""
    from curate.stages.threshold import Threshold, ThresholdParams

    if d.selection is None:
        return ""
    bounds = []
    for step in d.selection.select:
        st = step.stage
        if isinstance(st, Threshold) and st.params.column in d.schema.names:  # type: ignore[attr-defined]
            p: ThresholdParams = st.params  # type: ignore[assignment]
            bounds += [(st, key, op, float(v)) for op, key, v in (
                ("≥", "min", p.min), ("≤", "max", p.max), (">", "gt", p.gt), ("<", "lt", p.lt))
                if v is not None]
    if not bounds:
        return ""
    figs = []
    for i, (rule, key, op, value) in enumerate(bounds[:MAX_CURVES]):
        col = rule.params.column  # type: ignore[attr-defined]
        grid, counts, chosen, candidates = _threshold_curve(d.con, rule, key, value)
        fig, ax = _figure(4.6, 3.0)
        ax.plot(grid, counts, color="#1971c2", marker="o", ms=3, lw=1.5,
                label=f"kept if {col} {op} t")
        ax.axvline(value, color="#1c1c1c", linestyle="--", linewidth=1.2)
        ax.plot([value], [chosen], marker="D", ms=8, color=DROPPED_COLOR, linestyle="none",
                label=f"chosen {op} {value:g}: {chosen:,} kept")
        ax.set_xlabel(f"threshold t on {col}", fontsize=FONT)
        ax.set_ylabel("samples kept", fontsize=FONT)
        ax.set_title(rule.reason, fontsize=TITLE_FONT)
        ax.tick_params(labelsize=FONT)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=FONT)
        img = page.plot(fig, f"curve_{i:02d}_{_slug(col)}_{key}", f"kept vs {col} threshold")
        step = max(1, len(grid) // 8)
        picks = sorted(set(range(0, len(grid), step)) | {len(grid) - 1, grid.index(value)})
        rows = [[f"{col} {op} {grid[j]:.4g}", f"{counts[j]:,}"] for j in picks]
        table = _table(["threshold", "kept"], rows, numeric=(1,),
                       row_class={picks.index(grid.index(value)): "chosen"})
        figs.append(f'<figure class="curve">{img}<figcaption>{_e(col)} {_e(op)} {value:g} '
                    f"({_e(rule.reason)}): <b>{chosen:,} kept</b> at the chosen threshold, of "
                    f"{candidates:,} candidates</figcaption>{table}</figure>")
    more = (f" Showing {MAX_CURVES} of {len(bounds)} bounds." if len(bounds) > MAX_CURVES
            else "")
    return ("<section><h2>Kept vs threshold</h2><p>For each bound of a <code>threshold</code> "
            "rule, how many samples it would keep as the bound moves (the rule's other bounds "
            "held), among the samples that passed every other step: those kept, and those this "
            "rule dropped. The diamond is the chosen threshold. A looser bound lets this rule's "
            "drops back in, but the steps after it never saw them, so when the rule is not the "
            f"last step the counts past the chosen threshold are an upper bound.{_e(more)}</p>"
            f'<div class="plots">{"".join(figs)}</div></section>')


def _threshold_curve(con: duckdb.DuckDBPyConnection, rule: Rule, key: str, value: float,
                     ) -> tuple[list[float], list[int], int, int]:
    """(thresholds, samples kept at each, kept at ``value``, candidates) for the bound
    ``key`` of the threshold ``rule``, counted with the rule's own SQL at each threshold over
    the samples that passed every other step."""
    import numpy as np

    from curate.sql import ident, literal

    col = ident(rule.params.column)  # type: ignore[attr-defined]
    cand = f"(reason IS NULL OR reason = {literal(rule.reason)})"
    lo, hi, n = con.sql(f"""
        SELECT min(v) FILTER (WHERE isfinite(v)), max(v) FILTER (WHERE isfinite(v)), count(*)
        FROM (SELECT CAST({col} AS DOUBLE) AS v FROM manifest WHERE {cand})""").fetchall()[0]
    points = {value}
    if lo is not None:
        points |= {float(x) for x in np.linspace(min(lo, value), max(hi, value), CURVE_POINTS)}
    grid = sorted(points)
    exprs = []
    for t in grid:
        moved = type(rule)(rule.params.model_copy(update={key: t}))
        exprs.append(f"count(*) FILTER (WHERE coalesce(({moved.keep_sql('manifest')}), false))")
    counts = [int(c) for c in con.sql(f"SELECT {', '.join(exprs)} FROM manifest WHERE {cand}"
                                      ).fetchall()[0]]
    return grid, counts, counts[grid.index(value)], int(n)


def _shard_problems(run: Path, d: _RunData) -> str:
    """The input shards that failed, were truncated or damaged, or had sample errors."""
    from curate.sql import path_literal

    path = run / "shards.parquet"
    if not path.is_file():
        return ""
    con = d.con
    con.execute(f"CREATE OR REPLACE VIEW shards AS SELECT * FROM read_parquet("
                f"{path_literal(path)})")
    bad = ("status IS DISTINCT FROM 'done' OR coalesce(errors, 0) > 0 OR read_error IS NOT "
           "NULL OR error IS NOT NULL")
    total, problems, failed, errors = con.sql(f"""
        SELECT count(*), count(*) FILTER (WHERE {bad}),
               count(*) FILTER (WHERE status IS DISTINCT FROM 'done'),
               coalesce(sum(errors), 0) FROM shards""").fetchall()[0]
    statuses = ", ".join(f"{int(n):,} {s}" for s, n in con.sql(
        "SELECT coalesce(status, 'unknown'), count(*) FROM shards GROUP BY 1 ORDER BY 2 DESC, 1"
    ).fetchall())
    head = (f"<section><h2>Input shards with problems</h2><p>{int(total):,} input shards: "
            f"{_e(statuses)}; {int(errors):,} sample errors in all. From "
            "<code>shards.parquet</code>: a <code>truncated</code> or <code>damaged</code> shard "
            "kept every sample it could read, a <code>failed</code> one none.</p>")
    if not problems:
        return head + "<p>No shard failed, none was truncated, no sample failed.</p></section>"
    first = "status IS DISTINCT FROM 'done'"
    has_error = "error" in d.schema.names and "status" in d.schema.names
    example = ("(SELECT arg_min(coalesce(m.error_stage || ': ', '') || m.error, m.\"index\") "
               "FROM manifest m WHERE m.shard = s.shard AND m.status = 'error')"
               if has_error and "error_stage" in d.schema.names and "index" in d.schema.names
               else "NULL")
    rows = con.sql(f"""
        SELECT s.shard, s.status, s.samples, s.errors, s.read_error, s.error, s.attempts,
               {example} FROM shards s WHERE {bad}
        ORDER BY ({first}) DESC, s.errors DESC NULLS LAST, s.shard
        LIMIT {MAX_SHARD_ROWS}""").fetchall()
    body = [[str(r[0]), str(r[1]), f"{int(r[2] or 0):,}", f"{int(r[3] or 0):,}",
             _short(str(r[4] or ""), 160), _short(str(r[5] or ""), 160),
             "" if r[6] is None else str(r[6]), _short(str(r[7] or ""), 160)] for r in rows]
    table = _table(["shard", "status", "samples", "sample errors", "read error", "shard error",
                    "attempts", "first sample error"], body, numeric=(2, 3, 6),
                   row_class={j: "bad" for j, r in enumerate(rows) if r[1] != "done"})
    more = (f"<p>Showing {len(rows)} of {int(problems):,} shards with problems (failed first, "
            "then by sample errors).</p>" if problems > len(rows) else "")
    return (head + f"<p>{int(problems):,} shards with problems, {int(failed):,} not done.</p>"
            + table + more + "</section>")


# --- gallery --------------------------------------------------------------------------------


@dataclass
class _Sample:
    uid: str
    shard: str
    index: int
    member: str
    caption: str
    reason: str | None
    error: str | None
    scores: tuple[tuple[str, Any], ...] = ()  # (column, value) shown on the card
    original: str | None = None  # the uid of the sample this one duplicates
    kept: bool | None = None


@dataclass
class _Group:
    """One gallery: the kept samples, or the samples one reason dropped."""

    reason: str | None  # None: the kept samples
    total: int  # samples in the selection with this outcome
    samples: list[_Sample]  # the first by uid, at most per_page × max_pages
    pages: list[str] = field(default_factory=list)  # page files, relative to the report page

    @property
    def title(self) -> str:
        return "kept" if self.reason is None else self.reason


def pick_gallery(manifest: pa.Table | Path, funnel_reasons: Sequence[str], n: int,
                 ) -> tuple[list[_Sample], list[_Sample]]:
    """Up to ``n`` kept samples (the first by uid) and ``n`` dropped ones, taken round-robin
    over the drop reasons in funnel order (the first by uid of each), so each reason shows.
    ``manifest`` is the manifest's Parquet file (or the table); it is queried, not loaded."""
    if n <= 0:
        return [], []
    con = _manifest_view(manifest)
    try:
        return _pick_gallery(con, funnel_reasons, n)
    finally:
        con.close()


def _row_struct(con: duckdb.DuckDBPyConnection, extra: Sequence[str] = ()) -> str:
    """A DuckDB struct of a manifest row's identity fields (NULL where the manifest lacks
    one) and of the ``extra`` columns, for ``min_by``."""
    from curate.sql import ident, literal

    names = set(con.sql("SELECT * FROM manifest LIMIT 0").columns)
    cols = ["uid", "shard", "index", "image_member", "caption", "reason", "error", "kept",
            *[c for c in ORIGINAL_COLUMNS if c in names],
            *[c for c in extra if c not in ORIGINAL_COLUMNS]]
    fields = ", ".join(f"{literal(c)}: {ident(c) if c in names else 'NULL'}"
                       for c in dict.fromkeys(cols))
    return "{" + fields + "}"


def _sample(r: dict[str, Any], columns: Sequence[str] = ()) -> _Sample:
    original = next((r[c] for c in ORIGINAL_COLUMNS if r.get(c)), None)
    return _Sample(str(r["uid"]), str(r["shard"]), int(r["index"]),
                   str(r.get("image_member") or ""), str(r.get("caption") or ""),
                   r.get("reason"), r.get("error"),
                   tuple((c, r.get(c)) for c in columns if c in r), original, r.get("kept"))


def _pick_gallery(con: duckdb.DuckDBPyConnection, funnel_reasons: Sequence[str], n: int,
                  columns: dict[str | None, tuple[list[str], int]] | None = None,
                  ) -> tuple[list[_Sample], list[_Sample]]:
    """``pick_gallery`` on the connection's ``manifest`` view; ``columns`` (reason → the
    columns its cards show; None: the kept samples) fills each sample's ``scores``."""
    columns = columns or {}
    every = [c for cs, _ in columns.values() for c in cs]
    row = _row_struct(con, every)

    def cols(reason: str | None) -> list[str]:
        return columns.get(reason, columns.get("", ([], 0)))[0]

    kept_rows = con.sql(f"SELECT min_by({row}, uid, {n}) FROM manifest WHERE kept"
                        ).fetchall()[0][0] or []
    kept = [_sample(r, cols(None)) for r in kept_rows]
    # The first n by uid of each reason: a top-n per group, not a sort of every dropped row.
    by_reason = {str(reason): rows for reason, rows in con.sql(f"""
        SELECT reason, min_by({row}, uid, {n}) FROM manifest
        WHERE NOT coalesce(kept, false) GROUP BY reason""").fetchall()}
    order = [r for r in funnel_reasons if r in by_reason]
    order += sorted(set(by_reason) - set(order))
    dropped: list[_Sample] = []
    depth = 0
    while len(dropped) < n and any(depth < len(by_reason[r]) for r in order):
        for reason in order:
            if depth < len(by_reason[reason]) and len(dropped) < n:
                dropped.append(_sample(by_reason[reason][depth], cols(reason)))
        depth += 1
    return kept, dropped


def _card_columns(d: _RunData) -> dict[str | None, tuple[list[str], int]]:
    """Reason → the columns a card of a sample it dropped shows, and how many of the first
    are the columns the step reads (a rule's SQL, a selector's columns; the key scores follow);
    ``None`` (kept samples): the thresholded columns, then the key scores; ``""``: any other
    reason (errors, the steps of a pipeline that does not load)."""
    from curate.stages.base import Rule

    names = [n for n in d.schema.names if n not in ("kept", "reason")]
    key = [c for c in KEY_SCORES if c in names]

    def shown(cols: Iterable[str]) -> tuple[list[str], int]:
        lead = list(dict.fromkeys(cols))
        return list(dict.fromkeys([*lead, *key]))[:CARD_SCORES], min(len(lead), CARD_SCORES)

    out: dict[str | None, tuple[list[str], int]] = {
        None: shown(c for c in d.bounds if c in names), "": shown(())}
    if d.selection is None:
        return out
    for step in d.selection.select:
        st = step.stage
        if isinstance(st, Rule):
            try:
                sql = st.keep_sql("manifest")
            except Exception:  # noqa: BLE001 - a rule whose SQL needs the pool: no columns
                sql = ""
            out[st.reason] = shown(_referenced(sql, names))
        else:
            cols = [c for c in (*st.columns(), *st.extra_columns())  # type: ignore[attr-defined]
                    if c in names and c not in ORIGINAL_COLUMNS]
            for reason in st.reasons():  # type: ignore[attr-defined]
                out[reason] = shown(cols)
    return out


def _referenced(sql: str, names: Sequence[str]) -> list[str]:
    """The columns of ``names`` that the SQL expression ``sql`` mentions, in order (string
    literals are not read)."""
    text = re.sub(r"'(?:[^']|'')*'", "''", sql)
    found = []
    for quoted, bare in re.findall(r'"((?:[^"]|"")+)"|\b([A-Za-z_][A-Za-z0-9_]*)\b', text):
        name = quoted.replace('""', '"') if quoted else bare
        if name in names:
            found.append(name)
    return list(dict.fromkeys(found))


def _group_samples(d: _RunData, reason: str | None, limit: int,
                   columns: list[str]) -> list[_Sample]:
    from curate.sql import literal

    if limit <= 0:
        return []
    row = _row_struct(d.con, columns)
    where = "kept" if reason is None else f"reason = {literal(reason)}"
    rows = d.con.sql(f"SELECT {row} AS r FROM manifest WHERE {where} ORDER BY uid LIMIT {limit}"
                     ).fetchall()
    return [_sample(r, columns) for (r,) in rows]


def _originals(d: _RunData, samples: Iterable[_Sample]) -> dict[str, _Sample]:
    """uid → the sample that a shown duplicate duplicates."""
    import pyarrow as pa

    uids = sorted({s.original for s in samples if s.original})
    if not uids:
        return {}
    d.con.register("_wanted", pa.table({"uid": pa.array(uids, pa.string())}))
    try:
        row = _row_struct(d.con)
        rows = d.con.sql(f"SELECT {row} FROM manifest JOIN _wanted USING (uid)").fetchall()
    finally:
        d.con.unregister("_wanted")
    return {str(r["uid"]): _sample(r) for (r,) in rows}


def _thumbnails(run: Path, samples: Iterable[_Sample], max_shards: int = MAX_THUMB_SHARDS,
                ) -> dict[str, bytes | str]:
    """uid → a JPEG thumbnail, or the reason there is none. Each input shard is read once, and
    only the ``max_shards`` shards holding the most of ``samples`` are read."""
    import pyarrow.parquet as pq

    from curate.io.shards import ShardRef, read_members

    urls: dict[str, str] = {}
    if (run / "shards.parquet").is_file():
        t = pq.read_table(run / "shards.parquet", columns=["shard", "url"])
        urls = dict(zip(t.column("shard").to_pylist(), t.column("url").to_pylist(), strict=True))
    wanted: dict[str, dict[str, _Sample]] = {}
    for s in samples:
        wanted.setdefault(s.shard, {})[s.uid] = s
    out: dict[str, bytes | str] = {}
    ranked = sorted(wanted, key=lambda sh: (-len(wanted[sh]), sh))
    for shard in ranked[max_shards:]:
        out.update({uid: f"not read: the report reads thumbnails from {max_shards} input "
                    "shards at most" for uid in wanted[shard]})
    for shard in sorted(ranked[:max_shards]):
        group = list(wanted[shard].values())
        if shard not in urls:
            out.update({s.uid: "input shard unknown" for s in group})
            continue
        try:
            members = read_members(ShardRef(urls[shard], shard), {s.index for s in group})
        except (OSError, CurateError, tarfile.TarError) as exc:
            out.update({s.uid: f"input shard unreadable: {exc}" for s in group})
            continue
        for s in group:
            ext = s.member.rsplit(".", 1)[-1] if s.member else ""
            data = members.get(s.index, {}).get(ext)
            out[s.uid] = _thumbnail(data) if data else "no image in the input"
    return out


def _thumbnail(data: bytes) -> bytes | str:
    """A JPEG of at most THUMB_PX on its long side, or why the image could not be decoded."""
    from PIL import Image, UnidentifiedImageError

    from curate.lib.imaging import open_image

    try:
        with open_image(data) as im:  # refuses images over imaging.MAX_PIXELS before decoding
            im.draft("RGB", (THUMB_PX, THUMB_PX))
            im.thumbnail((THUMB_PX, THUMB_PX))
            rgb = im.convert("RGB")
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=80)
        return buf.getvalue()
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        return f"cannot decode: {type(exc).__name__}"


@dataclass
class _Cards:
    """Renders sample cards: a thumbnail, the outcome, the caption, the error, the scores (the
    first ``lead`` are the columns the dropping step reads), and a duplicate's original."""

    thumbs: dict[str, bytes | str]
    originals: dict[str, _Sample]
    lead: dict[str | None, int]  # reason → how many of its card columns the step reads

    def pic(self, s: _Sample) -> str:
        t = self.thumbs.get(s.uid, "not read")
        if isinstance(t, bytes):
            return _img(t, "image/jpeg", s.caption[:80], "thumb")
        return (f'<div class="ph" title="{_e(t)}">no image<br><small>{_e(_short(t, 60))}'
                "</small></div>")

    def card(self, s: _Sample) -> str:
        tag = ('<span class="tag kept">kept</span>' if s.reason is None else
               f'<span class="tag drop">{_e(s.reason)}</span>')
        err = f'<div class="err">{_e(_short(s.error, 160))}</div>' if s.error else ""
        lead = self.lead.get(s.reason, 0)
        why = ' class="why"'
        rows = "".join(
            f"<tr{why if i < lead else ''}><th>{_e(c)}</th><td>{_e(_score(v))}</td></tr>"
            for i, (c, v) in enumerate(s.scores))
        scores = f'<table class="scores">{rows}</table>' if rows else ""
        main = (f'<div class="one">{self.pic(s)}{tag}<div class="cap" title="{_e(s.caption)}">'
                f"{_e(_short(s.caption, CAPTION_CHARS))}</div>{err}{scores}"
                f'<div class="uid">{_e(s.uid[:12])}</div></div>')
        if s.original is None:
            return f'<div class="card">{main}</div>'
        o = self.originals.get(s.original)
        if o is None:
            other = (f'<div class="orig"><div class="olabel">duplicate of</div>'
                     f'<div class="uid">{_e(s.original[:12])}</div><div class="err">not in '
                     "this selection's manifest</div></div>")
        else:
            fate = ('<span class="tag kept">kept</span>' if o.reason is None else
                    f'<span class="tag drop">{_e(o.reason)}</span>')
            other = (f'<div class="orig"><div class="olabel">duplicate of</div>{self.pic(o)}'
                     f'{fate}<div class="cap" title="{_e(o.caption)}">'
                     f"{_e(_short(o.caption, CAPTION_CHARS))}</div>"
                     f'<div class="uid">{_e(o.uid[:12])}</div></div>')
        return f'<div class="card dup">{main}{other}</div>'


def _score(v: Any) -> str:
    """A score as a card shows it: 4 significant digits, hashes and long text cut."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str) and re.fullmatch(r"[0-9a-f]{32,}", v):
        return v[:8] + "…"
    if isinstance(v, (list, dict)):
        return _short(json.dumps(v, default=str), 40)
    return _short(str(v), 40)


@dataclass
class _Gallery:
    """What the galleries show: the groups (with their pages written) and the cards of the
    page's own overview."""

    groups: list[_Group]
    cards: _Cards
    overview: tuple[list[_Sample], list[_Sample]]


def _galleries(run: Path, d: _RunData, dest: Path, n: int, per_page: int,
               max_pages: int) -> _Gallery:
    """Pick every gallery's samples (the overview's ``n`` kept and ``n`` dropped, and per
    group the first ``per_page × max_pages`` by uid), read their thumbnails once, and write
    the group pages into ``dest``'s folder ``gallery/``."""
    from curate.io.atomic import write_text

    columns = _card_columns(d)
    reasons = [str(r["reason"]) for r in d.funnel]
    counts = dict(d.con.sql("SELECT reason, count(*) FROM manifest GROUP BY reason").fetchall())
    order = [r for r in reasons if counts.get(r)]
    order += sorted(str(r) for r in counts if r is not None and str(r) not in order)
    limit = per_page * max_pages
    groups = [_Group(reason, int(counts.get(reason) or 0),
                     _group_samples(d, reason, limit, columns.get(reason, columns[""])[0]))
              for reason in [None, *order]]
    overview = _pick_gallery(d.con, reasons, n, columns) if n > 0 else ([], [])
    shown = [s for g in groups for s in g.samples] + overview[0] + overview[1]
    originals = _originals(d, shown)
    lead = {r: k for r, (_, k) in columns.items() if r != ""}
    cards = _Cards(_thumbnails(run, [*shown, *originals.values()]), originals, lead)

    folder = dest.parent / "gallery"
    if folder.is_dir():
        for old in folder.glob("*.html"):  # an earlier report's pages (named as below)
            if re.fullmatch(r"\d{2}_[A-Za-z0-9_-]*_\d+\.html", old.name):
                old.unlink()
    if limit:
        folder.mkdir(exist_ok=True)
    for i, g in enumerate(groups):
        chunks = [g.samples[k:k + per_page] for k in range(0, len(g.samples), per_page)]
        names = [f"{i:02d}_{_slug(g.title)}_{k + 1}.html" for k in range(len(chunks))]
        g.pages = [f"gallery/{name}" for name in names]
        for k, chunk in enumerate(chunks):
            body = _gallery_page(g, k, names, chunk, cards, per_page, max_pages, dest.name)
            write_text(_HTML.format(title=_e(f"curate report: {d.name}: {g.title} ({k + 1})"),
                                    css=_CSS, body=body), folder / names[k])
    return _Gallery(groups, cards, overview)


def _page_links(names: Sequence[str], current: int | None, prefix: str = "") -> str:
    links = [f"<b>{k + 1}</b>" if k == current else
             f'<a href="{_e(prefix + name)}">{k + 1}</a>' for k, name in enumerate(names)]
    return f'<nav class="pages">pages: {" ".join(links)}</nav>' if links else ""


def _left_out(g: _Group, per_page: int, max_pages: int) -> str:
    if g.total <= len(g.samples):
        return ""
    return (f"Only the first {len(g.samples):,} of {g.total:,} by uid are shown (at most "
            f"{max_pages} pages of {per_page}); {g.total - len(g.samples):,} are left out. "
            "<code>curate query SEL \"select * from manifest where "
            + ("kept" if g.reason is None else f"reason = '{_e(g.reason)}'")
            + "\"</code> lists them all.")


def _gallery_page(g: _Group, k: int, names: Sequence[str], chunk: Sequence[_Sample],
                  cards: _Cards, per_page: int, max_pages: int, index_name: str) -> str:
    first = k * per_page + 1
    what = "kept samples" if g.reason is None else f"samples dropped by {g.reason}"
    note = _left_out(g, per_page, max_pages)
    return (f'<section><p class="path"><a href="../{_e(index_name)}">← the report</a></p>'
            f"<h1>{_e(g.title)}</h1><p>{g.total:,} {_e(what)}; this page: {first:,} to "
            f"{first + len(chunk) - 1:,} of the {len(g.samples):,} shown, by uid.</p>"
            + (f'<p class="warn">{note}</p>' if note else "")
            + _page_links(names, k)
            + f"<div class='gallery'>{''.join(cards.card(s) for s in chunk)}</div>"
            + _page_links(names, k) + "</section>")


def _gallery_index(gal: _Gallery, per_page: int, max_pages: int) -> str:
    rows = []
    for g in gal.groups:
        pages = " ".join(f'<a href="{_e(p)}">{j + 1}</a>' for j, p in enumerate(g.pages))
        left = g.total - len(g.samples)
        rows.append(f'<tr><td>{_e(g.title)}</td><td class="num">{g.total:,}</td>'
                    f'<td class="num">{len(g.samples):,}</td><td class="num">'
                    f'{left:,}</td><td class="pages">{pages or "none"}</td></tr>')
    unread = sum(isinstance(t, str) and t.startswith("not read:")
                 for t in gal.cards.thumbs.values())
    note = (f" {unread:,} samples have no thumbnail: they lie in other input shards than the "
            f"{MAX_THUMB_SHARDS} the report reads." if unread else "")
    return ("<section><h2>Galleries</h2><p>Every drop reason, and the kept samples, in pages of "
            f"{per_page} thumbnails (the first by uid, at most {max_pages} pages each; the rest "
            "are left out and counted here). Each card shows the scores that the step which "
            "dropped it reads (highlighted), a few key scores, and a duplicate's original."
            f"{_e(note)}</p>"
            "<table><thead><tr><th>gallery</th><th class='num'>samples</th><th class='num'>"
            "shown</th><th class='num'>left out</th><th>pages</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></section>")


def _gallery(gal: _Gallery) -> str:
    kept, dropped = gal.overview
    if not kept and not dropped:
        return ""
    kept_html = "".join(gal.cards.card(s) for s in kept) or "<p>no kept samples</p>"
    drop_html = "".join(gal.cards.card(s) for s in dropped) or "<p>no dropped samples</p>"
    return ("<section><h2>Samples</h2><p>The first samples by uid; dropped ones are spread over "
            "the drop reasons (every reason has its pages under Galleries). Thumbnails are "
            "re-encoded for this report only.</p>"
            f"<h3>Kept ({len(kept)})</h3><div class='gallery'>{kept_html}</div>"
            f"<h3>Dropped ({len(dropped)})</h3><div class='gallery'>{drop_html}</div></section>")


# --- plotting and HTML helpers --------------------------------------------------------------


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.subplots()


@dataclass(frozen=True)
class _Hist:
    """A column's histogram, counted in DuckDB: bin edges, kept and dropped counts per bin,
    and how many rows have no finite value."""

    edges: np.ndarray
    kept: np.ndarray
    dropped: np.ndarray
    missing: int
    log: bool = False
    xlim: tuple[float, float] | None = None


HIST_BINS = 40


def _column_hist(con: duckdb.DuckDBPyConnection, expr: str) -> _Hist:
    """The histogram of the SQL expression ``expr`` over the manifest, split by ``kept`` (no
    bins when no row has a finite value). Bins as numpy's would be: log-spaced when the values are
    positive and span more than 1000x, one per integer when they are integers spanning at most
    60, else 40 equal bins between the minimum and the maximum."""
    import numpy as np

    src = (f"SELECT CAST({expr} AS DOUBLE) AS v, coalesce(kept, false) AS k FROM manifest")
    lo, hi, integer, missing = con.sql(f"""
        SELECT min(v) FILTER (WHERE isfinite(v)), max(v) FILTER (WHERE isfinite(v)),
               bool_and(v = round(v)) FILTER (WHERE isfinite(v)),
               count(*) FILTER (WHERE v IS NULL OR NOT isfinite(v))
        FROM ({src})""").fetchall()[0]
    if lo is None:
        return _Hist(np.zeros(0), np.zeros(0), np.zeros(0), int(missing))
    log = lo > 0 and hi / lo > 1000
    xlim = None
    if log:
        edges = np.geomspace(lo, hi, HIST_BINS + 1)
        ln_lo, ln_span = math.log(lo), math.log(hi) - math.log(lo)
        pos = f"(ln(v) - {ln_lo!r}) / {ln_span!r} * {HIST_BINS}"
    elif integer and hi - lo <= 60:
        edges = np.arange(lo - 0.5, hi + 1.5)
        pos = f"v - {lo!r}"
        if hi - lo < 4:
            xlim = (lo - 3, hi + 3)
    elif hi > lo:
        edges = np.linspace(lo, hi, HIST_BINS + 1)
        pos = f"(v - {lo!r}) / {hi - lo!r} * {HIST_BINS}"
    else:
        edges = np.array([lo - 0.5, lo + 0.5])
        pos = "0"
    bins = len(edges) - 1
    rows = con.sql(f"""
        SELECT least(greatest(CAST(floor({pos}) AS BIGINT), 0), {bins - 1}) AS b,
               count(*) FILTER (WHERE k), count(*) FILTER (WHERE NOT k)
        FROM ({src}) WHERE isfinite(v) GROUP BY b""").fetchall()
    kept, dropped = np.zeros(bins, dtype=np.int64), np.zeros(bins, dtype=np.int64)
    for b, k, dr in rows:
        kept[b], dropped[b] = k, dr
    return _Hist(edges, kept, dropped, int(missing), log, xlim)


def _histogram(h: _Hist, name: str, bounds: Sequence[Bound]) -> Figure:
    """Kept and dropped values of one column overlaid, with the rule thresholds."""
    import numpy as np

    fig, ax = _figure(4.6, 3.0)
    if not len(h.kept):
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(name, fontsize=TITLE_FONT)
        return fig
    if h.log:
        ax.set_xscale("log")
        mids = np.sqrt(h.edges[:-1] * h.edges[1:])
    else:
        mids = (h.edges[:-1] + h.edges[1:]) / 2
    if h.xlim is not None:
        ax.set_xlim(*h.xlim)
    ax.hist(mids, bins=h.edges, weights=h.kept, color=KEPT_COLOR, alpha=0.65,
            label=f"kept ({int(h.kept.sum()):,})")
    ax.hist(mids, bins=h.edges, weights=h.dropped, color=DROPPED_COLOR, alpha=0.65,
            label=f"dropped ({int(h.dropped.sum()):,})")
    for b in bounds:
        ax.axvline(b.value, color="#1c1c1c", linestyle="--", linewidth=1.2,
                   label=f"{b.op} {b.value:g} ({b.reason})")
    ax.set_title(name + (f"  ({h.missing:,} without a value)" if h.missing else ""),
                 fontsize=TITLE_FONT)
    ax.set_ylabel("samples", fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    ax.legend(fontsize=FONT)
    return fig


def _img(data: bytes, mime: str, alt: str, cls: str) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img class="{cls}" alt="{_e(alt)}" src="data:{mime};base64,{b64}">'


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = (),
           row_class: dict[int, str] | None = None) -> str:
    def cell(tag: str, i: int, v: str) -> str:
        cls = ' class="num"' if i in numeric else ""
        return f"<{tag}{cls}>{_e(v)}</{tag}>"

    th = "".join(cell("th", i, h) for i, h in enumerate(head))
    body = []
    for j, r in enumerate(rows):
        cls = f' class="{row_class[j]}"' if row_class and j in row_class else ""
        body.append(f"<tr{cls}>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _e(s: str) -> str:
    return html.escape(s, quote=True)


def _short(s: str, n: int = 120) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _fmt(v: Any, key: str = "") -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int) and (key.endswith("_id") or key == "seed"):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return _short(str(v))


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%" if total else ""


def _duration(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    return f"{m} min {sec} s" if m < 60 else f"{m // 60} h {m % 60} min"


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in s)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 color:#212529;background:#f8f9fa;margin:0}
main{max-width:1200px;margin:0 auto;padding:24px}
section{background:#fff;border:1px solid #dee2e6;border-radius:8px;padding:16px 20px;
 margin:0 0 18px}
h1{margin:0 0 4px;font-size:26px}h2{margin:0 0 8px;font-size:19px}
h3{margin:14px 0 6px;font-size:16px}h4{margin:4px 0;font-size:14px}
.desc{margin:0 0 4px;font-size:16px;color:#495057}.path{margin:0 0 12px;color:#6c757d}
.facts{display:flex;flex-wrap:wrap;gap:10px}
.fact{background:#f1f3f5;border-radius:6px;padding:8px 14px;min-width:110px}
.fact .v{font-size:20px;font-weight:600}.fact .k{color:#6c757d;font-size:12px}
details{margin:12px 0}summary{cursor:pointer;font-weight:600}
pre{background:#f1f3f5;padding:10px;border-radius:6px;overflow:auto;font-size:12px}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border-bottom:1px solid #e9ecef;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f1f3f5}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.total td{font-weight:600}
.split{display:flex;flex-wrap:wrap;gap:20px;align-items:flex-start}
.split>*{min-width:0}.split>.grow{flex:1 1 420px}
img.plot{max-width:100%;height:auto;display:block}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:12px}
figure{margin:0}figcaption{font-size:12px;color:#6c757d;text-align:center}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(176px,1fr));gap:10px}
.card{border:1px solid #dee2e6;border-radius:6px;padding:8px;font-size:12px;overflow:hidden}
img.thumb{display:block;max-width:160px;max-height:160px;margin:0 auto 6px}
.ph{width:160px;height:120px;margin:0 auto 6px;background:repeating-linear-gradient(45deg,
 #f1f3f5,#f1f3f5 8px,#e9ecef 8px,#e9ecef 16px);display:flex;flex-direction:column;
 align-items:center;justify-content:center;text-align:center;color:#868e96}
.tag{display:inline-block;border-radius:4px;padding:0 6px;font-size:11px;color:#fff;
 margin-bottom:4px;word-break:break-all}
.tag.kept{background:#2b8a3e}.tag.drop{background:#c92a2a}
.cap{overflow-wrap:anywhere}.err{color:#c92a2a;overflow-wrap:anywhere}
.uid{color:#adb5bd;font-family:monospace;font-size:11px}.bad{color:#c92a2a}
tr.bad td{color:#c92a2a}tr.chosen td{font-weight:700;background:#fff3bf}
.warn{background:#fff3bf;border-left:4px solid #f59f00;padding:6px 10px}
.card.dup{grid-column:span 2;display:flex;gap:8px}.card.dup>*{flex:1 1 0;min-width:0}
.orig{border-left:2px dashed #adb5bd;padding-left:8px}.olabel{color:#495057;font-weight:600}
table.scores{font-size:12px;margin:4px 0;width:100%;table-layout:fixed}
table.scores th,table.scores td{padding:1px 4px;background:none;font-weight:normal;
 overflow-wrap:anywhere}
table.scores th{width:60%}table.scores td{text-align:right;font-variant-numeric:tabular-nums}
table.scores tr.why th,table.scores tr.why td{font-weight:700;color:#862e9c}
nav.pages{margin:8px 0}nav.pages a,nav.pages b{margin-right:6px}
td.pages a{margin-right:5px}figure.curve table{font-size:12px}
"""

_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style></head>
<body><main>
{body}
<p class="path">Written by <code>curate report</code>.</p>
</main></body></html>
"""
