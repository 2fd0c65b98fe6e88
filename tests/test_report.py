"""``curate report``: the self-contained HTML report of a finished run."""

from __future__ import annotations

import base64
import html
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import curate_cli
from PIL import Image

from curate.audit.report import pick_gallery, threshold_bounds, write_report
from curate.errors import CurateError

REPO = Path(__file__).resolve().parent.parent

DATA_URI = re.compile(r'<img class="(plot|thumb)" alt="[^"]*" src="data:(image/\w+);base64,'
                      r'([A-Za-z0-9+/=]+)">')


@pytest.fixture(scope="module")
def report(demo_run: Path) -> Path:
    return write_report(demo_run)


def test_report_is_written_with_its_plots(demo_run: Path, report: Path) -> None:
    assert report == demo_run / "report" / "index.html"
    pngs = sorted(p.name for p in report.parent.glob("*.png"))
    assert "funnel.png" in pngs and "languages.png" in pngs and "caption_length.png" in pngs
    # Every numeric score column gets a histogram; caption_words is the caption-length plot.
    assert {"score_caption_chars.png", "score_aspect_ratio.png", "score_width.png"} <= set(pngs)
    assert "score_index.png" not in pngs and "score_caption_words.png" not in pngs
    text = report.read_text()
    # Self-contained: no external resources, no scripts.
    assert "<script" not in text
    assert not re.search(r'(src|href)="(https?:|//|file:)', text)
    imgs = DATA_URI.findall(text)
    assert len(imgs) == text.count("<img")
    plots = [i for i in imgs if i[0] == "plot"]
    assert len(plots) == len(pngs)


def test_header_and_funnel_numbers(demo_run: Path, report: Path) -> None:
    text = report.read_text()
    funnel = pq.read_table(demo_run / "funnel.parquet").to_pylist()
    manifest = pq.read_table(demo_run / "manifest")
    kept = sum(manifest.column("kept").to_pylist())
    assert "<h1>basic</h1>" in text
    assert "DataComp basic filtering and exact dedup" in text
    assert f">{manifest.num_rows:,}<" in text
    assert f"{kept:,} ({100 * kept / manifest.num_rows:.1f}%)" in text
    table = text.split("<h2>Selection funnel</h2>", 1)[1].split("</table>", 1)[0]
    for row in funnel:
        assert re.search(rf"<td>− {re.escape(row['reason'])}</td><td class=\"num\">"
                         rf"{row['dropped']:,}</td>", table), row
    # The funnel rows come in pipeline order.
    positions = [table.index(f"− {r['reason']}<") for r in funnel]
    assert positions == sorted(positions)
    # The run configuration and the scorer timings.
    assert "<summary>Run configuration (pipeline.yaml)</summary>" in text
    assert "preset: datacomp_basic" in text
    for stage in ("image_info", "caption_stats", "language", "exact_hash"):
        assert f"<td>{stage}</td>" in text


def test_thresholds_come_from_the_expanded_presets(demo_run: Path) -> None:
    bounds = threshold_bounds(demo_run / "pipeline.yaml", demo_run)
    assert {c: [(b.op, b.value, b.reason) for b in bs] for c, bs in bounds.items()} == {
        "caption_chars": [(">", 5.0, "caption_too_short")],
        "caption_words": [(">", 2.0, "caption_too_few_words")],
    }  # the size rules are SQL over original or stored sizes: no single column to draw
    with pytest.raises(CurateError, match=r"missing\.yaml: no such file"):
        threshold_bounds(demo_run / "missing.yaml")  # never an empty answer


def test_data_uris_decode(report: Path) -> None:
    for cls, mime, b64 in DATA_URI.findall(report.read_text()):
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            im.load()
            assert im.format == {"image/png": "PNG", "image/jpeg": "JPEG"}[mime]
            if cls == "thumb":
                assert im.format == "JPEG" and max(im.size) <= 160


def test_gallery_spreads_over_reasons(demo_run: Path, report: Path) -> None:
    manifest = pq.read_table(demo_run / "manifest")
    reasons = [r["reason"] for r in pq.read_table(demo_run / "funnel.parquet").to_pylist()]
    kept, dropped = pick_gallery(manifest, reasons, 12)
    assert len(kept) == 12 and len(dropped) == 12
    assert all(s.reason is None for s in kept)
    uids = sorted(u for u, k in zip(manifest.column("uid").to_pylist(),
                                    manifest.column("kept").to_pylist(), strict=True) if k)
    assert [s.uid for s in kept] == uids[:12]
    # Round-robin over the 8 reasons: each appears, none more than twice.
    counts = {r: sum(s.reason == r for s in dropped) for r in reasons}
    assert all(1 <= n <= 2 for n in counts.values()), counts
    assert pick_gallery(manifest, reasons, 12) == (kept, dropped)  # deterministic

    text = report.read_text()
    gallery = text.split("<h2>Samples</h2>", 1)[1]
    cards = len(_cards(gallery))
    originals = gallery.count('<div class="orig">')  # a duplicate's card shows its original
    thumbs = gallery.count('<img class="thumb"')
    placeholders = gallery.count('<div class="ph"')
    assert cards == 24 and originals >= 2 and thumbs + placeholders == cards + originals
    # The demo's corrupt images (error:image_info) show a placeholder, the others decode.
    assert placeholders >= 1 and thumbs >= 20
    assert "error:image_info" in gallery and "cannot decode" in gallery


def test_text_is_escaped(demo_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(demo_run, run, ignore=shutil.ignore_patterns("report", "output"))
    yaml_text = (run / "pipeline.yaml").read_text()
    (run / "pipeline.yaml").write_text(yaml_text.replace(
        "description: DataComp basic filtering and exact dedup",
        "description: '<b>bold</b> & <script>x</script>'"))
    out = write_report(run, tmp_path / "r" / "page.html", gallery=2)
    text = out.read_text()
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;script&gt;" in text and "<script" not in text
    assert (tmp_path / "r" / "funnel.png").is_file()
    assert len(_cards(text.split("<h2>Samples</h2>", 1)[1])) == 4


def _cards(page: str) -> list[str]:
    """The cards of a page, each as its HTML (a duplicate's card holds its original's)."""
    parts = re.split(r'<div class="card( dup)?">', page)[1:]
    return [parts[i + 1] for i in range(0, len(parts), 2)]


def _score_row(card: str, column: str) -> str | None:
    m = re.search(rf"<th>{re.escape(column)}</th><td>([^<]*)</td>", card)
    return m.group(1) if m else None


def test_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(CurateError, match="not a curate run or selection directory"):
        write_report(tmp_path)


def test_cli(demo_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli" / "report.html"
    r = curate_cli("report", str(demo_run), "--out", str(out), "--gallery", "3",
                   "--per-page", "5", "--max-pages", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out) and "warning" not in r.stderr
    text = out.read_text()
    assert len(_cards(text.split("<h2>Samples</h2>", 1)[1])) == 6
    # one page of at most 5 per reason and for the kept samples
    reasons = {r["reason"] for r in pq.read_table(demo_run / "manifest").to_pylist()}
    pages = sorted((out.parent / "gallery").glob("*.html"))
    assert len(pages) == len(reasons) and all(len(_cards(p.read_text())) <= 5 for p in pages)
    r = curate_cli("report", str(demo_run), "--out", str(out), "--per-page", "0")
    assert r.returncode == 2 and "--per-page must be 1 or more" in r.stderr
    r = curate_cli("report", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (apt-get install chromium)")
def test_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    subprocess.run([str(_chromium()), "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1280,2400",
                    report.resolve().as_uri()],
                   capture_output=True, timeout=180, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    with Image.open(shot) as im:
        px = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert px.shape[:2] == (2400, 1280)
    assert px.std() > 20, "the screenshot is blank"
    # Plots and thumbnails are in view: many distinct colours, not only text on white.
    assert len(np.unique(px.reshape(-1, 3)[::7], axis=0)) > 500


# --- the auditor's report on pipelines/demo.yaml (issue 17, finding 9) ----------------------

PER_PAGE, MAX_PAGES = 20, 3


@pytest.fixture(scope="module")
def demo_report(demo_yaml_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the demo pipeline's run (CLIP score, dedup), with small pages so that the
    kept samples' gallery is capped."""
    out = tmp_path_factory.mktemp("demo_report") / "index.html"
    return write_report(demo_yaml_run, out, per_page=PER_PAGE, max_pages=MAX_PAGES)


@pytest.fixture(scope="module")
def damaged_run(demo_pool: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pipelines/basic.yaml on a copy of the demo pool whose last shard is cut in half,
    scored in this process and selected without writing shards: its selection directory."""
    from curate.config import load_pipeline
    from curate.runner import score, select

    root = tmp_path_factory.mktemp("damaged")
    (root / "pool").mkdir()
    for tar in sorted(demo_pool.glob("*.tar")):
        shutil.copy(tar, root / "pool" / tar.name)
    last = sorted((root / "pool").glob("*.tar"))[-1]
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    p = load_pipeline(REPO / "pipelines" / "basic.yaml", {
        "input": {"shards": str(root / "pool" / "*.tar")}, "output": {"write_shards": False}})
    score(p, root / "store", local=True, progress=False)
    return select(root / "store", p, root / "sel", progress=False).dir


def test_every_reason_and_the_kept_samples_have_paged_galleries(demo_yaml_run: Path,
                                                                demo_report: Path) -> None:
    manifest = pq.read_table(demo_yaml_run / "manifest").to_pylist()
    totals: dict[str, int] = {}
    for r in manifest:
        totals[r["reason"] or "kept"] = totals.get(r["reason"] or "kept", 0) + 1
    index = demo_report.read_text()
    section = index.split("<h2>Galleries</h2>", 1)[1].split("</section>", 1)[0]
    pages = sorted(p.name for p in (demo_report.parent / "gallery").glob("*.html"))
    want_pages = 0
    for name, total in totals.items():
        shown = min(total, PER_PAGE * MAX_PAGES)
        n_pages = -(-shown // PER_PAGE)
        want_pages += n_pages
        row = re.search(rf"<tr><td>{re.escape(name)}</td><td class=\"num\">{total:,}</td>"
                        rf"<td class=\"num\">{shown:,}</td><td class=\"num\">{total - shown:,}"
                        r"</td><td class=\"pages\">(.*?)</td></tr>", section)
        assert row, name
        links = re.findall(r'<a href="(gallery/[^"]+)">', row.group(1))
        assert len(links) == n_pages and all(Path(demo_report.parent / x).is_file()
                                             for x in links)
        cards = [c for x in links for c in _cards((demo_report.parent / x).read_text())]
        assert len(cards) == shown, name
        # The first by uid, in order, each on its outcome's page.
        uids = sorted(r["uid"] for r in manifest if (r["reason"] or "kept") == name)[:shown]
        assert [re.search(r'<div class="uid">(\w+)</div>', c).group(1) for c in cards] == [  # type: ignore[union-attr]
            u[:12] for u in uids]
    assert len(pages) == want_pages
    # The kept samples are capped, and the page says how many were left out.
    kept_page = (demo_report.parent / "gallery" / "00_kept_1.html").read_text()
    left = totals["kept"] - PER_PAGE * MAX_PAGES
    assert left > 0 and f"{left:,} are left out" in kept_page
    assert kept_page.count('<a href="00_kept_') == 2 * (MAX_PAGES - 1)  # links to the others
    assert '<a href="../index.html">' in kept_page


def test_cards_show_the_scores_of_the_step_that_dropped_them(demo_yaml_run: Path,
                                                             demo_report: Path) -> None:
    manifest = {r["uid"][:12]: r for r in
                pq.read_table(demo_yaml_run / "manifest").to_pylist()}
    folder = demo_report.parent / "gallery"
    low = [c for p in sorted(folder.glob("*_clip_score_too_low_*.html"))
           for c in _cards(p.read_text())]
    assert len(low) == sum(r["reason"] == "clip_score_too_low" for r in manifest.values()) > 0
    for card in low:
        uid = re.search(r'<div class="uid">(\w+)</div>', card).group(1)  # type: ignore[union-attr]
        row = manifest[uid]
        # the rule's own column, highlighted, with the value in the manifest
        assert f'<tr class="why"><th>clip_score</th><td>{row["clip_score"]:.4g}</td>' in card
        assert float(_score_row(card, "clip_score")) < 0.45  # type: ignore[arg-type]
        assert _score_row(card, "caption_words") == str(row["caption_words"])  # a key score
    small = next(folder.glob("*_image_too_small_1.html")).read_text()
    card = _cards(small)[0]
    # an SQL rule: the columns its expression reads
    assert '<tr class="why"><th>width</th>' in card and '<tr class="why"><th>height</th>' in card
    errors = _cards(next(folder.glob("*_error_image_info_1.html")).read_text())
    assert errors and all('<div class="err">' in c for c in errors)


def test_duplicates_are_shown_beside_their_originals(demo_yaml_run: Path,
                                                     demo_report: Path) -> None:
    manifest = {r["uid"]: r for r in
                pq.read_table(demo_yaml_run / "manifest").to_pylist()}
    folder = demo_report.parent / "gallery"
    for reason in ("duplicate_image", "duplicate_url_caption"):
        page = next(folder.glob(f"*_{reason}_1.html")).read_text()
        assert page.count('<div class="card dup">') == len(_cards(page)) > 0
        for card in _cards(page):
            uid12 = re.search(r'<div class="uid">(\w+)</div>', card).group(1)  # type: ignore[union-attr]
            row = next(r for u, r in manifest.items() if u.startswith(uid12))
            original = manifest[row["duplicate_of"]]
            mine, theirs = card.split('<div class="orig">', 1)
            assert "duplicate of" in theirs and f'<div class="uid">{original["uid"][:12]}' in theirs
            assert html.escape(original["caption"][:40]) in theirs
            assert ('<span class="tag kept">kept</span>' in theirs) == original["kept"]
            assert '<img class="thumb"' in mine and '<img class="thumb"' in theirs


def test_kept_vs_threshold_curves(demo_yaml_run: Path, demo_report: Path) -> None:
    from curate.audit.report import _manifest_view, _threshold_curve
    from curate.saved import saved_selection
    from curate.stages.threshold import Threshold

    kept = sum(pq.read_table(demo_yaml_run / "manifest", columns=["kept"])
               .column("kept").to_pylist())
    index = demo_report.read_text()
    section = index.split("<h2>Kept vs threshold</h2>", 1)[1].split("</section>", 1)[0]
    # one curve per threshold rule bound, each saying where the chosen one keeps what it kept
    for caption in ("clip_score ≥ 0.45 (clip_score_too_low)",
                    "caption_chars &gt; 5 (caption_too_short)",
                    "caption_words &gt; 2 (caption_too_few_words)"):
        assert caption in section
    assert f"clip_score ≥ 0.45 (clip_score_too_low): <b>{kept:,} kept</b>" in section
    assert section.count('<tr class="chosen">') == 3
    assert (demo_report.parent / "curve_00_caption_chars_gt.png").is_file()
    rule = next(s.stage for s in saved_selection(demo_yaml_run / "pipeline.yaml").select
                if isinstance(s.stage, Threshold) and s.stage.reason == "clip_score_too_low")
    con = _manifest_view(demo_yaml_run / "manifest")
    grid, counts, chosen, candidates = _threshold_curve(con, rule, "min", 0.45)
    assert chosen == kept and counts == sorted(counts, reverse=True) and counts[0] == candidates
    # each point is the kept count of that threshold, counted here in Python
    rows = [r for r in pq.read_table(demo_yaml_run / "manifest").to_pylist()
            if r["reason"] in (None, "clip_score_too_low")]
    for t, n in zip(grid[::10], counts[::10], strict=True):
        assert n == sum(r["clip_score"] is not None and np.float32(r["clip_score"])
                        >= np.float32(t) for r in rows), t


def test_shard_errors_are_listed(damaged_run: Path, tmp_path: Path) -> None:
    shards = pq.read_table(damaged_run / "shards.parquet").to_pylist()
    cut = [s for s in shards if s["status"] != "done"]
    assert len(cut) == 1 and cut[0]["read_error"]
    out = write_report(damaged_run, tmp_path / "index.html", gallery=2, max_pages=1)
    section = out.read_text().split("<h2>Input shards with problems</h2>", 1)[1].split(
        "</section>", 1)[0]
    row = re.search(r'<tr class="bad"><td>([^<]+)</td><td>([^<]+)</td>.*?</tr>', section)
    assert row and row.group(1) == cut[0]["shard"] and row.group(2) == cut[0]["status"]
    assert html.escape(cut[0]["read_error"][:60]) in row.group(0)
    # the other shards with sample errors (the demo's corrupt images) follow it
    with_errors = [s for s in shards if s["status"] == "done" and s["errors"]]
    assert section.count("<tr") - 1 == 1 + len(with_errors)
    assert "first sample error" in section and "image_info: " in section


def test_plot_text_is_readable(demo_yaml_run: Path) -> None:
    from curate.audit.report import FONT, _column_hist, _histogram, _manifest_view

    con = _manifest_view(demo_yaml_run / "manifest")
    fig = _histogram(_column_hist(con, '"clip_score"'), "clip_score", [])
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert legend is not None and FONT >= 10
    assert all(t.get_fontsize() >= 10 for t in legend.get_texts())
    assert all(t.get_fontsize() >= 10 for t in ax.get_xticklabels() + ax.get_yticklabels())


def test_a_saved_pipeline_that_does_not_load_is_loud(demo_run: Path, tmp_path: Path) -> None:
    from curate.audit.report import ReportWarning

    run = tmp_path / "run"
    shutil.copytree(demo_run, run, ignore=shutil.ignore_patterns("report", "output"))
    text = (run / "pipeline.yaml").read_text()
    (run / "pipeline.yaml").write_text(text.replace("selector: exact_dedup",
                                                    "selector: gone_since"))
    with pytest.raises(CurateError, match=rf"{re.escape(str(run / 'pipeline.yaml'))}: "
                       r".*unknown selector 'gone_since'"):
        threshold_bounds(run / "pipeline.yaml")
    with pytest.warns(ReportWarning, match="unknown selector 'gone_since'"):
        out = write_report(run, tmp_path / "r" / "index.html", gallery=1, max_pages=0)
    page = out.read_text()
    assert '<p class="warn">warning: cannot load the saved selection' in page
    r = curate_cli("report", str(run), "--out", str(tmp_path / "cli.html"))
    assert r.returncode == 0 and "warning: cannot load the saved selection" in r.stderr
    assert "unknown selector 'gone_since'" in r.stderr


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (apt-get install chromium)")
def test_galleries_curves_and_shard_errors_in_headless_chromium(
        demo_report: Path, damaged_run: Path, tmp_path: Path) -> None:
    from html.parser import HTMLParser

    class Text(HTMLParser):
        """The text of the rendered DOM, and the cards' classes."""

        def __init__(self) -> None:
            super().__init__()
            self.text: list[str] = []
            self.cards: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            cls = dict(attrs).get("class") or ""
            if tag == "div" and cls.split()[:1] == ["card"]:
                self.cards.append(cls)

        def handle_data(self, data: str) -> None:
            self.text.append(data)

    def look(page: Path, shot: Path | None = None) -> Text:
        """The page as headless Chromium builds it (and a screenshot of it)."""
        args = [str(_chromium()), "--headless", "--no-sandbox", "--disable-gpu",
                "--hide-scrollbars", "--window-size=1280,1600"]
        dom = subprocess.run([*args, "--dump-dom", page.resolve().as_uri()],
                             capture_output=True, text=True, timeout=180, check=False).stdout
        if shot is not None:
            subprocess.run([*args, f"--screenshot={shot}", page.resolve().as_uri()],
                           capture_output=True, timeout=180, check=False)
            assert shot.is_file(), f"chromium wrote no screenshot of {page}"
        parsed = Text()
        parsed.feed(dom)
        return parsed

    low = next((demo_report.parent / "gallery").glob("*_clip_score_too_low_1.html"))
    seen = look(low, tmp_path / "low.png")
    text = " ".join(" ".join(seen.text).split())
    assert len(seen.cards) == len(_cards(low.read_text())) > 0
    assert text.count("clip_score") >= len(seen.cards) and "← the report" in text
    with Image.open(tmp_path / "low.png") as im:
        px = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert px.std() > 20 and len(np.unique(px.reshape(-1, 3)[::7], axis=0)) > 500  # thumbnails

    dup = next((demo_report.parent / "gallery").glob("*_duplicate_image_1.html"))
    seen = look(dup)
    assert seen.cards and all(c == "card dup" for c in seen.cards)
    assert " ".join(seen.text).count("duplicate of") == len(seen.cards)

    seen = look(demo_report)
    text = " ".join(" ".join(seen.text).split())
    assert "Kept vs threshold" in text and "clip_score ≥ 0.45 (clip_score_too_low):" in text
    assert "Galleries" in text and "left out" in text

    out = write_report(damaged_run, tmp_path / "damaged" / "index.html", gallery=2, max_pages=1)
    seen = look(out)
    text = " ".join(" ".join(seen.text).split())
    cut = next(s for s in pq.read_table(damaged_run / "shards.parquet").to_pylist()
               if s["status"] != "done")
    assert f"{cut['shard']} {cut['status']}" in text
