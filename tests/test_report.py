"""``curate report``: the self-contained HTML report of a finished run."""

from __future__ import annotations

import base64
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
    manifest = pq.read_table(demo_run / "manifest.parquet")
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
    assert threshold_bounds(demo_run / "missing.yaml") == {}


def test_data_uris_decode(report: Path) -> None:
    for cls, mime, b64 in DATA_URI.findall(report.read_text()):
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            im.load()
            assert im.format == {"image/png": "PNG", "image/jpeg": "JPEG"}[mime]
            if cls == "thumb":
                assert im.format == "JPEG" and max(im.size) <= 160


def test_gallery_spreads_over_reasons(demo_run: Path, report: Path) -> None:
    manifest = pq.read_table(demo_run / "manifest.parquet")
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
    cards = gallery.count('<div class="card">')
    thumbs = gallery.count('<img class="thumb"')
    placeholders = gallery.count('<div class="ph"')
    assert cards == 24 and thumbs + placeholders == cards
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
    assert text.split("<h2>Samples</h2>", 1)[1].count('<div class="card">') == 4


def test_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(CurateError, match="not a curate run or selection directory"):
        write_report(tmp_path)


def test_cli(demo_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli" / "report.html"
    r = curate_cli("report", str(demo_run), "--out", str(out), "--gallery", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    text = out.read_text()
    assert text.split("<h2>Samples</h2>", 1)[1].count('<div class="card">') == 6
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
