"""The command line: help, the embedded Ray default of `curate run`, demo-data."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO, curate_cli


def test_help_lists_commands() -> None:
    res = curate_cli("--help")
    assert res.returncode == 0
    for cmd in ("demo-data", "run", "score", "select", "store", "query", "stats", "stages"):
        assert cmd in res.stdout
    res = curate_cli("stages")
    assert "image_info" in res.stdout and "datacomp_basic" in res.stdout


def test_run_starts_its_own_ray_and_resumes(tmp_path: Path) -> None:
    res = curate_cli("demo-data", str(tmp_path / "pool"), "--shards", "2", "--per-shard", "24")
    assert res.returncode == 0 and "48 samples" in res.stdout
    args = ("run", str(REPO / "pipelines" / "basic.yaml"), "--out", str(tmp_path / "run"),
            "--input", str(tmp_path / "pool" / "*.tar"))
    res = curate_cli(*args)
    assert res.returncode == 0, res.stderr
    assert "samples in" in res.stdout and "kept" in res.stdout
    assert re.search(r"\n  image_info +2 +0\n", res.stdout), res.stdout  # computed, reused
    assert (tmp_path / "run" / "selections" / "basic" / "catalog.duckdb").is_file()
    res = curate_cli(*args, "--no-progress")
    assert res.returncode == 0 and re.search(r"\n  image_info +0 +2\n", res.stdout)
    assert re.search(r"\n  \(read\) +0 +2\n", res.stdout)
