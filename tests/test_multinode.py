"""A 3-node ``ray.cluster_utils.Cluster`` (a head without CPUs, as on real clusters, and two
1-CPU workers) runs the demo pipeline (basic filtering, dedup, the demo filter network's CLIP
score) and gives the same manifest and output shards as a single-node run; every partitioned
global step of selection gives the one-process manifest there (the synthetic pool of
``test_partitioned``).

* A store on a plain path may exist on the driver's machine only: the workers (none can run on
  the CPU-less head) send their results to the driver, which commits them.
* A store on a ``file://`` URL (a mount every node sees) is shared storage: the workers commit
  their own results and the driver receives summaries only.
* Output shards for a plain local path are written on the driver's node, and for a ``file://``
  URL on the workers.

Nothing here depends on which worker the scheduler picks for which shard."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO

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
    # A plain store with RUN/output; the same run into a file:// output (scoring resumes);
    # then a file:// store (a new one: everything is scored again, committed by workers).
    for out, store, out_dir in ((args["run"], None, None), (args["run"], None, args["shared"]),
                                (args["run2"], args["shared_store"], None)):
        p = load_pipeline(args["pipeline"], {"input": {"shards": args["shards"]},
                                             "output": {"dir": out_dir, "write_shards": True}})
        p.store = store
        run(p, out, address=cluster.address, progress=False)
    # Every partitioned global step on the synthetic pool of tests/test_partitioned.py, on the
    # cluster (2 partitions, one per worker node) against the one-process algorithm.
    sys.path.insert(0, args["tests"])
    from pathlib import Path
    from test_partitioned import _metadata, _one_process, _pool, _same, _steps

    from curate.select import selection

    root = Path(args["synthetic"])
    source = _pool(root / "store")
    meta = _metadata(root / "meta", source)
    _one_process(source, root / "ref", meta)
    if not ray.is_initialized():
        ray.init(address=cluster.address)
    got = selection.select(_steps(source), source, root / "cluster", meta, workers=2,
                           on_ray=True)
    _same(root / "ref", root / "cluster")
    print(json.dumps({"head": cluster.head_node.node_id,
                      "workers": [w.node_id for w in workers],
                      "synthetic": {"partitions": got.partitions, "on_ray": got.on_ray}}))
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


def tars(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.tar"))}


def log_of(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_cluster_run_matches_single_node_run(demo_pool: Path, demo_filter: Path,
                                             demo_yaml_run: Path, tmp_path: Path) -> None:
    single_node_run = demo_yaml_run  # the same pipeline and pool, run on the session's Ray
    out, shared, run2 = tmp_path / "run", tmp_path / "shared", tmp_path / "run2"
    args = {"pipeline": str(demo_yaml(tmp_path, demo_filter)),
            "shards": str(demo_pool / "*.tar"), "run": str(out), "shared": f"file://{shared}",
            "run2": str(run2), "shared_store": f"file://{tmp_path / 'shared_store'}",
            "tests": str(REPO / "tests"), "synthetic": str(tmp_path / "synthetic")}
    res = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(args)],
                         capture_output=True, text=True, timeout=500)
    assert res.returncode == 0, res.stderr[-3000:]
    nodes = json.loads(res.stdout.strip().splitlines()[-1])
    workers = set(nodes["workers"])
    sel, sel2 = out / "selections" / "demo", run2 / "selections" / "demo"

    # Same selection, same bytes, in every output location.
    reference_manifest = pq.read_table(single_node_run / "manifest")
    assert pq.read_table(sel / "manifest").equals(reference_manifest)
    assert pq.read_table(sel2 / "manifest").equals(reference_manifest)
    reference = tars(single_node_run / "output")
    assert len(reference) == 4  # 387 kept, 100 per shard
    assert tars(sel / "output") == reference
    assert tars(shared) == reference
    assert tars(sel2 / "output") == reference
    assert (shared / "sizes.json").read_bytes() == (single_node_run / "output" / "sizes.json"
                                                    ).read_bytes()

    # The selections ran on the cluster, in 2 partitions (one Ray actor per CPU: one per
    # worker node), and gave the single-node run's manifest (above), which ran in one.
    for d in (sel, sel2):
        chosen = [e for e in log_of(d / "log.jsonl") if e["event"] == "selected"]
        assert chosen and all(e["on_ray"] and e["partitions"] == 2 for e in chosen)
    single = [e for e in log_of(single_node_run / "log.jsonl") if e["event"] == "selected"]
    assert single and all(not e["on_ray"] and e["partitions"] == 1 for e in single)
    # The synthetic pool with metadata and every partitioned global step (duplicate uids,
    # top_fraction twice, exact_dedup, metaclip_balance, centroid_target, metaclip2_balance):
    # the same manifest, entry counts and reports on 2 partitions of the cluster as in one
    # process (the script compared them).
    assert nodes["synthetic"] == {"partitions": 2, "on_ray": True}

    # Scoring ran on the workers only (the head has no CPU).
    scored_on = set(pq.read_table(sel / "shards.parquet").column("node").to_pylist())
    assert scored_on <= workers

    # Who committed: the driver for the plain store (it received the data), the workers for
    # the file:// store (the driver received summaries only).
    plain = log_of(out / "store" / "log.jsonl")
    done = [e for e in plain if e["event"] == "shard_done"]
    assert len(done) == 8 and {e["committed_by"] for e in done} == {"driver"}
    ends = [e for e in plain if e["event"] == "scoring_end"]
    assert ends[0]["driver_bytes_in"] > 0 and ends[1]["computed"] == 0  # the rerun resumed
    shared_log = log_of(tmp_path / "shared_store" / "log.jsonl")
    done = [e for e in shared_log if e["event"] == "shard_done"]
    assert len(done) == 8 and {e["committed_by"] for e in done} == {"worker"}
    assert [e["driver_bytes_in"] for e in shared_log if e["event"] == "scoring_end"] == [0]

    # Writing: SEL/output on the driver's node, the file:// URL on the workers.
    log = log_of(sel / "log.jsonl")
    starts = [i for i, e in enumerate(log) if e["event"] == "writing_start"]
    assert len(starts) == 2
    first, second = log[starts[0]], log[starts[1]]
    assert first["placement"] == "driver_node" and first["driver_node"] == nodes["head"]
    assert second["placement"] == "spread" and second["dir"] == f"file://{shared}"
    written = [[e["node"] for e in log[a:b] if e["event"] == "output_shard_done"]
               for a, b in ((starts[0], starts[1]), (starts[1], len(log)))]
    assert written[0] == [nodes["head"]] * 4
    assert len(written[1]) == 4 and set(written[1]) <= workers
