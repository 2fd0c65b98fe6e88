"""The command line: help, the embedded Ray default of `curate run`, demo-data, what moves on
screen, `stats` after a rerun, `query` output formats and errors, the docs' query examples, and
a closed stdout."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import OPTIONAL_VIEW_EXAMPLES, REPO, curate_cli, doc_query_examples


def test_help_lists_commands() -> None:
    res = curate_cli("--help")
    assert res.returncode == 0
    for cmd in ("demo-data", "run", "score", "select", "store", "query", "stats", "stages"):
        assert cmd in res.stdout
    res = curate_cli("stages")
    assert "image_info" in res.stdout and "datacomp_basic" in res.stdout


def test_run_starts_its_own_ray_and_resumes(tmp_path: Path) -> None:
    res = curate_cli("demo-data", str(tmp_path / "pool"), "--shards", "2", "--per-shard", "24")
    assert res.returncode == 0 and "48 samples" in res.stdout
    args = ("run", str(REPO / "pipelines" / "basic.yaml"), "--out", str(tmp_path / "run"),
            "--input", str(tmp_path / "pool" / "*.tar"))
    res = curate_cli(*args)
    assert res.returncode == 0, res.stderr
    assert "samples in" in res.stdout and "kept" in res.stdout
    assert re.search(r"\n  image_info +2 +0\n", res.stdout), res.stdout  # computed, reused
    assert (tmp_path / "run" / "selections" / "basic" / "catalog.duckdb").is_file()
    # what moves on screen while Ray starts and while selecting (progress is on by default)
    assert "starting Ray: a private local cluster on this machine ..." in res.stderr
    assert re.search(r"\nRay ready in [0-9.]+s: 1 node\(s\), [0-9]+ CPUs\n", res.stderr), \
        res.stderr
    assert re.search(r"\nselecting: 48 samples loaded in [0-9.]+s; 6 steps\n", res.stderr)
    steps = re.findall(r"\nselecting: step (\d)/6 (\w+) \((rule|selector) \w+\): dropped (\d+), "
                       r"(\d+) left", res.stderr)
    assert [s[1] for s in steps] == ["caption_too_short", "caption_too_few_words",
                                     "not_english", "image_too_small",
                                     "aspect_ratio_too_extreme", "exact_dedup"], res.stderr
    kept = int(re.search(r"\nkept +(\d+)", res.stdout).group(1))  # type: ignore[union-attr]
    assert int(steps[-1][4]) == kept
    res = curate_cli(*args, "--no-progress")
    assert res.returncode == 0 and re.search(r"\n  image_info +0 +2\n", res.stdout)
    assert re.search(r"\n  \(read\) +0 +2\n", res.stdout)
    assert "starting Ray" not in res.stderr and "selecting:" not in res.stderr
    # stats after the rerun: which invocation its seconds are of, and the stored work in all
    res = curate_cli("stats", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    stats = json.loads((tmp_path / "run" / "selections" / "basic" / "stats.json").read_text())
    assert "  the last invocation (of 2 in its log.jsonl): selection " in res.stdout
    assert "shards computed: none)" in res.stdout
    work = sum(c["seconds"] for c in stats["stages"].values())
    assert f"  stored scores: {work:.1f}s of scorer compute for these shards (without " \
        "start-up), summed over every invocation that computed them" in res.stdout, res.stdout



def test_query_machine_formats_give_every_row(demo_run: Path) -> None:
    """csv and json print every row unless --max-rows says otherwise, and then say on stderr
    what was cut; the table stops at 100 rows and says so."""
    kept = int(curate_cli("query", str(demo_run), "select count(*) from kept", "--format",
                          "csv").stdout.splitlines()[1])
    assert kept > 100  # more than the table shows
    res = curate_cli("query", str(demo_run), "select uid, caption from kept", "--format", "csv")
    assert res.returncode == 0 and res.stderr == ""
    assert len(list(csv.reader(io.StringIO(res.stdout)))) == kept + 1  # header + every row
    res = curate_cli("query", str(demo_run), "select uid from kept", "--format", "json")
    assert res.returncode == 0 and len(res.stdout.splitlines()) == kept
    res = curate_cli("query", str(demo_run), "select uid from kept", "--format", "csv",
                     "--max-rows", "10")
    assert len(res.stdout.splitlines()) == 11
    assert "printed the first 10 rows" in res.stderr and "--max-rows 0" in res.stderr
    res = curate_cli("query", str(demo_run), "select uid from kept")
    assert "(first 100 rows; --max-rows 0 for all)" in res.stdout


def test_every_query_example_of_the_docs_runs(demo_run: Path) -> None:
    """Each `curate query DIR "SQL"` of README.md and docs/*.md, run on a real selection (the
    basic pipeline on the demo pool), except those over a view the basic pipeline has not
    (OPTIONAL_VIEW_EXAMPLES: the test that makes such a selection runs them)."""
    examples = [(doc, sql) for doc, sql in doc_query_examples()
                if not any(re.search(rf"\b{v}\b", sql) for v in OPTIONAL_VIEW_EXAMPLES)]
    assert len(examples) >= 3, examples
    assert any("from drops" in sql and "caption" in sql for _, sql in examples)
    for doc, sql in examples:
        res = curate_cli("query", str(demo_run), sql, "--format", "csv")
        assert res.returncode == 0, (doc, sql, res.stderr)
        assert len(res.stdout.splitlines()) >= 2, (doc, sql, res.stdout)  # header + a row


def _closed_stdout(*args: str) -> subprocess.CompletedProcess[str]:
    """``curate ARGS`` with stdout a pipe whose reader is gone, as in ``curate ... | head``
    once head has exited."""
    exe = shutil.which("curate", path=str(Path(sys.executable).parent)) or "curate"
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([exe, *args], stdout=write, stderr=subprocess.PIPE, text=True,
                              timeout=120)
    finally:
        os.close(write)


def test_a_closed_stdout_ends_commands_quietly(demo_run: Path) -> None:
    """`curate stats --json | head` ended in BrokenPipeError and exit 3: every command that
    prints now stops quietly, as a command ended by SIGPIPE does (exit 141)."""
    for args in (("stats", str(demo_run), "--json"), ("stats", str(demo_run)),
                 ("query", str(demo_run), "select * from manifest", "--format", "csv"),
                 ("query", str(demo_run), "select * from manifest", "--format", "json"),
                 ("query", str(demo_run), "select uid, reason from manifest"),
                 ("store", str(demo_run.parent.parent / "store")), ("stages",), ("--help",)):
        res = _closed_stdout(*args)
        # argparse's --help swallows the write error itself and exits 0
        assert res.returncode == (0 if args == ("--help",) else 141), (args, res.returncode,
                                                                       res.stderr)
        assert res.stderr == "", (args, res.stderr)


def test_query_errors_keep_duckdbs_candidates(demo_run: Path) -> None:
    res = curate_cli("query", str(demo_run), "select caption_word from manifest")
    assert res.returncode == 2
    first = res.stderr.splitlines()[0]
    assert first.startswith("error: query failed: Binder Error: Referenced column")
    assert 'Candidate bindings: ' in first and '"caption_words"' in first, first


def test_query_on_a_store_says_it_is_a_store(demo_run: Path, tmp_path: Path) -> None:
    store = demo_run.parent.parent / "store"
    res = curate_cli("query", str(store), "select 1")
    assert res.returncode == 2 and "resume" not in res.stderr
    assert f"error: {store} is a scored store (it holds store.json), not a selection" in \
        res.stderr and "curate select" in res.stderr
    (tmp_path / "log.jsonl").write_text('{"event": "something else"}\n')
    res = curate_cli("query", str(tmp_path), "select 1")
    assert "is not a curate run or selection directory" in res.stderr
    assert "resume" not in res.stderr
