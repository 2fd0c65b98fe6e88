"""Every command in the README's bash blocks is run by a test, as written, so an example cannot
rot: this file runs the "Using it" block and the text-spotting loop in a fresh directory (the
quick start block is test_quickstart's), and checks the figures the README prints for them.

Two substitutions, each checked rather than assumed: ``train-filter`` is the session's
``demo_filter`` fixture, trained with the same arguments as the README line (checked here);
``make demo`` and ``make test`` are not run (CI runs ``make test`` itself), but the commands of
``make demo``'s recipe that make the demo's data must be the README's.

Score once: the session has already scored the demo pool with the same pipelines (the
``demo_run``, ``demo_yaml_run`` and ``text_run`` fixtures, whose own tests check the scores), so
each run directory the README names starts with a copy of that store, as a user's would after an
earlier run. The commands run as written; ``demo-data`` writes the pool again, byte for byte the
same, and the runs reuse every score by its identity (content, parameters, versions): a store
that did not match would be scored again, and the figures checked here would still hold.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import REPO, curate_cli

README = (REPO / "README.md").read_text(encoding="utf-8")
LOOP = re.compile(r"^for (\w+) in ([^;]+); do (.+); done$")


def bash_blocks() -> list[list[str]]:
    return [[ln for ln in b.splitlines() if shlex.split(ln, comments=True)]
            for b in re.findall(r"```bash\n(.*?)```", README, re.S)]


def expand(line: str) -> list[list[str]]:
    """One README line → the argument lists it runs (a ``for`` loop gives one per value)."""
    m = LOOP.match(line.split("#", 1)[0].strip())
    if m is None:
        return [shlex.split(line, comments=True)]
    var, values, body = m.groups()
    return [shlex.split(body.replace(f"${var}", v), comments=True) for v in values.split()]


def test_every_block_is_known() -> None:
    """A new bash block must be added here (or to test_quickstart) so that it is run."""
    blocks = bash_blocks()
    firsts = [shlex.split(b[0], comments=True)[:2] for b in blocks]
    assert firsts[0] == ["make", "demo"]
    assert firsts[1] == [".venv/bin/curate", "demo-data"]  # the quick start: test_quickstart
    quick = README.index("## Quick start")
    assert quick < README.index(blocks[1][0]) < README.index("## Using it")
    assert len(blocks) == 4, "a new README bash block: run it in tests/test_readme_commands.py"


def test_make_demo_runs_the_readme_commands() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("\ndemo: ", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    using = [shlex.split(ln, comments=True) for ln in bash_blocks()[2]]
    made = 0
    for line in recipe:
        args = shlex.split(line.strip().lstrip("@").replace("$(BIN)", ".venv/bin")
                           .replace("$(DEMO_DIR)", "demo"))
        if args[:1] == [".venv/bin/curate"] and args[1] in ("demo-data", "train-filter", "run",
                                                           "write"):
            made += 1  # what makes the demo's data is what the README shows
            assert args in using, f"make demo runs {args}, which the README does not show"
    assert made == 5
    targets = re.findall(r"^([a-z-]+):", makefile, re.M)
    for line in bash_blocks()[0]:
        assert shlex.split(line, comments=True)[1] in targets


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_using_it_and_text_pipelines_run_as_written(tmp_path: Path, demo_filter: Path,
                                                    demo_run: Path, demo_yaml_run: Path,
                                                    text_run: Path) -> None:
    (tmp_path / "pipelines").symlink_to(REPO / "pipelines", target_is_directory=True)
    for store, out in ((demo_run.parent.parent / "store", "runs/basic"),
                       (demo_yaml_run.parent.parent / "store", "demo/run"),
                       (text_run / "store", "runs/text")):
        shutil.copytree(store, tmp_path / out / "store", symlinks=True)
    lines = bash_blocks()[2] + bash_blocks()[3]
    outputs: dict[str, str] = {}
    for line in lines:
        for args in expand(line):
            assert args[0] == ".venv/bin/curate", line
            if args[1] == "train-filter":
                # the fixture trains with exactly these arguments (tests/conftest.py)
                assert args[2:] == ["--data", "demo/trusted/*.tar", "--out", "demo/filter",
                                    "--epochs", "15"]
                (tmp_path / "demo" / "filter").symlink_to(demo_filter, target_is_directory=True)
                continue
            if args[1:3] == ["demo-data", "demo/trusted"]:
                assert args[3:] == ["--trusted", "--seed", "1", "--shards", "2", "--per-shard",
                                    "256"]
            res = curate_cli(*args[1:], cwd=tmp_path, timeout=1200)
            assert res.returncode == 0, (line, res.stderr[-3000:])
            outputs[" ".join(args[1:])] = res.stdout
    # Each run found its scores in the store it started with: reused by identity.
    for out in ("runs/basic", "demo/run", "runs/text"):
        ends = [e for e in map(json.loads, (tmp_path / out / "store" / "log.jsonl")
                               .read_text().splitlines()) if e["event"] == "scoring_end"]
        assert ends[-1]["computed"] == 0, (out, ends[-1])
    # The funnel `make demo` ends with is the one the README shows.
    shown = README.split("```\nsamples in", 1)[1].split("```", 1)[0]
    expected = [re.sub(r"\s+\(.*\)$", "", ln).split() for ln in ("samples in" + shown)
                .strip().splitlines()]
    run_demo = outputs["run pipelines/demo.yaml --out demo/run"]
    printed = [ln.split() for ln in run_demo.splitlines()
               if ln.startswith(("samples in", "  - ", "kept "))]
    assert printed == expected
    # The text-spotting pipelines keep what the README says they keep.
    kept = {name: int(re.search(r"\nkept +(\d+)", out).group(1))  # type: ignore[union-attr]
            for cmd, out in outputs.items()
            for name in re.findall(r"run pipelines/(\w+)\.yaml --out runs/text", cmd)}
    prose = README.split("On the demo\npool:", 1)[1] if "On the demo\npool:" in README else README
    assert f"it keeps {kept['parrot_free']}." in prose
    assert f"({kept['tmars']} kept after the basic rules)" in prose
    assert f"it keeps {kept['cat']}." in prose
