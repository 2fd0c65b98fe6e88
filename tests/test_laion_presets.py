"""The LAION presets (laion_nsfw, laion_safe_tags, laion_aesthetic, laion_art,
laion_improved_aesthetics) through a real selection, on a store of image sizes and LAION's tags
declared as pool metadata; the kept uids equal the authors' filters written here in pandas as
laion-prepro writes them in Spark (``aesthetic_join.py``: ``punsafe < 0.5``, ``pwatermark <
0.8``, ``aesthetic > 7``; ``laion_art.py``: ``aesthetic > 8``) and as the Stable Diffusion v1
model card states laion-improved-aesthetics (original size >= 512x512, aesthetic > 5.0,
pwatermark < 0.5). Spark compares a float column with a double literal in double; the presets'
float32 comparisons must agree on every float32 value, boundaries included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from storemaker import write_store

from curate.config import pipeline_from_dict
from curate.errors import ConfigError
from curate.select.metadata import SelectMetadata, metadata_files
from curate.select.selection import select

TAGS = {"punsafe": "float32", "pwatermark": "float32", "aesthetic_score": "float32",
        "aesthetic_score_v1": "float32"}


def f32_near(x: float) -> list[float]:
    """float32 values at and next to ``x``: the boundary cases of a comparison with it."""
    v = np.float32(x)
    return [float(np.nextafter(v, np.float32(-np.inf))), float(v),
            float(np.nextafter(v, np.float32(np.inf)))]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("laion")
    rng = np.random.default_rng(0)
    n = 400
    cols: dict[str, np.ndarray] = {
        "punsafe": rng.uniform(0, 1, n), "pwatermark": rng.uniform(0, 1, n),
        "aesthetic_score": rng.uniform(3, 9, n), "aesthetic_score_v1": rng.uniform(5, 9.5, n)}
    # planted boundaries: float32 values at and around every bound the presets use
    for c, bounds in (("punsafe", [0.5]), ("pwatermark", [0.5, 0.8]),
                      ("aesthetic_score", [5.0]), ("aesthetic_score_v1", [7.0, 8.0])):
        vals = [v for b in bounds for v in f32_near(b)]
        cols[c][: len(vals)] = vals
    df = pd.DataFrame({c: v.astype(np.float32) for c, v in cols.items()})
    df.loc[[7, 11], "punsafe"] = np.nan  # a missing tag: the row is dropped
    df["uid"] = [f"{k:032x}" for k in range(n)]
    sides = rng.choice([300, 511, 512, 800, 1400], size=(n, 2))
    original = rng.uniform(size=n) < 0.7  # img2dataset's original sizes, else the stored ones
    rows = []
    for k in range(n):
        w, h = (int(s) for s in sides[k])
        rows.append({"shard": f"{k % 4:05d}.tar", "index": k // 4,
                     "width": min(w, 256), "height": min(h, 256),
                     "original_width": w if original[k] else None,
                     "original_height": h if original[k] else None})
        if not original[k]:
            rows[-1].update(width=w, height=h)
    source = write_store(root / "store", rows, {
        "width": pa.int32(), "height": pa.int32(), "original_width": pa.int32(),
        "original_height": pa.int32()}, label="image_info")
    tags = root / "tags"
    tags.mkdir()
    table = pa.Table.from_pandas(df[["uid", *TAGS]], preserve_index=False)
    table = table.cast(pa.schema([("uid", pa.string())] + [(c, pa.float32()) for c in TAGS]))
    pq.write_table(table, tags / "part-0.parquet")
    df["width"] = [r["original_width"] or r["width"] for r in rows]
    df["height"] = [r["original_height"] or r["height"] for r in rows]
    return {"root": root, "source": source, "tags": tags, "df": df}


def kept(pool: dict[str, Any], tmp_path: Path, step: dict[str, Any]) -> set[str]:
    p = pipeline_from_dict({"input": {"shards": "x"}, "score": ["image_info"],
                            "metadata": {"parquet": str(pool["tags"]), "columns": TAGS},
                            "select": [step]})
    meta = SelectMetadata(p.metadata, metadata_files(p.metadata))
    select(p.select, pool["source"], tmp_path, metadata=meta)
    m = pq.read_table(tmp_path / "manifest").to_pandas()
    return set(m[m.kept].uid)


def spark_like(df: pd.DataFrame, **bounds: float) -> pd.Series:
    """The authors' filters on the float32 tags, compared in double as Spark does (a NaN or
    null compares false, so it is dropped)."""
    ok = pd.Series(True, index=df.index)
    for name, b in bounds.items():
        col, op = name.rsplit("_", 1)
        x = df[col].astype(np.float64)
        ok &= (x < b) if op == "lt" else (x > b)
    return ok


def test_laion_aesthetic_equals_laion_prepro(pool: dict[str, Any], tmp_path: Path) -> None:
    df = pool["df"]
    want = spark_like(df, punsafe_lt=0.5, pwatermark_lt=0.8, aesthetic_score_v1_gt=7.0)
    assert 20 < want.sum() < len(df) - 20
    assert kept(pool, tmp_path, {"preset": "laion_aesthetic"}) == set(df.uid[want])


def test_laion_art_equals_laion_prepro(pool: dict[str, Any], tmp_path: Path) -> None:
    df = pool["df"]
    want = spark_like(df, punsafe_lt=0.5, pwatermark_lt=0.8, aesthetic_score_v1_gt=8.0)
    assert 5 < want.sum()
    assert kept(pool, tmp_path, {"preset": "laion_art"}) == set(df.uid[want])


def test_safety_presets(pool: dict[str, Any], tmp_path: Path) -> None:
    df = pool["df"]
    assert kept(pool, tmp_path / "n", {"preset": "laion_nsfw"}) == set(
        df.uid[spark_like(df, punsafe_lt=0.5)])
    assert kept(pool, tmp_path / "s", {"preset": "laion_safe_tags"}) == set(
        df.uid[spark_like(df, punsafe_lt=0.5, pwatermark_lt=0.8)])
    assert kept(pool, tmp_path / "t", {"preset": "laion_safe_tags", "max_punsafe": 0.2}) == set(
        df.uid[spark_like(df, punsafe_lt=0.2, pwatermark_lt=0.8)])


def test_laion_improved_aesthetics_equals_the_model_card(pool: dict[str, Any],
                                                          tmp_path: Path) -> None:
    df = pool["df"]
    want = spark_like(df, aesthetic_score_gt=5.0, pwatermark_lt=0.5)
    want &= (df.width >= 512) & (df.height >= 512)
    assert 10 < want.sum()
    assert kept(pool, tmp_path, {"preset": "laion_improved_aesthetics"}) == set(df.uid[want])
    m = pq.read_table(tmp_path / "manifest").to_pandas()
    assert set(m.reason.dropna()) == {"image_under_512", "aesthetic_too_low", "watermarked"}


def test_preset_mistakes(pool: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="preset laion_art has no parameter 'min_aesthetc'"):
        kept(pool, tmp_path, {"preset": "laion_art", "min_aesthetc": 9})
