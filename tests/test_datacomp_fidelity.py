"""DataComp's baselines, uid for uid, on a pool laid out as DataComp ships it (tests/datacompmaker):
the basic filter (original sizes from the json member), the CLIP-score top fraction over the
released metadata's scores (joined as declared metadata columns), and the subset file in
DataComp's exact dtype. The expected sets are computed here from DataComp's rules
(``baselines/apply_filter.py``) written in pandas/numpy on the metadata Parquet."""

from __future__ import annotations

from pathlib import Path

import fasttext
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from datacompmaker import DataCompPool, make_datacomp_pool

from curate.config import pipeline_from_dict, selection_from_dict
from curate.errors import ConfigError, CurateError
from curate.runner import run, select
from curate.stages.language import bundled_model_path
from curate.write.export import export_datacomp

META = {"columns": {"clip_l14_similarity_score": "float32",
                    "clip_b32_similarity_score": "float32",
                    "face_bboxes": "list<list<float64>>"}}


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> DataCompPool:
    return make_datacomp_pool(tmp_path_factory.mktemp("datacomp"), shards=2, per_shard=48)


@pytest.fixture(scope="module")
def scored(pool: DataCompPool, ray_local: None) -> Path:
    """The basic baseline run on the pool; returns the run directory (store in RUN/store)."""
    p = pipeline_from_dict({
        "name": "basic", "input": {"shards": str(pool.shards)},
        "score": ["image_info", "caption_stats", "language", "gcld3_language"],
        "metadata": {"parquet": str(pool.metadata), **META},
        "select": [{"preset": "datacomp_basic"}], "output": {"write_shards": False}})
    out = pool.root / "run"
    run(p, out, progress=False)
    return out


def released(pool: DataCompPool) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(f) for f in sorted(pool.metadata.glob("*.parquet"))])


def kept_uids(selection_dir: Path) -> set[str]:
    m = pq.read_table(selection_dir / "manifest").to_pandas()
    return set(m[m.kept].uid)


def datacomp_basic(df: pd.DataFrame) -> set[str]:
    model = fasttext.load_model(str(bundled_model_path()))
    lang = df.text.apply(lambda t: model.predict(t.replace("\n", " "))[0][0]
                         .split("__label__")[1])
    words = df.text.apply(lambda t: len(t.split()))
    chars = df.text.apply(len)
    lo = np.minimum(df.original_width, df.original_height)
    hi = np.maximum(df.original_width, df.original_height)
    mask = (lang == "en") & (words > 2) & (chars > 5) & (lo >= 200) & (hi / lo <= 3.0)
    return set(df.uid[mask])


def datacomp_top_fraction(df: pd.DataFrame, key: str, fraction: float) -> set[str]:
    n = int(len(df) * fraction)
    threshold = -np.sort(-df[key].values)[n]
    return set(df.uid[df[key] >= threshold])


def test_basic_filter_equals_datacomps(pool: DataCompPool, scored: Path) -> None:
    df = released(pool)
    expected = datacomp_basic(df)
    got = kept_uids(scored / "selections" / "basic")
    assert got == expected
    # The pool holds images that only the original sizes keep (1500x500 stored as 512x171)
    m = pq.read_table(scored / "selections" / "basic" / "manifest").to_pandas()
    rescued = m[(m.height < 200) & (m.original_height >= 200) & m.kept]
    assert len(rescued) > 0
    assert set(m.uid) == set(pool.uids)


def test_l14_top_fraction_over_released_scores(pool: DataCompPool, scored: Path,
                                               tmp_path: Path) -> None:
    """DataComp's CLIP-score baseline over the release's own scores, as metadata columns:
    no CLIP is computed, and the set equals DataComp's get_threshold rule."""
    df = released(pool)
    for fraction in (0.3, 0.25, 0.5):
        sel = selection_from_dict({
            "name": "l14", "metadata": {"parquet": str(pool.metadata), **META},
            "select": [{"preset": "datacomp_clip_l14_30pct",
                        "column": "clip_l14_similarity_score", "fraction": fraction}],
            "output": {"write_shards": False}})
        out = tmp_path / f"l14_{fraction}"
        select(scored / "store", sel, out, progress=False)
        assert kept_uids(out) == datacomp_top_fraction(df, "clip_l14_similarity_score",
                                                       fraction), fraction
    # the selection records the metadata files it read
    import json
    record = json.loads((out / "selection.json").read_text())
    assert [Path(f["file"]).name for f in record["metadata_files"]] == [
        "part-0.parquet", "part-1.parquet", "part-2.parquet"]
    m = pq.read_table(out / "manifest")
    assert str(m.schema.field("face_bboxes").type) == "list<element: list<element: double>>"
    faces = dict(zip(df.uid, df.face_bboxes.apply(lambda b: [list(x) for x in b]),
                     strict=True))
    for row in m.select(["uid", "face_bboxes"]).to_pylist():
        assert row["face_bboxes"] == faces[row["uid"]]


def test_export_is_datacomps_subset_file(pool: DataCompPool, scored: Path,
                                         tmp_path: Path) -> None:
    n = export_datacomp(scored / "selections" / "basic", tmp_path / "subset.npy")
    pairs = np.load(tmp_path / "subset.npy")
    assert pairs.dtype == np.dtype("u8,u8")  # DataComp's resharder asserts exactly this
    expected = np.array([(int(u[:16], 16), int(u[16:32], 16))
                         for u in datacomp_basic(released(pool))], np.dtype("u8,u8"))
    expected.sort()
    assert n == len(expected)
    assert (pairs == expected).all()


def test_metadata_mistakes_fail_before_writing(pool: DataCompPool, scored: Path,
                                               tmp_path: Path) -> None:
    def attempt(meta: dict[str, object], steps: list[dict[str, object]] | None = None) -> None:
        sel = selection_from_dict({"name": "x", "metadata": meta,
                                   "select": steps or [], "output": {"write_shards": False}})
        select(scored / "store", sel, tmp_path / "sel", progress=False)

    with pytest.raises(ConfigError, match="has no column 'clip_h14'"):
        attempt({"parquet": str(pool.metadata), "columns": {"clip_h14": "float32"}})
    with pytest.raises(ConfigError, match="also a column of the store"):
        attempt({"parquet": str(pool.metadata), "columns": {"caption_chars": "int64"}})
    with pytest.raises(CurateError, match="is not int32"):
        attempt({"parquet": str(pool.metadata), "columns": {"text": "int32"}})
    with pytest.raises(ConfigError, match="does not exist"):
        attempt({"parquet": str(pool.root / "nope"), "columns": {"text": "string"}})
    with pytest.raises(ConfigError, match="unknown type"):
        attempt({"parquet": str(pool.metadata), "columns": {"text": "str"}})
    with pytest.raises(ConfigError, match="no_such_col"):  # a rule on an undeclared column
        attempt({"parquet": str(pool.metadata), "columns": {"text": "string"}},
                [{"rule": "sql", "keep": "no_such_col > 1", "reason": "r"}])
    # two metadata rows for one uid: its scores could not be told apart
    dup = tmp_path / "dup"
    dup.mkdir()
    t = pq.read_table(pool.metadata / "part-0.parquet")
    pq.write_table(t, dup / "a.parquet")
    pq.write_table(t.slice(0, 1), dup / "b.parquet")
    with pytest.raises(CurateError, match="rows for uid"):
        attempt({"parquet": str(dup), "columns": {"text": "string"}})
    assert not (tmp_path / "sel" / "manifest").exists()


def _members(paths: list[Path]) -> dict[str, dict[str, bytes]]:
    import tarfile

    out: dict[str, dict[str, bytes]] = {}
    for p in paths:
        with tarfile.open(p) as t:
            for m in t.getmembers():
                key, ext = m.name.split(".", 1)
                out.setdefault(key, {})[ext] = t.extractfile(m).read()  # type: ignore[union-attr]
    return out


def test_faces_are_blurred_only_where_boxes_are(pool: DataCompPool, scored: Path,
                                                tmp_path: Path) -> None:
    """output.blur_faces (DataComp's resharder --apply-blur): images with face boxes become
    WebP with the boxes blurred and the json says so; the others keep their bytes."""
    import io
    import json

    from PIL import Image

    sel = selection_from_dict({
        "name": "blur", "metadata": {"parquet": str(pool.metadata), **META},
        "select": [{"preset": "datacomp_basic"}],
        "output": {"blur_faces": "face_bboxes", "write_shards": True}})
    select(scored / "store", sel, tmp_path / "sel", progress=False)
    got = _members(sorted((tmp_path / "sel" / "output").glob("*.tar")))
    src = _members(sorted(pool.shards.glob("*.tar")))
    by_uid = {json.loads(m["json"])["uid"]: m for m in src.values()}
    boxes = dict(zip(released(pool).uid, released(pool).face_bboxes, strict=True))
    blurred = 0
    for uid, m in got.items():
        meta = json.loads(m["json"])
        original = by_uid[uid]["jpg"]
        if len(boxes[uid]) == 0:
            assert m["jpg"] == original and "face_blur" not in meta and "webp" not in m
            continue
        blurred += 1
        assert "jpg" not in m
        fb = meta["face_blur"]
        assert fb["boxes"] == [list(b) for b in boxes[uid]] and fb["replaced"] == "jpg"
        assert fb["format"] == "webp" and fb["quality"] == 100
        import hashlib
        assert fb["replaced_sha256"] == hashlib.sha256(original).hexdigest()
        a = np.asarray(Image.open(io.BytesIO(original)).convert("RGB")).astype(float)
        b = np.asarray(Image.open(io.BytesIO(m["webp"])).convert("RGB")).astype(float)
        assert a.shape == b.shape
        h, w = a.shape[:2]
        x0, y0, x1, y1 = boxes[uid][0]
        inner = (slice(int(y0 * h) + 2, int(y1 * h) - 2), slice(int(x0 * w) + 2, int(x1 * w) - 2))
        # random-noise images: inside the box the blur removes most of the pixel variance
        assert b[inner].std() < 0.5 * a[inner].std()
        # far from every box (bottom-right corner) the pixels are untouched, up to WebP's loss
        corner = (slice(h - 4, h), slice(w - 4, w))
        assert np.abs(b[corner] - a[corner]).mean() < 8
    assert blurred > 0
    # resharding by the same run's uids blurs the same way (and refuses without a run)
    from curate.write.export import kept_uids as kept
    from curate.write.export import reshard
    r = reshard(kept(tmp_path / "sel"), tmp_path / "re", run_dir=tmp_path / "sel",
                blur_faces="face_bboxes")
    again = _members(sorted((tmp_path / "re").glob("*.tar")))
    assert r.written == len(got)
    assert {u: m.get("webp") for u, m in again.items()} == {u: m.get("webp")
                                                              for u, m in got.items()}
    with pytest.raises(CurateError, match="needs the run"):
        reshard(kept(tmp_path / "sel"), tmp_path / "re2", pool=str(pool.shards),
                blur_faces="face_bboxes")
    with pytest.raises(ConfigError, match="blur_faces: no column 'faces'"):
        select(scored / "store", selection_from_dict({"name": "b", "output": {
            "blur_faces": "faces"}}), tmp_path / "sel2", progress=False)


def test_laion2b_equals_datacomps(pool: DataCompPool, scored: Path, tmp_path: Path) -> None:
    """DataComp's laion2b baseline: CLD3 English and B/32 >= 0.28, over the released scores."""
    import gcld3

    df = released(pool)
    cld3 = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
    english = df.text.apply(lambda t: cld3.FindLanguage(text=t.replace("\n", " ")).language)
    kept = df[english == "en"]
    expected = set(kept.uid[kept.clip_b32_similarity_score >= 0.28])
    sel = selection_from_dict({
        "name": "laion2b", "metadata": {"parquet": str(pool.metadata), **META},
        "select": [{"preset": "laion2b", "column": "clip_b32_similarity_score"}],
        "output": {"write_shards": False}})
    select(scored / "store", sel, tmp_path / "sel", progress=False)
    assert kept_uids(tmp_path / "sel") == expected
    assert 0 < len(expected) < len(df)
