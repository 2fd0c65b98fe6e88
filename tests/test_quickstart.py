"""The README's quick start, run as written (its code block, line by line), in a fresh
directory: one scoring pass, two selections over it (queries: no shards, no Ray), a diff, the
curated shards of one selection written as an explicit step, and the store listing."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, curate_cli


def quickstart_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        args = shlex.split(line, comments=True)
        if not args:
            continue
        assert args[0] == ".venv/bin/curate", line
        commands.append([str(REPO / a) if a.startswith("pipelines/") else a for a in args[1:]])
    return commands


@pytest.mark.slow
def test_readme_quickstart(tmp_path: Path) -> None:
    commands = quickstart_commands()
    assert [c[0] for c in commands] == ["demo-data", "score", "select", "select", "diff",
                                        "write", "store", "store"]
    out = {}
    for args in commands:
        res = curate_cli(*args, cwd=tmp_path, timeout=600)
        assert res.returncode == 0, (args, res.stderr[-2000:])
        out[" ".join(args[:2]) if args[0] == "store" else
            args[0] if args[0] != "select" else args[-1]] = res.stdout
        if args[0] == "diff":  # before `curate write`: the selections are queries, no copies
            for d in (tmp_path / "runs" / "basic", tmp_path / "runs" / "strict"):
                assert not (d / "output").exists()
                events = [json.loads(e) for e in (d / "log.jsonl").read_text().splitlines()]
                assert not [e for e in events if e["event"] in ("ray", "writing_start")]
                assert json.loads((d / "stats.json").read_text())["output_shards"] == 0
    # The scoring pass computed every scorer on every shard ...
    assert re.search(r"\n  image_info +8 +0\n", out["score"]), out["score"]
    # ... the selections computed nothing and each has its own directory.
    basic, strict = tmp_path / "runs" / "basic", tmp_path / "runs" / "strict"
    for d in (basic, strict):
        assert "(no scoring)" in out[str(d.relative_to(tmp_path))]
        record = json.loads((d / "selection.json").read_text())
        assert record["store"] == str(tmp_path / "runs" / "pool")
    kept_basic = sum(pq.read_table(basic / "manifest").column("kept").to_pylist())
    kept_strict = sum(pq.read_table(strict / "manifest").column("kept").to_pylist())
    assert kept_basic == 414 and 0 < kept_strict < kept_basic
    sel_out = out["runs/strict"]
    assert f"none written (a selection is a query); write them with: curate write " \
        f"{strict}" in sel_out, sel_out
    # `curate write` copied exactly the kept samples, in pool order, and says so.
    sizes = json.loads((strict / "output" / "sizes.json").read_text())
    assert sum(sizes.values()) == kept_strict and len(sizes) == -(-kept_strict // 100)
    assert f"wrote the {kept_strict} kept samples of {strict} into {len(sizes)} shards" \
        in out["write"], out["write"]
    assert json.loads((strict / "stats.json").read_text())["output_shards"] == len(sizes)
    written = {p.name: p.read_bytes() for p in (strict / "output").glob("*.tar")}
    from curate.runner import write

    again = write(strict, progress=False)  # the same step again, in this process
    assert (again.shards, again.samples) == (len(sizes), kept_strict)
    starts = [e for e in map(json.loads, (strict / "log.jsonl").read_text().splitlines())
              if e["event"] == "writing_start"]
    assert [e["todo"] for e in starts] == [len(sizes), 0]  # the second wrote nothing again
    assert {p.name: p.read_bytes() for p in (strict / "output").glob("*.tar")} == written
    assert not (basic / "output").exists()
    assert "dropped in B by caption_under_10_words: " in out["diff"]
    assert "select caption_under_10_words: only in B" in out["diff"]
    assert "image_info" in out["store runs/pool"] and "8/8 shards" in out["store runs/pool"]
    assert "checked; 0 damaged" in out["store verify"], out["store verify"]
    # Scoring the same pipeline again computes nothing.
    res = curate_cli("score", str(REPO / "pipelines" / "basic.yaml"), "--store", "runs/pool",
                     cwd=tmp_path)
    assert res.returncode == 0 and re.search(r"\n  image_info +0 +8\n", res.stdout)
