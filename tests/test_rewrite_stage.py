"""The rewrite stage end to end on local Ray with the transformers backend: garbage from a random
model is rejected and recorded, originals survive, the cache prevents regeneration, results do
not depend on batching, and a trained tiny model's rewrites reach the output shards with their
provenance (pipelines/laclip.yaml)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from conftest import REPO, curate_cli

from curate.config import ConfigError, load_pipeline, pipeline_from_dict
from curate.rewrite.validate import rejection
from curate.runner import run

REJECTIONS = {"empty", "too_short", "too_long", "identical", "repeated_tokens", "prompt_echo",
              "malformed", "not_words",
              "not_english"}


def _pipeline(pool: Path, model: Path, shards: int = 1, **rewrite: Any) -> Any:
    """basic.yaml on the pool's first ``shards`` shards (one keeps 56 samples: enough for
    every check here) with a transformers rewrite step."""
    data = yaml.safe_load((REPO / "pipelines" / "basic.yaml").read_text())
    data["input"]["shards"] = [str(pool / f"{i:05d}.tar") for i in range(shards)]
    data["rewrite"] = {"backend": "transformers", "model": str(model), "rewrites": 2,
                       "max_attempts": 2, "sampling": {"max_tokens": 16}, "batch_size": 16,
                       **rewrite}
    data["output"] = {**(data.get("output") or {}), "write_shards": True}
    return pipeline_from_dict(data)


def _tar_members(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            f = tar.extractfile(m)
            assert f is not None
            samples.setdefault(key, {})[ext] = f.read()
    return samples


def _input_captions(pool: Path) -> dict[str, bytes]:
    """key → caption bytes of the input shards."""
    out: dict[str, bytes] = {}
    for tar in sorted(pool.glob("*.tar")):
        for key, m in _tar_members(tar).items():
            if "txt" in m:
                out[key] = m["txt"]
    return out


def _manifest(run_dir: Path) -> list[dict[str, Any]]:
    from curate.audit.catalog import resolve_selection
    from curate.io.dataset import MANIFEST

    sel = resolve_selection(run_dir, MANIFEST)
    con = duckdb.connect()
    rel = con.execute(f"SELECT * FROM read_parquet('{sel / 'manifest'}/*.parquet')")
    names = [d[0] for d in rel.description]
    return [dict(zip(names, r, strict=True)) for r in rel.fetchall()]


@pytest.fixture(scope="module")
def random_run(demo_pool: Path, random_rewriter: Path, ray_local: None,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("rw") / "run"
    return out, run(_pipeline(demo_pool, random_rewriter), out, progress=False)


def test_garbage_is_rejected_and_recorded_originals_survive(random_run: tuple[Path, Any],
                                                          demo_pool: Path) -> None:
    _, result = random_run
    out = result.dir
    rw = result.rewrite
    assert rw["captions"] == result.kept > 50
    assert rw["requested"] == 2 * result.kept
    assert rw["ok"] + rw["rejected"] + rw["errors"] + rw["skipped"] == rw["requested"]
    assert rw["errors"] == 0 and rw["generated"] > 0
    assert rw["rejected"] >= 0.8 * rw["requested"]  # a random model writes garbage
    rows = _manifest(out)
    kept = [r for r in rows if r["kept"]]
    assert all(r["rewrites"] is None and r["rewrites_ok"] is None for r in rows if not r["kept"])
    for r in kept:
        assert [x["rewrite"] for x in r["rewrites"]] == [0, 1]
        assert r["rewrites_ok"] == sum(x["status"] == "ok" for x in r["rewrites"])
        for x in r["rewrites"]:
            assert x["backend"] == "transformers" and x["prompt_format"] == "completion"
            assert x["model"].startswith("random#") and len(x["example_ids"]) == 3
            assert json.loads(x["sampling"])["max_tokens"] == 16
            if x["status"] == "rejected":
                assert x["reason"] in REJECTIONS and x["attempts"] == 2 and x["text"] is None
            elif x["status"] == "ok":
                assert rejection(r["caption"], x["text"]) is None
            else:
                assert x["status"] == "skipped" and not (r["caption"] or "").strip()
    # the original captions are untouched, in the manifest and in the output shards
    originals = _input_captions(demo_pool)
    assert all(r["caption"].encode() == originals[r["key"]] for r in kept if r["caption"])
    written = {}
    for tar in sorted((out / "output").glob("*.tar")):
        written.update(_tar_members(tar))
    assert len(written) == len(kept)
    by_uid = {r["uid"]: r for r in kept}
    for uid, m in written.items():
        assert m["txt"] == originals[by_uid[uid]["key"]]
        meta = json.loads(m["json"])
        assert [x["status"] for x in meta["rewrites"]] == [
            x["status"] for x in by_uid[uid]["rewrites"]]
        assert isinstance(meta["rewrites"][0]["sampling"], dict)
        ok = {f"txt_rw{x['rewrite']}" for x in meta["rewrites"] if x["status"] == "ok"}
        assert {k for k in m if k.startswith("txt_rw")} == ok
    # the catalogue has a rewrites view
    reasons = dict(duckdb.connect(str(out / "catalog.duckdb"), read_only=True).execute(
        f"SET file_search_path = '{out}'; SELECT status, count(*) FROM rewrites GROUP BY 1"
    ).fetchall())
    assert sum(reasons.values()) == rw["requested"]


def test_rerun_generates_nothing(random_run: tuple[Path, Any], demo_pool: Path,
                                 random_rewriter: Path) -> None:
    out, first = random_run
    before = _manifest(out)
    again = run(_pipeline(demo_pool, random_rewriter), out, progress=False)
    assert again.rewrite["generated"] == 0
    assert again.rewrite["cache_hits"] == first.rewrite["generated"]
    assert _manifest(out) == before


def test_results_do_not_depend_on_batching(random_run: tuple[Path, Any], demo_pool: Path,
                                           random_rewriter: Path, tmp_path: Path) -> None:
    out, first = random_run
    other = run(_pipeline(demo_pool, random_rewriter, batch_size=5), tmp_path / "b5",
                progress=False)
    assert other.rewrite["generated"] == first.rewrite["generated"]  # no cache shared
    assert _manifest(tmp_path / "b5") == _manifest(out)


def test_shared_cache_across_runs(demo_pool: Path, random_rewriter: Path, ray_local: None,
                                  tmp_path: Path) -> None:
    cache = tmp_path / "shared.sqlite"
    p = _pipeline(demo_pool, random_rewriter, rewrites=1, max_attempts=1,
                  cache=str(cache))
    a = run(p, tmp_path / "a", progress=False)
    b = run(p, tmp_path / "b", progress=False)
    assert a.rewrite["generated"] == a.rewrite["requested"] > 0
    assert b.rewrite["generated"] == 0 and b.rewrite["cache_hits"] == a.rewrite["requested"]
    # different sampling parameters are different requests
    p2 = _pipeline(demo_pool, random_rewriter, rewrites=1, max_attempts=1,
                   cache=str(cache), sampling={"max_tokens": 16, "temperature": 0.5})
    c = run(p2, tmp_path / "c", progress=False)
    assert c.rewrite["generated"] == c.rewrite["requested"]


def test_laclip_pipeline_writes_rewrite_members(demo_pool: Path, trained_rewriter: Path,
                                                ray_local: None, tmp_path: Path) -> None:
    import webdataset as wds

    # two of the pool's eight shards: what is checked is per sample
    p = load_pipeline(REPO / "pipelines" / "laclip.yaml",
                      {"input": {"shards": [str(demo_pool / f"{i:05d}.tar") for i in (0, 1)]},
                       "rewrite": {"model": str(trained_rewriter)},
                       "output": {"write_shards": True}})
    result = run(p, tmp_path / "run", progress=False)
    rw = result.rewrite
    assert rw["requested"] == 2 * result.kept and rw["errors"] == 0
    assert rw["ok"] > 0.5 * rw["requested"]  # the trained model writes well-formed captions
    rows = {r["uid"]: r for r in _manifest(tmp_path / "run") if r["kept"]}
    shards = sorted(str(x) for x in (result.dir / "output").glob("*.tar"))
    ds = wds.WebDataset(shards, shardshuffle=False)
    seen = 0
    for sample in ds:
        row = rows[sample["__key__"]]
        meta = json.loads(sample["json"])
        for x in meta["rewrites"]:
            member = sample.get(f"txt_rw{x['rewrite']}")
            if x["status"] == "ok":
                assert member is not None and member.decode() == x["text"]
                assert x["text"] != row["caption"]
            else:
                assert member is None
        seen += 1
    assert seen == result.kept
    # the CLI summary reads the run's stats
    cli = curate_cli("stats", str(tmp_path / "run"))
    assert cli.returncode == 0 and "rewrites:" in cli.stdout and "ok" in cli.stdout


def test_rewrite_config_errors(tmp_path: Path, random_rewriter: Path) -> None:
    base = yaml.safe_load((REPO / "pipelines" / "basic.yaml").read_text())
    with pytest.raises(ConfigError, match=r"rewrite\.backend"):
        pipeline_from_dict({**base, "rewrite": {"backend": "gpt", "model": "x"}})
    with pytest.raises(ConfigError, match="unknown key") as e:
        pipeline_from_dict({**base, "rewrite": {"backend": "openai", "model": "x",
                                                 "temprature": 1}})
    assert "allowed keys" in (e.value.hint or "")
    with pytest.raises(ConfigError, match="examples per prompt"):
        pipeline_from_dict({**base, "rewrite": {"backend": "openai", "model": "x",
                                                 "examples": 99}})
    bad = tmp_path / "ex.yaml"
    bad.write_text("- {id: a, style: s, source: 'x => y', target: z}\n")
    with pytest.raises(ConfigError, match="examples_file"):
        pipeline_from_dict({**base, "rewrite": {"backend": "openai", "model": "x",
                                                 "examples_file": str(bad)}})
    with pytest.raises(ConfigError, match="no directory"):
        pipeline_from_dict({**base, "rewrite": {"backend": "transformers",
                                                 "model": str(tmp_path / "missing")}})

