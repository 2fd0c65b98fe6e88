"""Shared fixtures: a local Ray for the session, the demo pool and one demo run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def doc_query_examples() -> list[tuple[str, str]]:
    """(document, SQL) of each `curate query DIR "SQL"` in README.md and docs/*.md
    (placeholders such as "SQL" or "..." are not examples)."""
    import re

    examples = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for _, sql in re.findall(r"curate query (\S+) \"([^\"]+)\"", doc.read_text()):
            if sql.strip().lower().startswith(("select", "describe", "with", "from")):
                examples.append((doc.name, sql))
    return examples


# Examples over views that only some selections have, run by the tests that make one.
OPTIONAL_VIEW_EXAMPLES = {"recaptions": "tests/test_recaption_stage.py"}
sys.path.insert(0, str(Path(__file__).parent))
pytest_plugins = ["budget"]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Set before anything imports torch (here, in each xdist worker, and inherited by its Ray and
# subprocesses): OpenMP threads that wait by spinning burn the cores that the other processes of
# the suite need. Two 2-thread torch trainings side by side on 2 cores took 60 s each instead of
# 22 s with passive waiting (12 s alone); the numbers computed are the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Ray runs its workers at nice 15, under everything else on the machine: beside two CPU-bound
# loops (the busy-machine check) they got ~3% of a core each, and 40 minutes into the suite
# 29 tests had finished. At nice 0 they share the cores fairly with the other processes.
os.environ.setdefault("RAY_worker_niceness", "0")


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A 2-CPU local Ray shared by the tests of this session (shut down at the end)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
                 runtime_env={"env_vars": {"NO_ALBUMENTATIONS_UPDATE": "1"}})
    yield
    ray.shutdown()


def _shared_root(factory: pytest.TempPathFactory) -> Path:
    """Where the session's shared artefacts live: this run's temporary folder, which under
    pytest-xdist is the folder above each worker's own (``pytest-N/popen-gwK``), so the workers
    of one run build each artefact once and share it."""
    base = factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    root.mkdir(exist_ok=True)
    return root


def shared(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """The folder ``name``, filled by ``build(folder)`` once per test run however many xdist
    workers ask for it: the first builds it under a file lock, the others wait for it. What is
    in it is shared read-only; a test that must change it copies it first. A build that failed
    leaves no done-marker, so the next asker builds it again (and fails the same way)."""
    import budget  # tests/budget.py, this suite's plugin (loaded by then)
    from filelock import FileLock

    root = _shared_root(factory)
    out, done = root / name, root / f"{name}.done"
    t0 = time.perf_counter()
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            if out.exists():
                shutil.rmtree(out)
            out.mkdir()
            build(out)
            done.touch()
        else:  # built by another worker, maybe while this one waited (an idle core)
            budget.waited(name, time.perf_counter() - t0)
    return out


@pytest.fixture(scope="session")
def demo_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo pool as `curate demo-data demo/pool` makes it (8 shards of 64, seed 0)."""
    from curate.demo.generator import make_demo_pool

    return shared(tmp_path_factory, "demo", lambda d: make_demo_pool(d / "pool")) / "pool"


def demo_pipeline(pool: Path, write_shards: bool = False, **run: object) -> object:
    """pipelines/basic.yaml (DataComp basic filtering + exact dedup) on ``pool``; with
    ``write_shards``, its selection writes the curated shards too."""
    from curate.config import load_pipeline

    overrides: dict[str, dict[str, object]] = {"input": {"shards": str(pool / "*.tar")}}
    if write_shards:
        overrides["output"] = {"write_shards": True}
    if run:
        overrides["run"] = dict(run)
    return load_pipeline(REPO / "pipelines" / "basic.yaml", overrides)


@pytest.fixture(scope="session")
def demo_filter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A curate-tiny filter network trained on the demo's trusted set, as `make demo` does."""
    from curate.demo.generator import make_demo_pool
    from curate.lib.train_filter import TrainConfig, train_filter

    def build(root: Path) -> None:
        make_demo_pool(root / "trusted", seed=1, shards=2, samples_per_shard=256, trusted=True)
        train_filter(TrainConfig(data=str(root / "trusted" / "*.tar"), out=str(root / "filter"),
                                 epochs=15), progress=False)

    return shared(tmp_path_factory, "filter", build) / "filter"


@pytest.fixture(scope="session")
def random_rewriter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with random weights and an in-process tokenizer: it writes garbage."""
    from curate.demo.rewriter import make_demo_rewriter

    return shared(tmp_path_factory, "lm_random",
                  lambda d: make_demo_rewriter(d / "random", seed=0)) / "random"


@pytest.fixture(scope="session")
def trained_rewriter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo rewriter after a short training (fixed step count): its rewrites are
    well-formed demo captions, so most pass validation."""
    from curate.demo.rewriter import make_demo_rewriter

    # A fixed number of steps and no time cap, so the model is the same however busy the
    # machine is; the tests that use it get a longer timeout (see EXPENSIVE_FIXTURES).
    return shared(tmp_path_factory, "lm_trained", lambda d: make_demo_rewriter(
        d / "trained", seed=0, train_seconds=1e9, max_steps=TRAINED_REWRITER_STEPS)) / "trained"


TRAINED_REWRITER_STEPS = 120


@pytest.fixture(scope="session")
def random_captioner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BLIP with random weights and an in-process tokenizer: its captions are garbage."""
    from curate.demo.captioner import make_demo_captioner

    return shared(tmp_path_factory, "cap_random",
                  lambda d: make_demo_captioner(d / "random", seed=0)) / "random"


@pytest.fixture(scope="session")
def trained_captioner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo captioner after a short training (fixed step count, no time cap): its
    captions are well-formed demo captions, so most pass validation."""
    from curate.demo.captioner import make_demo_captioner

    return shared(tmp_path_factory, "cap_trained", lambda d: make_demo_captioner(
        d / "trained", seed=0, max_steps=TRAINED_CAPTIONER_STEPS)) / "trained"


TRAINED_CAPTIONER_STEPS = 200


@pytest.fixture(scope="session")
def demo_run(demo_pool: Path, ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The basic pipeline run once on the demo pool through the session's local Ray, curated
    shards included (written by Ray tasks): its selection directory (``RUN/selections/basic``;
    the store is ``RUN/store``)."""
    from curate.runner import run

    def build(root: Path) -> None:
        run(demo_pipeline(demo_pool, write_shards=True), root / "run", progress=False)

    return shared(tmp_path_factory, "demo_run", build) / "run" / "selections" / "basic"


@pytest.fixture(scope="session")
def demo_yaml_run(demo_pool: Path, demo_filter: Path, ray_local: None,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pipelines/demo.yaml itself, with its relative paths (demo/pool, demo/filter), run the
    way `make demo` runs it: from a directory holding demo/pool and demo/filter (links to the
    session's pool and filter network), into demo/run, then `curate write demo/run`. Its
    selection directory (``ROOT/demo/run/selections/demo``)."""
    from curate.config import load_pipeline
    from curate.runner import run, write

    def build(root: Path) -> None:
        (root / "demo").mkdir()
        (root / "demo" / "pool").symlink_to(demo_pool, target_is_directory=True)
        (root / "demo" / "filter").symlink_to(demo_filter, target_is_directory=True)
        before = os.getcwd()
        os.chdir(root)
        try:
            run(load_pipeline(REPO / "pipelines" / "demo.yaml"), "demo/run", progress=False)
            write("demo/run", progress=False)
        finally:
            os.chdir(before)

    return shared(tmp_path_factory, "demo_yaml", build) / "demo" / "run" / "selections" / "demo"


TEXT_PIPELINES = ("parrot_free", "tmars", "cat")


@pytest.fixture(scope="session")
def text_run(demo_pool: Path, demo_filter: Path, ray_local: None,
             tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's text-spotting loop (pipelines/parrot_free, tmars and cat.yaml, one after the
    other into one run directory, so the pool is scored once) on the session's demo pool and
    filter network: the run directory (``RUN/store``, ``RUN/selections/NAME``), with
    ``RUN/../resumed.json``: how many shards each run found already scored."""
    from curate.config import load_pipeline
    from curate.runner import run

    def build(root: Path) -> None:
        resumed = {}
        for name in TEXT_PIPELINES:
            text = (REPO / "pipelines" / f"{name}.yaml").read_text().replace(
                "model: demo/filter", f"model: {demo_filter}")
            (root / f"{name}.yaml").write_text(text)
            p = load_pipeline(root / f"{name}.yaml",
                              {"input": {"shards": str(demo_pool / "*.tar")}})
            resumed[name] = run(p, root / "run", progress=False).shards_resumed
        (root / "resumed.json").write_text(json.dumps(resumed))

    return shared(tmp_path_factory, "text", build) / "run"


def curate_cli(*args: str, cwd: Path | None = None, timeout: float = 300,
               ) -> subprocess.CompletedProcess[str]:
    """Run the installed ``curate`` command in a subprocess, 100 columns wide (the plan that
    `curate validate` prints wraps at the terminal's width, which xdist workers set to 80)."""
    exe = shutil.which("curate", path=str(Path(sys.executable).parent)) or "curate"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "100"})


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


# Session fixtures that train a model for a fixed amount of work, and the rewriter whose
# generations (a random model writes until max_tokens) are the costliest fixed work of the
# suite. The first test to use a fixture pays for it inside its own timeout, and on a machine
# busy with other work that took up to 5 times as long as on a quiet one (the suite: 20 min
# quiet, 83 min beside two busy processes), so those tests get this timeout (seconds) instead
# of the suite's 1200.
EXPENSIVE_FIXTURES = {"trained_rewriter": 2400, "demo_filter": 2400, "random_rewriter": 2400,
                      "trained_captioner": 2400}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.gpu`` tests cleanly on machines without a CUDA GPU; give the tests
    that may set up an expensive fixture its longer timeout."""
    for item in items:
        need = [EXPENSIVE_FIXTURES[f] for f in getattr(item, "fixturenames", ())
                if f in EXPENSIVE_FIXTURES]
        if need and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(max(need)))
    gpu_items = [i for i in items if i.get_closest_marker("gpu")]
    if gpu_items and not _has_cuda():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in gpu_items:
            item.add_marker(skip)
