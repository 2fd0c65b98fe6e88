"""``curate validate`` and ``curate run --dry-run`` (issue 17): every check, and the plan of
what a run would compute and reuse against its store, without starting Ray or writing
anything."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, curate_cli

from curate.config import load_pipeline
from curate.runner import score

BASIC = REPO / "pipelines" / "basic.yaml"


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from curate.demo.generator import make_demo_pool

    out = tmp_path_factory.mktemp("validate_pool") / "pool"
    make_demo_pool(out, shards=2, samples_per_shard=16)
    return out


def _validate(*args: str) -> subprocess.CompletedProcess[str]:
    """``curate validate ...`` in a fresh interpreter that reports whether Ray was imported,
    with RAY_ADDRESS pointing nowhere (joining or starting Ray would fail)."""
    code = ("import sys\nfrom curate.cli import main\nrc = main(sys.argv[1:])\n"
            "print('RAY_IMPORTED=' + str('ray' in sys.modules))\nsys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120,
                          env={**os.environ, "RAY_ADDRESS": "127.0.0.1:9", "COLUMNS": "100"})


def _row(out: str, label: str) -> tuple[int, int]:
    m = re.search(rf"^  {re.escape(label)} +[0-9a-f]{{16}} +(\d+) +(\d+)$", out, re.MULTILINE)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def test_validate_plans_a_new_store_without_ray_or_writes(pool: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    res = _validate("validate", str(BASIC), "--input", str(pool / "*.tar"),
                    "--store", str(store), "--out", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"pipeline basic ({BASIC}): valid" in out
    assert f"input: 2 shards ({pool / '*.tar'})" in out
    assert f"store: {store} (new: everything is computed)" in out
    for label in ("(read)", "image_info", "caption_stats", "language", "exact_hash"):
        assert _row(out, label) == (2, 0)
    # the preset's rules and the selector, in order, with their reasons and SQL
    assert re.findall(r"^ +\d+\. (rule|selector) (\w+) +(\w+)", out, re.MULTILINE) == [
        ("rule", "threshold", "caption_too_short"), ("rule", "threshold", "caption_too_few_words"),
        ("rule", "in_set", "not_english"), ("rule", "sql", "image_too_small"),
        ("rule", "sql", "aspect_ratio_too_extreme"), ("selector", "exact_dedup", "duplicate_image")]
    assert 'caption_too_short: keep "caption_chars" > 5.0 (preset datacomp_basic)' in out
    assert "duplicate_image, duplicate_url_caption" in out
    assert f"selection: {tmp_path / 'run' / 'selections' / 'basic'}" in out
    assert "no shards (a selection is a query)" in out and "`curate write " in out
    assert "Ray: not started (a run starts it for the 2 shards to score)" in out
    assert "RAY_IMPORTED=False" in out
    assert not store.exists() and not (tmp_path / "run").exists()


def test_validate_sees_what_a_store_holds(pool: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    score(load_pipeline(BASIC, {"input": {"shards": str(pool / "*.tar")}}), store, local=True)
    res = _validate("validate", str(BASIC), "--input", str(pool / "*.tar"), "--store",
                    str(store))
    assert res.returncode == 0, res.stderr
    for label in ("(read)", "image_info", "caption_stats", "language", "exact_hash"):
        assert _row(res.stdout, label) == (0, 2)
    assert "Ray: not started (a run computes no score: the store has them all)" in res.stdout
    # a pipeline with one more scorer computes only it
    demo = tmp_path / "more.yaml"
    demo.write_text(BASIC.read_text().replace("  - exact_hash\n",
                                              "  - exact_hash\n  - image_complexity\n"))
    shard = pool / "00000.tar"
    os.utime(shard, (shard.stat().st_atime, shard.stat().st_mtime + 7))
    res = _validate("validate", str(demo), "--input", str(pool / "*.tar"), "--store",
                    str(store))
    assert res.returncode == 0, res.stderr
    assert _row(res.stdout, "image_info") == (0, 2)
    assert _row(res.stdout, "image_complexity") == (2, 0)
    assert "1 shards changed size or modification time since they were scored (00000.tar)" \
        in res.stdout
    assert "checked (models and files): image_complexity" in res.stdout


def test_run_dry_run_prints_the_plan_and_writes_nothing(pool: Path, tmp_path: Path) -> None:
    res = curate_cli("run", str(BASIC), "--dry-run", "--input", str(pool / "*.tar"),
                     "--out", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    assert f"store: {tmp_path / 'run' / 'store'} (new: everything is computed)" in res.stdout
    assert "samples in" not in res.stdout  # nothing was selected
    assert not (tmp_path / "run").exists()


def test_validate_reports_a_bad_pipeline(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASIC.read_text().replace("exact_hash", "exact_hashh"))
    res = curate_cli("validate", str(bad))
    assert res.returncode == 2
    assert "unknown scorer 'exact_hashh'" in res.stderr and "did you mean 'exact_hash'" in \
        res.stderr
