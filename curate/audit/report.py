"""``curate report``: one self-contained HTML page that explains a finished run at a glance.

The page (``SEL/report/index.html``) shows the selection's configuration and timings, the selection
funnel, the score distributions of kept and dropped samples with the rule thresholds, languages
and caption lengths, selector reports (MetaCLIP's entry-count curve), caption rewrites and a
gallery of kept and dropped samples. Every image is embedded as a ``data:`` URI, so the HTML
file alone is enough; the plots are also written as PNG files next to it. Thumbnails are
re-encoded as small JPEGs for the page only; the run's shards are never touched.

The manifest is never loaded whole: histograms, language counts and the gallery's samples are
aggregations and ``LIMIT`` queries in DuckDB over ``manifest.parquet``, so a 100M-row run's
report needs about as much memory as the demo's.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.errors import CurateError

if TYPE_CHECKING:
    import duckdb
    import numpy as np
    import pyarrow as pa
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MAX_SCORE_PLOTS = 12
TOP_LANGS = 15
THUMB_PX = 160
CAPTION_CHARS = 140
REWRITE_EXAMPLES = 6
KEPT_COLOR = "#2b8a3e"
DROPPED_COLOR = "#c92a2a"
# Manifest columns that identify a sample rather than score it (and rewrites_ok, which the
# rewrites section covers).
IDENTITY_COLUMNS = {"index", "uid", "shard", "key", "image_member", "url", "caption", "status",
                    "error_stage", "error", "reason", "kept", "duplicate_of", "rewrites_ok"}


@dataclass(frozen=True)
class Bound:
    """One bound of a ``threshold`` rule, drawn as a vertical line on its column's histogram."""

    op: str
    value: float
    reason: str


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


def write_report(run_dir: str | Path, out: str | Path | None = None, gallery: int = 12) -> Path:
    """Write the HTML report of the finished selection in ``run_dir`` (a selection directory,
    or a run's ``--out`` holding one selection); return its path.

    ``out`` defaults to ``SEL/report/index.html``; the plots are saved as PNG files in the same
    directory. ``gallery`` is the number of kept and of dropped samples shown (each).
    """
    from curate.audit.catalog import resolve_selection
    from curate.io.atomic import write_text

    run = resolve_selection(run_dir, "manifest.parquet")
    if not (run / "funnel.parquet").is_file():
        raise CurateError(f"{run} is not a finished selection (no funnel.parquet)",
                          "run the same command again to resume it")
    dest = Path(out) if out is not None else run / "report" / "index.html"
    dest.parent.mkdir(parents=True, exist_ok=True)
    page = _Page(dest.parent)
    data = _RunData.load(run)
    page.sections.append(_header(data))
    page.sections.append(_funnel(page, data))
    page.sections.append(_scores(page, data))
    page.sections.append(_captions(page, data))
    page.sections.append(_selector_reports(run))
    page.sections.append(_rewrites(run, data))
    page.sections.append(_gallery(run, data, gallery))
    title = f"curate report: {data.name}"
    body = "\n".join(s for s in page.sections if s)
    write_text(_HTML.format(title=_e(title), css=_CSS, body=body), dest)
    return dest


def report_command(args: argparse.Namespace) -> int:
    """``curate report RUN_DIR [--out FILE] [--gallery N]``."""
    if args.gallery < 0:
        raise CurateError("--gallery must be 0 or more", "e.g. --gallery 12")
    print(write_report(args.run_dir, args.out, gallery=args.gallery))
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
    con: duckdb.DuckDBPyConnection  # view ``manifest`` over manifest.parquet
    schema: pa.Schema  # the manifest's columns
    bounds: dict[str, list[Bound]]

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
            loaded = yaml.safe_load(text)
            raw = loaded if isinstance(loaded, dict) else {}
        funnel = pq.read_table(run / "funnel.parquet").to_pylist()
        con = _manifest_view(run / "manifest.parquet")
        schema = pq.read_schema(run / "manifest.parquet")
        samples = int(stats["samples"]) if "samples" in stats else int(
            pq.read_metadata(run / "manifest.parquet").num_rows)
        kept = int(stats["kept"]) if "kept" in stats else int(
            con.sql("SELECT count(*) FILTER (WHERE kept) FROM manifest").fetchall()[0][0])
        return cls(run=run, name=str(raw.get("name") or stats.get("pipeline") or run.name),
                   description=raw.get("description"), pipeline_text=text, stats=stats,
                   funnel=funnel, samples=samples, kept=kept, con=con, schema=schema,
                   bounds=threshold_bounds(run / "pipeline.yaml", run))


def _manifest_view(source: Path | pa.Table) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view ``manifest`` over ``source`` (a Parquet file
    or an Arrow table)."""
    import duckdb

    from curate.sql import literal

    con = duckdb.connect()
    if isinstance(source, Path):
        con.execute(f"CREATE VIEW manifest AS SELECT * FROM read_parquet({literal(str(source))})")
    else:
        con.register("manifest", source)
    return con


def threshold_bounds(pipeline_yaml: Path, run: Path | None = None) -> dict[str, list[Bound]]:
    """Column → the bounds of the selection's ``threshold`` rules (presets already expanded).

    Only the selection steps are read (not the scorers, whose models may not load where the
    report is written). A file that no longer loads (a stage removed since) gives no bounds
    rather than no report.
    """
    from curate.config import load_yaml, selection_from_dict
    from curate.stages.threshold import Threshold, ThresholdParams

    if not pipeline_yaml.is_file():
        return {}
    try:
        raw = load_yaml(pipeline_yaml)
        steps = {k: v for k, v in raw.items() if k in ("name", "select")} \
            if isinstance(raw, dict) else {}
        selection = selection_from_dict(steps, source=str(pipeline_yaml))
    except CurateError:
        return {}
    out: dict[str, list[Bound]] = {}
    for step in selection.select:
        if not isinstance(step.stage, Threshold):
            continue
        p: ThresholdParams = step.stage.params  # type: ignore[assignment]
        for op, v in (("≥", p.min), ("≤", p.max), (">", p.gt), ("<", p.lt)):
            if v is not None:
                out.setdefault(p.column, []).append(Bound(op, float(v), step.stage.reason))
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
        ax.text(v + top * 0.01, y, f"{v:,}", va="center", fontsize=8)
    ax.set_xlim(0, top * 1.12 or 1)
    ax.set_xlabel("samples")
    ax.set_title("Drops per reason, in pipeline order", fontsize=10)
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
                ax.text(a + b + most * 0.01, y, f"{a:,} / {a + b:,}", va="center", fontsize=7)
            ax.set_xlim(0, most * 1.25)
            ax.set_xlabel("samples (kept / all)", fontsize=8)
            ax.tick_params(labelsize=8)
            other = sum(int(r[1]) + int(r[2]) for r in counts[TOP_LANGS:])
            extra = f" ({other:,} in other languages)" if other else ""
            ax.set_title(f"Languages, top {len(top)}{extra}", fontsize=10)
            ax.legend(fontsize=8)
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
    from curate.sql import literal

    path = run / "rewrites.parquet"
    if not path.is_file():
        return ""
    con = d.con
    con.execute(f"CREATE OR REPLACE VIEW rewrites AS SELECT * FROM read_parquet("
                f"{literal(str(path))})")
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


def _pick_gallery(con: duckdb.DuckDBPyConnection, funnel_reasons: Sequence[str], n: int,
                  ) -> tuple[list[_Sample], list[_Sample]]:
    from curate.sql import ident, literal

    names = set(con.sql("SELECT * FROM manifest LIMIT 0").columns)
    fields = ", ".join(f"{literal(c)}: {ident(c) if c in names else 'NULL'}" for c in (
        "uid", "shard", "index", "image_member", "caption", "reason", "error"))
    row = "{" + fields + "}"

    def sample(r: dict[str, Any]) -> _Sample:
        return _Sample(str(r["uid"]), str(r["shard"]), int(r["index"]),
                       str(r.get("image_member") or ""), str(r.get("caption") or ""),
                       r.get("reason"), r.get("error"))

    kept_rows = con.sql(f"SELECT min_by({row}, uid, {n}) FROM manifest WHERE kept"
                        ).fetchall()[0][0] or []
    kept = [sample(r) for r in kept_rows]
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
                dropped.append(sample(by_reason[reason][depth]))
        depth += 1
    return kept, dropped


def _thumbnails(run: Path, samples: Iterable[_Sample]) -> dict[str, bytes | str]:
    """uid → a JPEG thumbnail, or the reason there is none."""
    import pyarrow.parquet as pq

    from curate.io.shards import ShardRef, read_members

    urls: dict[str, str] = {}
    if (run / "shards.parquet").is_file():
        t = pq.read_table(run / "shards.parquet", columns=["shard", "url"])
        urls = dict(zip(t.column("shard").to_pylist(), t.column("url").to_pylist(), strict=True))
    wanted: dict[str, list[_Sample]] = {}
    for s in samples:
        wanted.setdefault(s.shard, []).append(s)
    out: dict[str, bytes | str] = {}
    for shard, group in sorted(wanted.items()):
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


def _gallery(run: Path, d: _RunData, n: int) -> str:
    if n <= 0:
        return ""
    kept, dropped = _pick_gallery(d.con, [str(r["reason"]) for r in d.funnel], n)
    thumbs = _thumbnails(run, [*kept, *dropped])

    def card(s: _Sample) -> str:
        t = thumbs.get(s.uid, "not read")
        pic = (_img(t, "image/jpeg", s.caption[:80], "thumb") if isinstance(t, bytes) else
               f'<div class="ph" title="{_e(t)}">no image<br><small>{_e(_short(t, 60))}'
               "</small></div>")
        tag = ('<span class="tag kept">kept</span>' if s.reason is None else
               f'<span class="tag drop">{_e(s.reason)}</span>')
        err = f'<div class="err">{_e(_short(s.error, 80))}</div>' if s.error else ""
        return (f'<div class="card">{pic}{tag}<div class="cap" title="{_e(s.caption)}">'
                f"{_e(_short(s.caption, CAPTION_CHARS))}</div>{err}"
                f'<div class="uid">{_e(s.uid[:12])}</div></div>')

    kept_html = "".join(card(s) for s in kept) or "<p>no kept samples</p>"
    drop_html = "".join(card(s) for s in dropped) or "<p>no dropped samples</p>"
    return ("<section><h2>Samples</h2><p>The first samples by uid; dropped ones are spread over "
            "the drop reasons. Thumbnails are re-encoded for this page only.</p>"
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
        ax.set_title(name, fontsize=10)
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
    ax.set_title(name + (f"  ({h.missing:,} without a value)" if h.missing else ""), fontsize=10)
    ax.set_ylabel("samples", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7)
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
