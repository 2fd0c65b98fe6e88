"""The saved ``SEL/pipeline.yaml`` names every file by its absolute path, so a selection is
audited, diffed and rerun from any directory (issue 17, finding 3)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from curate.config import load_pipeline
from curate.saved import absolute_paths

REPO = Path(__file__).resolve().parent.parent


def test_the_demo_pipeline_saves_absolute_paths_and_loads_from_elsewhere(
        demo_yaml_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from curate.audit.report import threshold_bounds
    from curate.io.shards import list_shards

    root = demo_yaml_run.parents[3]  # ROOT/demo/run/selections/demo
    saved = yaml.safe_load((demo_yaml_run / "pipeline.yaml").read_text())
    original = yaml.safe_load((REPO / "pipelines" / "demo.yaml").read_text())
    assert saved["input"]["shards"] == f"{root}/demo/pool/{{00000..00007}}.tar"
    assert saved["score"][4]["clip"]["model"] == f"{root}/demo/filter"
    # Nothing else changed: names, columns, reasons and the other parameters are as written.
    original["input"]["shards"] = saved["input"]["shards"]
    original["score"][4]["clip"]["model"] = saved["score"][4]["clip"]["model"]
    assert saved == original

    monkeypatch.chdir(tmp_path)  # another directory: demo/pool and demo/filter are not here
    again = load_pipeline(demo_yaml_run / "pipeline.yaml")
    assert len(list_shards(again.input.shards)) == 8
    clip = again.scorer_stages()[4]
    assert Path(clip.params.model).resolve() == (root / "demo" / "filter").resolve()  # type: ignore[attr-defined]
    assert [(b.op, b.value) for b in threshold_bounds(demo_yaml_run / "pipeline.yaml")[
        "clip_score"]] == [("≥", 0.45)]


def test_absolute_paths_rewrites_only_paths(tmp_path: Path) -> None:
    for d in ("models/filter", "assets", "rw"):
        (tmp_path / d).mkdir(parents=True)
    for f in ("assets/c.pt", "assets/t0.pt", "assets/t1.pt", "lid.ftz", "caption_words",
              "plugin.py"):
        (tmp_path / f).write_bytes(b"x")
    raw = {
        "name": "x",
        "imports": ["plugin.py", "my_package.stages"],
        "input": {"shards": ["pool/a.tar", "s3://bucket/{0..9}.tar", "/abs/b.tar"]},
        "store": "runs/store",
        "metadata": {"parquet": "meta/part", "columns": {"face": "int64"}},
        "score": [
            "image_info",
            {"clip": {"model": "models/filter", "pretrained": None}},
            {"clip": {"model": "ViT-B-32", "pretrained": "openai", "name": "b32"}},
            {"clip": {"model": "hf-hub:org/m", "name": "hub"}},
            {"clip": {"model": "local-dir:models/filter", "name": "ld"}},
            {"language": {"model_path": "lid.ftz"}},
            {"embedding_head": {"weights": "~/w.npz"}},
        ],
        "select": [
            {"rule": "threshold", "column": "caption_words", "gt": 2, "reason": "assets"},
            {"rule": "sql", "keep": "width > 1", "reason": "models"},
            {"preset": "datacomp_image_based", "centroids": "assets/c.pt",
             "targets": ["assets/t0.pt", "assets/t1.pt"], "centroid_column": "assets"},
            {"selector": "exact_dedup"},
        ],
        "output": {"dir": "out/shards", "samples_per_shard": 10},
        "rewrite": {"backend": "transformers", "model": "rw", "cache": "cache.sqlite",
                    "examples_file": "ex.yaml"},
    }
    out = absolute_paths(raw, tmp_path)
    t = str(tmp_path)
    assert out["imports"] == [f"{t}/plugin.py", "my_package.stages"]
    assert out["input"]["shards"] == [f"{t}/pool/a.tar", "s3://bucket/{0..9}.tar", "/abs/b.tar"]
    assert out["store"] == f"{t}/runs/store"
    assert out["metadata"] == {"parquet": f"{t}/meta/part", "columns": {"face": "int64"}}
    assert out["score"][0] == "image_info"
    assert out["score"][1] == {"clip": {"model": f"{t}/models/filter", "pretrained": None}}
    assert out["score"][2:4] == raw["score"][2:4]  # model names, not paths
    assert out["score"][4] == {"clip": {"model": f"local-dir:{t}/models/filter", "name": "ld"}}
    assert out["score"][5] == {"language": {"model_path": f"{t}/lid.ftz"}}
    assert out["score"][6] == raw["score"][6]  # ~ does not depend on the directory
    # Columns, SQL and reasons are never paths, even when a file of that name exists.
    assert out["select"][:2] == raw["select"][:2]
    assert out["select"][2] == {"preset": "datacomp_image_based", "centroids": f"{t}/assets/c.pt",
                                "targets": [f"{t}/assets/t0.pt", f"{t}/assets/t1.pt"],
                                "centroid_column": "assets"}
    assert out["output"] == {"dir": f"{t}/out/shards", "samples_per_shard": 10}
    assert out["rewrite"] == {"backend": "transformers", "model": f"{t}/rw",
                              "cache": f"{t}/cache.sqlite", "examples_file": f"{t}/ex.yaml"}
    hub = absolute_paths({"rewrite": {"backend": "transformers", "model": "org/llm"}}, tmp_path)
    assert hub["rewrite"]["model"] == "org/llm"  # a hub name: no such directory here
    rc = absolute_paths({"recaption": {"backend": "transformers", "model": "rw",
                                       "cache": "c.sqlite"}}, tmp_path)["recaption"]
    assert rc == {"backend": "transformers", "model": f"{t}/rw", "cache": f"{t}/c.sqlite"}
    served = absolute_paths({"recaption": {"backend": "openai", "model": "rw"}}, tmp_path)
    assert served["recaption"]["model"] == "rw"  # the name a server knows it by
    assert raw["store"] == "runs/store"  # the input is not modified
