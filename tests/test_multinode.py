"""A 3-node ``ray.cluster_utils.Cluster`` (a head without CPUs, as on real clusters, and two
1-CPU workers) runs the demo pipeline (basic filtering, dedup, the demo filter network's CLIP
score) and gives the same manifest and output shards as a single-node run. Scoring is spread
over both workers; output shards for a plain local path are written on the driver's node, and
for a ``file://`` URL (a mount every node sees) on the workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO

from curate.config import Pipeline, load_pipeline
from curate.runner import run

SCRIPT = """
import json
import sys

import ray
from ray.cluster_utils import Cluster

from curate.config import load_pipeline
from curate.runner import run

args = json.loads(sys.argv[1])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
cluster.wait_for_nodes()
try:
    # RUN/output (a plain path), then the same run into a file:// URL: scoring resumes.
    for out_dir in (None, args["shared"]):
        p = load_pipeline(args["pipeline"], {"input": {"shards": args["shards"]},
                                             "output": {"dir": out_dir}})
        run(p, args["run"], address=cluster.address, progress=False)
    print(json.dumps({"head": cluster.head_node.node_id,
                      "workers": [w.node_id for w in workers]}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def demo_yaml(root: Path, demo_filter: Path) -> Path:
    """pipelines/demo.yaml with the session's filter network."""
    path = root / "demo.yaml"
    path.write_text((REPO / "pipelines" / "demo.yaml").read_text().replace(
        "model: demo/filter", f"model: {demo_filter}"))
    return path


def demo_pipeline_on(pool: Path, yaml_path: Path) -> Pipeline:
    return load_pipeline(yaml_path, {"input": {"shards": str(pool / "*.tar")}})


@pytest.fixture(scope="module")
def single_node_run(demo_pool: Path, demo_filter: Path, ray_local: None,
                    tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("single")
    run(demo_pipeline_on(demo_pool, demo_yaml(root, demo_filter)), root / "run", progress=False)
    return root / "run"


def tars(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.tar"))}


@pytest.mark.slow
def test_cluster_run_matches_single_node_run(demo_pool: Path, demo_filter: Path,
                                             single_node_run: Path, tmp_path: Path) -> None:
    out, shared = tmp_path / "run", tmp_path / "shared"
    args = {"pipeline": str(demo_yaml(tmp_path, demo_filter)),
            "shards": str(demo_pool / "*.tar"), "run": str(out), "shared": f"file://{shared}"}
    res = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(args)],
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    nodes = json.loads(res.stdout.strip().splitlines()[-1])
    workers = set(nodes["workers"])

    # Same selection, same bytes, in both output locations.
    assert pq.read_table(out / "manifest.parquet").equals(
        pq.read_table(single_node_run / "manifest.parquet"))
    reference = tars(single_node_run / "output")
    assert len(reference) == 4  # 387 kept, 100 per shard
    assert tars(out / "output") == reference
    assert tars(shared) == reference
    assert (shared / "sizes.json").read_bytes() == (single_node_run / "output" / "sizes.json"
                                                    ).read_bytes()

    # Scoring ran on both workers (the head has no CPU).
    scored_on = set(pq.read_table(out / "shards.parquet").column("node").to_pylist())
    assert scored_on == workers

    # Writing: RUN/output on the driver's node, the file:// URL on the workers.
    log = [json.loads(x) for x in (out / "run_log.jsonl").read_text().splitlines()]
    starts = [i for i, e in enumerate(log) if e["event"] == "writing_start"]
    assert len(starts) == 2
    first, second = log[starts[0]], log[starts[1]]
    assert first["placement"] == "driver_node" and first["driver_node"] == nodes["head"]
    assert second["placement"] == "spread" and second["dir"] == f"file://{shared}"
    written = [[e["node"] for e in log[a:b] if e["event"] == "output_shard_done"]
               for a, b in ((starts[0], starts[1]), (starts[1], len(log)))]
    assert written[0] == [nodes["head"]] * 4
    assert len(written[1]) == 4 and set(written[1]) <= workers and len(set(written[1])) == 2
    resumed = [e for e in log[starts[0]:] if e["event"] == "scoring_start"]
    assert resumed and resumed[0]["todo"] == 0  # the second run scored nothing again
