"""The embedding selectors' pipelines (clipcov, semdedup, mode) on the demo pool, reading the
embeddings the demo's CLIP scorer stored."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO

from curate.config import load_pipeline
from curate.runner import run


@pytest.fixture(scope="module")
def emb_runs(demo_pool: Path, demo_filter: Path, demo_yaml_run: Path,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three pipelines run on the store of the session's demo.yaml run: they score with
    the same scorers, so nothing is scored again (score once), only selected."""
    root = tmp_path_factory.mktemp("emb")
    store = demo_yaml_run.parent.parent / "store"
    out = {}
    for name in ("clipcov", "semdedup", "mode"):
        text = (REPO / "pipelines" / f"{name}.yaml").read_text().replace(
            "model: demo/filter", f"model: {demo_filter}")
        (root / f"{name}.yaml").write_text(f"{text}\nstore: {store}\n")
        p = load_pipeline(root / f"{name}.yaml", {"input": {"shards": str(demo_pool / "*.tar")},
                                                  "output": {"write_shards": True}})
        assert p.store == str(store)
        result = run(p, root / "run", progress=False)
        assert result.shards_resumed == 8
        out[name] = result.dir
    return out


@pytest.mark.slow
def test_clipcov_keeps_its_budget_and_reports(emb_runs: dict[str, Path]) -> None:
    rows = pq.read_table(emb_runs["clipcov"] / "manifest").to_pylist()
    report = json.loads((emb_runs["clipcov"] / "reports" / "clipcov.json").read_text())
    kept = sum(r["kept"] for r in rows)
    assert kept == report["selected"] == report["candidates"] // 2
    assert report["cov_err_clipcov"] < report["cov_err_topk"]
    assert all(r["clipcov_class"] is not None for r in rows if r["kept"])


@pytest.mark.slow
def test_semdedup_links_point_at_kept_samples(emb_runs: dict[str, Path]) -> None:
    rows = pq.read_table(emb_runs["semdedup"] / "manifest").to_pylist()
    kept = {r["uid"] for r in rows if r["kept"]}
    dups = [r for r in rows if r["reason"] == "semantic_duplicate"]
    assert dups and all(r["semantic_duplicate_of"] in kept for r in dups)


@pytest.mark.slow
def test_mode_splits_the_output_per_coarse_cluster(emb_runs: dict[str, Path]) -> None:
    out = emb_runs["mode"] / "output"
    rows = pq.read_table(emb_runs["mode"] / "manifest").to_pylist()
    kept = [r for r in rows if r["kept"]]
    dirs = sorted(d.name for d in out.iterdir() if d.is_dir() and not d.name.startswith("."))
    assert dirs == [f"cluster_coarse={c}" for c in range(4)]
    total = 0
    for d in dirs:
        sizes = json.loads((out / d / "sizes.json").read_text())
        total += sum(sizes.values())
        cluster = int(d.split("=")[1])
        with tarfile.open(out / d / "00000.tar") as tar:
            metas = [json.loads(tar.extractfile(m).read())  # type: ignore[union-attr]
                     for m in tar if m.name.endswith(".json")]
        assert metas and all(m["scores"]["cluster_coarse"] == cluster for m in metas)
    assert total == len(kept)
