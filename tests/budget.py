"""The suite's time budget, kept in view (tests/README.md): at the end of every run, the slowest
shared fixtures (session- and module-scoped; the first test to use one pays for it, so pytest's
own ``--durations`` charges it to that test), and each test file whose total time went past its
budget. Nothing here fails a test: tests assert correctness, never speed."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

# Seconds a test file may take (setup, calls and teardown of its tests, the shared fixtures it is
# first to build included) on 2 quiet cores; every file not named here: DEFAULT_BUDGET.
#
# The order is the order in which the files start (make test passes --no-loadscope-reorder): the
# first file builds the filter network, which a dozen files wait for, while the second builds
# the trained rewriter, which needs nothing; after them the longest files first, so that neither
# worker starts a long file while the other is about to run out of work.
DEFAULT_BUDGET = 30.0
FILE_BUDGETS = {
    "test_embedding_pipelines.py": 180.0,  # first user of demo_filter and demo_yaml_run
    "test_rewrite_stage.py": 180.0,  # first user of the demo rewriters; needs no filter
    "test_report.py": 90.0,
    "test_recaption_stage.py": 165.0,  # the demo captioners and three runs; needs no filter
    "test_store.py": 150.0,
    "test_partitioned.py": 45.0,  # Ray actors: 2 and 4 in one test, 2 from the CLI
    "test_readme_commands.py": 180.0,  # first user of text_run (OCR over the demo pool)
    "test_faults.py": 120.0,
    "test_search.py": 60.0,
    "test_store_verify.py": 60.0,
    "test_multinode.py": 90.0,
    "test_ingest.py": 60.0,
    "test_text_pipelines.py": 60.0,  # after test_readme_commands has built text_run
    "test_quickstart.py": 60.0,
    "test_run_environment.py": 60.0,
    "test_notebooks.py": 60.0,
    "test_hostile_inputs.py": 60.0,
    "test_metaclip_pipeline.py": 60.0,
    "test_rewrite_openai.py": 60.0,
    "test_cli.py": 45.0,
    "test_bad_inputs.py": 45.0,
    "test_clip.py": 45.0,
    "test_recaption_openai.py": 60.0,
}

_fixtures: dict[tuple[str, str], float] = {}
_waits: defaultdict[str, float] = defaultdict(float)


def waited(artefact: str, seconds: float) -> None:
    """Record that this process waited ``seconds`` for a shared artefact that another xdist
    worker was building (``conftest.shared``): time in which one core did nothing."""
    if seconds >= 1.0:
        _waits[artefact] += seconds


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files with a budget first, in the order FILE_BUDGETS lists them (the longest
    chains of shared fixtures first), so that two xdist workers do not end with one of them
    still on a long file while the other is idle. The order within a file is unchanged."""
    rank = {name: i for i, name in enumerate(FILE_BUDGETS)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(rank)))
_files: defaultdict[str, float] = defaultdict(float)


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[object],
                         request: pytest.FixtureRequest) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    if fixturedef.scope in ("session", "module"):
        where = request.node.nodeid.split("::", 1)[0] if fixturedef.scope == "module" else ""
        key = (fixturedef.argname, where)
        _fixtures[key] = _fixtures.get(key, 0.0) + time.perf_counter() - t0


def pytest_sessionfinish(session: pytest.Session) -> None:
    # an xdist worker sends its fixture times to the controller, which prints the summary
    out = getattr(session.config, "workeroutput", None)
    if out is not None:
        out["fixture_times"] = [[name, where, t] for (name, where), t in _fixtures.items()]
        out["waits"] = dict(_waits)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    # a shared artefact is built by one worker while the others wait for it: the longest
    for name, where, t in getattr(node, "workeroutput", {}).get("fixture_times", []):
        _fixtures[(name, where)] = max(_fixtures.get((name, where), 0.0), t)
    for name, t in getattr(node, "workeroutput", {}).get("waits", {}).items():
        _waits[name] += t


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _files[Path(report.nodeid.split("::", 1)[0]).name] += report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    tr = terminalreporter
    slow = sorted(((t, k) for k, t in _fixtures.items() if t >= 1.0), reverse=True)[:15]
    if slow:
        tr.write_sep("=", "slowest shared fixtures (setup, paid by their first user)")
        for t, (name, where) in slow:
            tr.write_line(f"{t:8.2f}s {name}" + (f" ({where})" if where else ""))
    if _waits:
        tr.write_sep("=", "waits for an artefact another worker was building (an idle core)")
        for name, t in sorted(_waits.items(), key=lambda kv: -kv[1]):
            tr.write_line(f"{t:8.2f}s {name}")
    over = sorted(((t, f) for f, t in _files.items()
                   if t > FILE_BUDGETS.get(f, DEFAULT_BUDGET)), reverse=True)
    if over:
        tr.write_sep("=", "test files over their budget (tests/README.md)")
        for t, f in over:
            tr.write_line(f"{t:8.2f}s {f} (budget {FILE_BUDGETS.get(f, DEFAULT_BUDGET):.0f}s)")
