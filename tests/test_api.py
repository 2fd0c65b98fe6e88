"""The Python API (issue 17): pipelines built from stage objects are the pipelines YAML gives
(same classes, same scorer versions, same manifests), and run, score and select return results
whose views are DuckDB relations and polars frames."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO

import curate
from curate.errors import ConfigError
from curate.score.plan import reader_fingerprint, scorer_versions
from curate.stages.base import Scorer, register
from curate.stages.image_info import ImageInfo

BASIC = REPO / "pipelines" / "basic.yaml"


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from curate.demo.generator import make_demo_pool

    out = tmp_path_factory.mktemp("api_pool") / "pool"
    make_demo_pool(out, shards=2, samples_per_shard=24)
    return out


def basic_in_python(pool: Path, **output: object) -> curate.Pipeline:
    """pipelines/basic.yaml, written with stage objects."""
    return curate.Pipeline(
        name="basic", description="DataComp basic filtering and exact dedup",
        input=str(pool / "*.tar"),
        score=[ImageInfo(), "caption_stats", curate.scorer("language"), {"exact_hash": {}}],
        select=[curate.preset("datacomp_basic"), curate.selector("exact_dedup")],
        output={"samples_per_shard": 100, "write_shards": True, **output})


def test_a_python_pipeline_is_the_yaml_pipeline(pool: Path, tmp_path: Path) -> None:
    py = basic_in_python(pool, write_shards=False)
    ym = curate.Pipeline.load(BASIC, input={"shards": str(pool / "*.tar")},
                              output={"write_shards": False})
    reader = reader_fingerprint()
    assert [(v.label, v.version) for v in scorer_versions(py.scorers, reader)] == [
        (v.label, v.version) for v in scorer_versions(ym.scorers, reader)]
    assert [(type(s), s.fingerprint(), s.label) for s in py.steps] == [
        (type(s), s.fingerprint(), s.label) for s in ym.steps]
    assert len(py.steps) == 6
    # the YAML it writes loads to the same pipeline
    again = curate.Pipeline.from_dict(yaml.safe_load(py.to_yaml()))
    assert [s.fingerprint() for s in again.scorers + again.steps] == [
        s.fingerprint() for s in py.scorers + py.steps]

    store = tmp_path / "store"
    ym.score(store, local=True)
    assert py.plan(store=store, out=tmp_path).todo == 0  # the YAML run scored all it needs
    scored = py.score(store, local=True)
    assert all(c.computed == 0 and c.reused == 2 for c in scored.scorers.values())
    a = ym.select(store, tmp_path / "yaml")
    b = py.select(store, tmp_path / "python")
    assert pq.read_table(a.dir / "manifest").equals(
        pq.read_table(b.dir / "manifest"))
    assert a.funnel == b.funnel and a.kept == b.kept


def test_run_returns_the_selection_as_relations(pool: Path, tmp_path: Path,
                                                ray_local: None) -> None:
    p = basic_in_python(pool)
    result = p.run(tmp_path / "out")
    assert result.dir == tmp_path / "out" / "selections" / "basic"
    assert result.scoring is not None and result.scoring.scorers["image_info"].computed == 2
    assert result.samples == 48
    manifest = result.manifest(["uid", "kept", "reason"])
    assert isinstance(manifest, pl.DataFrame) and manifest.height == 48
    assert manifest["kept"].sum() == result.kept
    counts = dict(result.sql("SELECT reason, count(*) FROM drops GROUP BY 1").fetchall())
    assert counts == {r: n for r, n in result.funnel if n}
    assert result.pl("funnel")["dropped"].to_list() == [n for _, n in result.funnel]
    assert sorted(p.name for p in (result.dir / "output").glob("*.tar"))  # shards written
    # select again with other steps: no scoring, its own directory
    median = result.sql("SELECT median(caption_words) FROM kept").fetchall()[0][0]
    strict = p.replace(name="strict", select=[
        curate.preset("datacomp_basic"),
        curate.rule("threshold", column="caption_words", gt=median,
                    reason="caption_short_for_this_pool"),
        curate.selector("exact_dedup")], output={"write_shards": False})
    again = strict.select(tmp_path / "out" / "store", tmp_path / "strict")
    assert again.scoring is None and again.kept < result.kept
    assert dict(again.funnel)["caption_short_for_this_pool"] > 0
    assert curate.open_run(again.dir).value("SELECT count(*) FROM kept") == again.kept
    result.close()


def test_stage_objects_are_checked_when_made() -> None:
    assert isinstance(curate.scorer("image_info", max_pixels=10), ImageInfo)
    with pytest.raises(ConfigError, match="max_pixelz: unknown key") as err:
        curate.scorer("image_info", max_pixelz=10)
    assert "did you mean 'max_pixels'" in (err.value.hint or "")
    with pytest.raises(ConfigError, match="unknown preset 'datacomp_basik'"):
        curate.preset("datacomp_basik")
    with pytest.raises(ConfigError, match="give at least one of min, max, gt, lt"):
        curate.rule("threshold", column="x")

    class Unregistered(Scorer):
        name = "image_info"

    with pytest.raises(ConfigError, match="is not the registered scorer 'image_info'"):
        curate.Pipeline(input="x.tar", score=[Unregistered()])
    with pytest.raises(ConfigError, match="is not a scorer"):
        curate.Pipeline(input="x.tar", score=[3])


def test_a_scorer_defined_in_a_script_is_a_pipeline_stage(pool: Path) -> None:
    import pyarrow as pa

    @register
    class Vowels(Scorer):
        name = "api_test_vowels"

        def inputs(self) -> tuple[str, ...]:
            return ("caption",)

        def outputs(self) -> dict[str, pa.DataType]:
            return {"vowels": pa.int32()}

    try:
        p = curate.Pipeline(input=str(pool / "*.tar"), score=[Vowels()],
                            select=[curate.rule("threshold", column="vowels", min=1,
                                                reason="no_vowels")])
        assert p.to_dict()["score"] == ["api_test_vowels"]
        assert type(p.scorers[0]) is Vowels
    finally:
        from curate.stages import base

        base._REGISTRY["scorer"].pop("api_test_vowels", None)
