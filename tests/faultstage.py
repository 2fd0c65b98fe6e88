"""A scorer that injects faults into real runs: it kills its own Ray worker process, sleeps,
or deletes an input shard, at a chosen shard. It adds no column, so a run with it has the same
manifest and output as a run without it.

Ray workers cannot import the tests directory, so ``install()`` registers the stage and asks
cloudpickle to ship this module by value with the pipeline.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from curate.stages.base import Params, Resources, Scorer


class FaultParams(Params):
    kill_at: str | None = None  # kill the worker process while scoring this shard ...
    kill_from: int = 0  # ... at the first batch that starts at or after this sample index ...
    kill_once: str | None = None  # ... once: this file is created before the kill
    sleep: float = 0.0  # seconds per batch (slows a run down so a test can interrupt it)
    delete_at: str | None = None  # while scoring this shard ...
    delete: str | None = None  # ... delete this file (an input shard vanishing mid-run)
    cpus: float = 1.0  # what the worker holding it asks Ray for


class Fault(Scorer):
    name = "fault"

    Params = FaultParams

    def __init__(self, params: FaultParams | None = None) -> None:
        super().__init__(params)
        self.resources = Resources(cpus=self.params.cpus)  # type: ignore[attr-defined]

    def inputs(self) -> tuple[str, ...]:
        return ("shard", "index")

    def outputs(self) -> Mapping[str, pa.DataType]:
        return {}

    def score_batch(self, batch: pa.Table) -> Mapping[str, Any]:
        p: FaultParams = self.params  # type: ignore[assignment]
        shard = batch.column("shard")[0].as_py()
        if p.sleep:
            time.sleep(p.sleep)
        if p.delete_at == shard and p.delete and os.path.exists(p.delete):
            os.unlink(p.delete)
        first = batch.column("index")[0].as_py()
        if p.kill_at == shard and first >= p.kill_from and (
                p.kill_once is None or not Path(p.kill_once).exists()):
            if p.kill_once is not None:
                Path(p.kill_once).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return {}


def install() -> None:
    """Register ``fault`` (idempotent) and ship this module to Ray workers by value."""
    import sys

    import cloudpickle
    from ray import cloudpickle as ray_cloudpickle  # Ray ships its own copy

    from curate.stages.base import _REGISTRY

    _REGISTRY["scorer"].setdefault("fault", Fault)
    for cp in (cloudpickle, ray_cloudpickle):
        cp.register_pickle_by_value(sys.modules[__name__])


def pipeline(pool: Path, fault: dict[str, Any], output: dict[str, Any] | None = None,
             **run: Any) -> Any:
    """pipelines/basic.yaml on ``pool`` with ``fault`` (its params) as the first scorer;
    ``output`` and ``run`` update those sections."""
    import yaml
    from conftest import REPO

    from curate.config import pipeline_from_dict

    install()
    raw = yaml.safe_load((REPO / "pipelines" / "basic.yaml").read_text())
    raw["score"] = [{"fault": fault}, *raw["score"]]
    raw["input"] = {"shards": str(pool / "*.tar")}
    raw.setdefault("output", {})["write_shards"] = True  # compared with demo_run's shards
    if output:
        raw.setdefault("output", {}).update(output)
    if run:
        raw.setdefault("run", {}).update(run)
    return pipeline_from_dict(raw)
