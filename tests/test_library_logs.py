"""Other libraries' warnings stay off the screen and go into the run log; curate says in one
line of its own what matters (open_clip's "No pretrained weights loaded", faiss's "please provide
at least N training points")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from curate.runtime import RunLog


def events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_kmeans_advice_goes_to_the_run_log(tmp_path: Path, capfd: pytest.CaptureFixture[str]
                                           ) -> None:
    import faiss

    from curate.lib.clustering import spherical_kmeans

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rlog = RunLog(tmp_path / "log.jsonl")
    try:
        centroids, assign = spherical_kmeans(x, 8, seed=3)
    finally:
        rlog.close()
    err = capfd.readouterr().err
    assert "please provide at least" not in err and "k-means" not in err
    logged = [e for e in events(tmp_path / "log.jsonl") if e["event"] == "log"]
    assert [e["message"] for e in logged] == [
        "k-means of 120 points into 8 clusters: faiss advises at least 312 points"]
    assert logged[0]["level"] == "INFO" and logged[0]["logger"] == "curate"
    # faiss with its own default prints the advice, and clusters exactly the same
    km = faiss.Kmeans(16, 8, niter=20, seed=3, spherical=True, verbose=False,
                      max_points_per_centroid=64)
    km.train(x)
    assert "please provide at least 312 training points" in capfd.readouterr().err
    np.testing.assert_array_equal(km.centroids, centroids)
    np.testing.assert_array_equal(km.index.search(x, 1)[1][:, 0], assign)


SCRIPT = """
import logging, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from clipfixtures import random_clip_dir
from curate.demo.generator import make_demo_pool
from curate.lib.clip_model import load_clip
from curate.lib.train_filter import TrainConfig, train_filter
from curate.runtime import RunLog, library_logs

tmp = Path({tmp!r})
def part(name):
    print(f"--- {{name}}", file=sys.stderr, flush=True)

part("run log")
rlog = RunLog(tmp / "log.jsonl")
logging.getLogger("curate").warning("shard %s is truncated", "00001.tar")
logging.getLogger("somelib").warning("a library's own remark")
rlog.close()
part("random weights")
load_clip("curate-tiny", None)
with library_logs():  # open_clip.create_model warns too, and its warning configures logging
    model = random_clip_dir(tmp / "m")
part("a directory with weights")
load_clip(str(model), None)
part("a directory without weights")
(model / "open_clip_pytorch_model.bin").unlink()
load_clip(str(model), None)
part("train-filter")
make_demo_pool(tmp / "trusted", seed=1, shards=1, samples_per_shard=32, trusted=True)
train_filter(TrainConfig(data=str(tmp / "trusted" / "*.tar"), out=str(tmp / "f"), epochs=1,
                         batch_size=16), progress=False)
part("end")
"""


@pytest.mark.slow
def test_library_warnings_stay_off_the_screen(tmp_path: Path) -> None:
    """Outside pytest's log capture (a fresh process, as the CLI runs): curate's own warnings
    print, open_clip's do not; what matters is said once, in curate's words."""
    script = SCRIPT.format(tests=str(REPO / "tests"), tmp=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                         text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert res.returncode == 0, res.stderr
    parts = dict(p.split("\n", 1) for p in res.stderr.split("--- ")[1:])
    assert parts["run log"].strip() == "shard 00001.tar is truncated"
    logged = {(e["logger"], e["message"]) for e in events(tmp_path / "log.jsonl")
              if e["event"] == "log"}
    assert logged == {("curate", "shard 00001.tar is truncated"),
                      ("somelib", "a library's own remark")}
    assert parts["random weights"].strip() == \
        "curate-tiny: no pretrained weights, using random ones"
    assert parts["a directory with weights"].strip() == ""
    assert parts["a directory without weights"].strip() == (
        f"{tmp_path / 'm'}: the directory holds no weights, so the model is random and its "
        "scores mean nothing")
    assert "No pretrained weights" not in parts["train-filter"], parts["train-filter"]
    assert "WARNING" not in res.stderr, res.stderr


def test_two_run_logs_open_at_once_each_take_a_record_once(tmp_path: Path) -> None:
    """A run log left open (or a second one in the same process) must not make the other
    write a record twice: each handler is on curate's logger and on the root."""
    import logging

    first, second = RunLog(tmp_path / "a.jsonl"), RunLog(tmp_path / "b.jsonl")
    try:
        logging.getLogger("curate").info("one record")
    finally:
        second.close()
        first.close()
    for name in ("a.jsonl", "b.jsonl"):
        logged = [e["message"] for e in events(tmp_path / name) if e["event"] == "log"]
        assert logged == ["one record"], name
