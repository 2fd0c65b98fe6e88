"""A 2-node ray.cluster_utils.Cluster run (joined by address) gives the same manifest and the
same output shards as the single-node run, with work on both nodes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO

SCRIPT = """
import sys
import ray
from ray.cluster_utils import Cluster
from curate.config import load_pipeline
from curate.runner import run

pool, out = sys.argv[1], sys.argv[2]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
try:
    p = load_pipeline(sys.argv[3], {"input": {"shards": pool + "/*.tar"}})
    run(p, out, address=cluster.address, progress=False)
finally:
    ray.shutdown()
    cluster.shutdown()
"""


@pytest.mark.slow
def test_two_node_cluster_matches_local_run(demo_pool: Path, demo_run: Path,
                                            tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(demo_pool), str(out),
                          str(REPO / "pipelines" / "basic.yaml")],
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert pq.read_table(out / "manifest.parquet").equals(
        pq.read_table(demo_run / "manifest.parquet"))
    for a in sorted((demo_run / "output").glob("*.tar")):
        assert (out / "output" / a.name).read_bytes() == a.read_bytes()
    nodes = set(pq.read_table(out / "shards.parquet").column("node").to_pylist())
    assert len(nodes) == 2  # the shards were scored on both nodes
