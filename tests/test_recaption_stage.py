"""The recaption stage end to end on local Ray with the transformers backend and the tiny BLIP
built in-process: garbage from a random captioner is rejected and recorded, every kept image
gets its captions with provenance, the cache prevents regeneration, results do not depend on
batching, ALIP's signals equal the cosines recomputed from the stored embeddings, and a
trained captioner's captions reach the output shards as txt_syn members that webdataset reads
the way open_clip's loader does."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
import yaml
from clipfixtures import random_clip_dir
from conftest import REPO, doc_query_examples

from curate.config import ConfigError, load_pipeline, pipeline_from_dict
from curate.rewrite.validate import caption_rejection
from curate.runner import run

REJECTIONS = {"empty", "too_short", "too_long", "repeated_tokens", "prompt_echo", "malformed",
              "not_words", "not_english", "unfinished"}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A curate-tiny CLIP with fixed random weights (a model directory): the signals need
    the clip scorer's own weights, and weights drawn at load time differ at every load."""
    return random_clip_dir(tmp_path_factory.mktemp("clip") / "tiny")


def _pipeline(pool: Path, model: Path, clip: Path, shards: int = 1, **recaption: Any) -> Any:
    """basic.yaml plus CLIP on the pool's first ``shards`` shards (one keeps 56 samples: enough
    for every check here) with a transformers recaption step."""
    data = yaml.safe_load((REPO / "pipelines" / "basic.yaml").read_text())
    data["input"]["shards"] = [str(pool / f"{i:05d}.tar") for i in range(shards)]
    data["score"] = [*data["score"], {"clip": {"model": str(clip), "pretrained": None,
                                               "cpus": 1}}]
    data["recaption"] = {"backend": "transformers", "model": str(model), "captions": 2,
                         "max_attempts": 2, "sampling": {"max_tokens": 24}, "batch_size": 16,
                         **recaption}
    data["output"] = {**(data.get("output") or {}), "write_shards": True}
    return pipeline_from_dict(data)


def _manifest(sel: Path) -> list[dict[str, Any]]:
    rel = duckdb.connect().execute(f"SELECT * FROM read_parquet('{sel / 'manifest'}/*.parquet')")
    names = [d[0] for d in rel.description]
    return [dict(zip(names, r, strict=True)) for r in rel.fetchall()]


def _tar_members(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            f = tar.extractfile(m)
            assert f is not None
            samples.setdefault(key, {})[ext] = f.read()
    return samples


@pytest.fixture(scope="module")
def random_run(demo_pool: Path, random_captioner: Path, clip_dir: Path, ray_local: None,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("rc") / "run"
    return out, run(_pipeline(demo_pool, random_captioner, clip_dir), out, progress=False)


@pytest.fixture(scope="module")
def trained_run(demo_pool: Path, trained_captioner: Path, clip_dir: Path, ray_local: None,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("rc") / "run"
    return out, run(_pipeline(demo_pool, trained_captioner, clip_dir, shards=1), out,
                    progress=False)


def test_garbage_is_rejected_and_recorded(random_run: tuple[Path, Any]) -> None:
    _, result = random_run
    rc = result.recaption
    assert rc["images"] == result.kept > 50
    assert rc["requested"] == 2 * result.kept
    assert rc["ok"] + rc["rejected"] + rc["errors"] + rc["skipped"] == rc["requested"]
    assert rc["errors"] == 0 and rc["generated"] > 0
    assert rc["rejected"] >= 0.8 * rc["requested"]  # a random model writes garbage
    rows = _manifest(result.dir)
    for r in rows:
        if not r["kept"]:
            assert r["recaptions"] is None and r["recaptions_ok"] is None
            continue
        assert [x["syn"] for x in r["recaptions"]] == [0, 1]
        assert r["recaptions_ok"] == sum(x["status"] == "ok" for x in r["recaptions"])
        for x in r["recaptions"]:
            assert x["backend"] == "transformers" and x["prompt_format"] == "auto"
            assert x["model"].startswith("random#")
            assert json.loads(x["sampling"])["max_tokens"] == 24
            if x["status"] == "rejected":
                assert x["reason"] in REJECTIONS and x["attempts"] == 2 and x["text"] is None
            else:
                assert x["status"] == "ok" and caption_rejection(x["text"]) is None
    written: dict[str, dict[str, bytes]] = {}
    for tar in sorted((result.dir / "output").glob("*.tar")):
        written.update(_tar_members(tar))
    by_uid = {r["uid"]: r for r in rows if r["kept"]}
    assert set(written) == set(by_uid)
    for uid, m in written.items():
        meta = json.loads(m["json"])
        assert [x["status"] for x in meta["recaptions"]] == [
            x["status"] for x in by_uid[uid]["recaptions"]]
        ok = {f"txt_syn{x['syn']}" for x in meta["recaptions"] if x["status"] == "ok"}
        assert {k for k in m if k.startswith("txt_syn")} == ok
        assert m["txt"].decode() == by_uid[uid]["caption"]  # the original is untouched


def test_rerun_generates_nothing(random_run: tuple[Path, Any], demo_pool: Path,
                                 random_captioner: Path, clip_dir: Path) -> None:
    out, first = random_run
    before = _manifest(first.dir)
    again = run(_pipeline(demo_pool, random_captioner, clip_dir), out, progress=False)
    assert again.recaption["generated"] == 0
    assert again.recaption["cache_hits"] == first.recaption["generated"]
    assert _manifest(again.dir) == before


def test_results_do_not_depend_on_batching(random_run: tuple[Path, Any], demo_pool: Path,
                                           random_captioner: Path, clip_dir: Path,
                                           tmp_path: Path) -> None:
    _, first = random_run
    other = run(_pipeline(demo_pool, random_captioner, clip_dir, batch_size=5), tmp_path / "b5",
                progress=False)
    assert other.recaption["generated"] == first.recaption["generated"]  # no cache shared
    strip = ("recaptions",)
    a = [{k: v for k, v in r.items() if k not in strip} | {"syn": [
        (x["status"], x["text"], x["seed"]) for x in r["recaptions"] or []]}
        for r in _manifest(first.dir)]
    b = [{k: v for k, v in r.items() if k not in strip} | {"syn": [
        (x["status"], x["text"], x["seed"]) for x in r["recaptions"] or []]}
        for r in _manifest(other.dir)]
    assert a == b


def test_trained_captions_and_alip_signals(trained_run: tuple[Path, Any],
                                           clip_dir: Path) -> None:
    from curate.lib.clip_model import load_clip
    from curate.recaption.signals import ClipTextEncoder
    from curate.store.embeddings import SidecarReader
    from curate.store.store import Store

    out, result = trained_run
    rc = result.recaption
    assert rc["errors"] == 0 and rc["ok"] > 0.5 * rc["requested"], rc
    assert rc["signals"] == "clip"
    rows = duckdb.connect().execute(
        f"SELECT shard, \"index\", text, image_sim, text_sim FROM read_parquet("
        f"'{result.dir / 'recaptions.parquet'}') WHERE status = 'ok' ORDER BY ALL").fetchall()
    assert rows and all(r[3] is not None and r[4] is not None for r in rows)
    # recompute both cosines independently: stored embeddings and a fresh text tower
    store = Store(out / "store")
    meta = store.meta()
    v = meta.version("clip")
    assert v is not None
    label, ver = v.label, v.version
    digests = {s.shard: s.digest for s in store.pool() if s.digest}
    reader = SidecarReader(store, {c: (label, ver) for c in v.sidecars}, digests)
    shards, idx = [r[0] for r in rows], [r[1] for r in rows]
    img = reader.read_rows("clip_image_emb", shards, idx)
    txt = reader.read_rows("clip_text_emb", shards, idx)
    net = load_clip(str(clip_dir), None)
    import torch

    with torch.inference_mode():
        syn = torch.nn.functional.normalize(
            net.model.encode_text(net.tokenizer([r[2] for r in rows])).float(), dim=-1).numpy()
    np.testing.assert_allclose([r[3] for r in rows], (img * syn).sum(1), atol=2e-3)
    np.testing.assert_allclose([r[4] for r in rows], (txt * syn).sum(1), atol=2e-3)
    # the encoder the stage uses gives the stored text embedding of the raw caption
    man = {(r["shard"], r["index"]): r for r in _manifest(result.dir) if r["kept"]}
    raw = [man[(s, i)]["caption"] for s, i in zip(shards, idx, strict=True)]
    enc = ClipTextEncoder(dict(v.params), "cpu").encode(raw)
    np.testing.assert_allclose(enc, txt, atol=5e-3)
    # the manifest's per-sample signals are the means over the accepted captions
    for r in man.values():
        sims = [x["image_sim"] for x in r["recaptions"] if x["status"] == "ok"]
        if sims:
            assert r["syn_image_sim"] == pytest.approx(np.mean(sims), abs=1e-5)
        else:
            assert r["syn_image_sim"] is None


def test_output_members_read_like_open_clip(trained_run: tuple[Path, Any]) -> None:
    """open_clip's webdataset loader takes the caption from one key (``rename(text="txt")``);
    pointing it at ``txt_syn0;txt`` reads the synthetic caption, or the original where no
    synthetic caption was accepted. webdataset's decoder makes text of ``txt`` members only
    (``txt_syn0`` stays bytes), so the loader also decodes it."""
    import webdataset as wds

    _, result = trained_run
    shards = sorted(str(x) for x in (result.dir / "output").glob("*.tar"))
    rows = {r["uid"]: r for r in _manifest(result.dir) if r["kept"]}
    ds = wds.DataPipeline(wds.SimpleShardList(shards), wds.tarfile_to_samples(),
                          wds.decode("pilrgb"),
                          wds.rename(image="jpg;png;jpeg;webp", text="txt_syn0;txt",
                                     key="__key__", meta="json"),
                          wds.map_dict(text=lambda t: t.decode("utf-8") if isinstance(
                              t, bytes) else t),
                          wds.to_tuple("key", "image", "text", "meta"))
    seen = syn = 0
    for key, image, text, meta in ds:
        assert isinstance(text, str)
        first = meta["recaptions"][0]
        assert image.size[0] > 0
        if first["status"] == "ok":
            assert text == first["text"]
            syn += 1
        else:
            assert text == rows[key]["caption"]
        seen += 1
    assert seen == result.kept and syn > 0.4 * seen


def test_signals_as_rules_in_a_second_selection(trained_run: tuple[Path, Any],
                                                tmp_path: Path) -> None:
    """The manifest's signal columns are metadata a later selection thresholds on."""
    from curate.config import selection_from_dict
    from curate.runner import select

    out, result = trained_run
    sel = selection_from_dict({
        "name": "alip", "metadata": {"parquet": str(result.dir / "manifest"),
                                     "columns": {"syn_text_sim": "float32"}},
        "select": [{"rule": "threshold", "column": "syn_text_sim", "min": 0.0,
                    "reason": "synthetic_caption_disagrees"}],
        "output": {"write_shards": False}})
    second = select(out / "store", sel, tmp_path / "alip", progress=False)
    sims = [r["syn_text_sim"] for r in _manifest(result.dir) if r["kept"]]
    assert second.kept == sum(s is not None and s >= 0.0 for s in sims)


def test_recaption_config_errors(demo_pool: Path, tmp_path: Path) -> None:
    base = yaml.safe_load((REPO / "pipelines" / "basic.yaml").read_text())
    with pytest.raises(ConfigError, match=r"recaption\.backend"):
        pipeline_from_dict({**base, "recaption": {"backend": "blip", "model": "x"}})
    with pytest.raises(ConfigError, match="unknown key"):
        pipeline_from_dict({**base, "recaption": {"backend": "openai", "model": "x",
                                                   "caption": 2}})
    with pytest.raises(ConfigError, match="no directory"):
        pipeline_from_dict({**base, "recaption": {"backend": "transformers",
                                                   "model": str(tmp_path / "missing")}})
    # the Python API takes the same section, and `replace` swaps it
    import curate

    api = curate.Pipeline(input=str(demo_pool / "*.tar"), score=base["score"],
                          select=base["select"],
                          recaption={"backend": "openai", "model": "served", "captions": 3})
    assert api.config.recaption is not None and api.config.recaption.captions == 3
    assert api.to_dict()["recaption"] == {"backend": "openai", "model": "served", "captions": 3}
    other = api.replace(recaption={"backend": "openai", "model": "other"})
    assert other.config.recaption is not None and other.config.recaption.model == "other"
    assert "recaption: 3 synthetic captions per kept image by openai served, ALIP signals " \
        "from the stored embeddings of the clip scorer" in api.plan(out=tmp_path / "r").format()


def test_recaption_yaml_as_make_demo_recaption_runs_it(demo_pool: Path, demo_filter: Path,
                                                      trained_captioner: Path, ray_local: None,
                                                      tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """pipelines/recaption.yaml itself, with its relative paths, from a directory holding
    demo/pool, demo/filter and demo/captioner (links to the session's), by `curate validate`
    and `curate run` as `make demo-recaption` runs it: the trained captioner and the trained
    filter network's embeddings give matched captions a higher image similarity than the same
    captions paired with other images; the run's summary, `curate stats`, the catalogue's
    `recaptions` view and the report all show the synthetic captions."""
    import html as html_mod
    import os

    from curate.audit.catalog import open_run
    from curate.audit.report import write_report
    from curate.cli import main

    (tmp_path / "demo").mkdir()
    for name, target in (("pool", demo_pool), ("filter", demo_filter),
                         ("captioner", trained_captioner)):
        (tmp_path / "demo" / name).symlink_to(target, target_is_directory=True)
    yaml_path = str(REPO / "pipelines" / "recaption.yaml")
    sel = tmp_path / "demo" / "recaption" / "selections" / "recaption"
    before = os.getcwd()
    os.chdir(tmp_path)
    try:
        p = load_pipeline(yaml_path)
        assert p.recaption is not None and p.recaption.captions == 2
        assert main(["validate", yaml_path]) == 0
        plan = capsys.readouterr().out
        assert main(["run", yaml_path, "--input", "demo/pool/0000[01].tar", "--out",
                     "demo/recaption", "--no-progress"]) == 0
        printed = capsys.readouterr().out
        assert main(["stats", str(sel)]) == 0
        stats_out = capsys.readouterr().out
        examples = [sql for _, sql in doc_query_examples() if "recaptions" in sql]
        assert examples  # docs/recaption.md's, which tests/test_cli.py leaves to this test
        for sql in examples:
            assert main(["query", str(sel), sql, "--format", "csv"]) == 0, sql
            assert len(capsys.readouterr().out.splitlines()) >= 2, sql  # header + a row
    finally:
        os.chdir(before)
    assert ("recaption: 2 synthetic captions per kept image by transformers demo/captioner, "
            "ALIP signals from the stored embeddings of clip") in plan
    rc = json.loads((sel / "stats.json").read_text())["recaption"]
    line = (f"synthetic captions: {rc['requested']} asked for {rc['images']} kept images: "
            f"{rc['ok']} ok, {rc['rejected']} rejected, {rc['errors']} backend errors, "
            f"{rc['skipped']} skipped")
    assert line in printed and line in stats_out
    assert "syn_image_sim, syn_text_sim: from the stored embeddings of clip" in printed
    cat = open_run(sel)
    try:
        assert cat.sql("SELECT count(*) FILTER (WHERE status = 'ok'), count(*) "
                       "FROM recaptions").fetchall() == [(rc["ok"], rc["requested"])]
    finally:
        cat.close()
    page = write_report(sel).read_text()
    assert "<h2>Synthetic captions</h2>" in page and "syn_image_sim" in page
    first = duckdb.sql(f"""SELECT text FROM read_parquet('{sel / 'recaptions.parquet'}')
                           WHERE status = 'ok' ORDER BY uid, syn LIMIT 1""").fetchall()[0][0]
    assert html_mod.escape(first) in page  # the first example, beside its image
    assert rc["errors"] == 0 and rc["signals"] == "clip" and rc["ok"] > 0.5 * rc["requested"]
    con = duckdb.connect()
    d = sel
    # pair each caption with the next sample's image embedding: a wrong image scores lower
    from curate.recaption.signals import ClipTextEncoder
    from curate.store.store import Store

    rows = con.execute(f"""SELECT shard, "index", text, image_sim FROM read_parquet(
        '{d / 'recaptions.parquet'}') WHERE status = 'ok' AND syn = 0 ORDER BY shard, "index"
        """).fetchall()
    from curate.store.embeddings import SidecarReader

    store = Store(tmp_path / "demo" / "recaption" / "store")
    v = store.meta().version("clip")
    assert v is not None
    reader = SidecarReader(store, {c: (v.label, v.version) for c in v.sidecars},
                           {s.shard: s.digest for s in store.pool() if s.digest})
    img = reader.read_rows("clip_image_emb", [r[0] for r in rows], [r[1] for r in rows])
    syn = ClipTextEncoder(dict(v.params), "cpu").encode([r[2] for r in rows])
    right = float(np.mean((img * syn).sum(1)))
    wrong = float(np.mean((np.roll(img, 1, axis=0) * syn).sum(1)))
    assert right == pytest.approx(np.mean([r[3] for r in rows]), abs=2e-3)
    assert right > wrong + 0.05, (right, wrong)
