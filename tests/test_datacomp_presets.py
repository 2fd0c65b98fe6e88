"""The DataComp presets datacomp_text_based, datacomp_image_based and
datacomp_image_based_intersect_clip_score, run through a real selection on a store whose columns
our scorers computed from hand-written captions and embeddings; the kept uids equal DataComp's
rules (baselines/apply_filter.py) written here in numpy on the same inputs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from stagetest import score
from storemaker import write_store
from test_wordnet_entity import write_wordnet

from curate.config import pipeline_from_dict
from curate.errors import ConfigError
from curate.lib.wordnet import WordNetIndex, load_wordnet_ids
from curate.select.selection import select
from curate.stages.caption_stats import CaptionStats, fasttext_token_count
from curate.stages.language import Language, bundled_model_path
from curate.stages.nearest_centroid import NearestCentroid, NearestCentroidParams
from curate.stages.wordnet_entity import WordNetEntity, WordNetEntityParams

CAPTIONS = [
    "Two dogs playing on the beach", "A goose near the lake", "we breathe fresh mountain air",
    "Ein Hund läuft im Park", "Le chat dort sur le canapé", "dog", "a dog", "dogs\n",
    "red car parked outside", "the quick brown fox jumps", "", "      ", "geese flying south",
    "Men at work on the road", "ice_cream cone on a table", "El perro corre en la playa",
    "quickly running home", "boxes of old books", "photo\u3000of\u3000a\u3000dog", "dog,\nhome",
    "A photo of a box", "a small red house by the sea", "dogs, cats and birds", "ran away",
    "hi  \n", "x\r\ny dog", "Gratis verzending vanaf 50 euro", "two men and a dog walking",
    "Zwei Hunde spielen im Schnee", "A dog and a goose in the garden", "puppies\n",
    "seagulls\n", "Wallpapers\n", "sunset\n",
]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Assets in DataComp's released formats, the pool's inputs, and a store of our scorers'
    outputs (4 shards)."""
    root = tmp_path_factory.mktemp("datacomp")
    rng = np.random.default_rng(0)
    n, d, k = 240, 32, 24
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(n)]
    centroids = unit(rng.normal(size=(k, d))).astype(np.float32)
    emb = unit(centroids[rng.integers(0, k, n)] + 0.4 * rng.normal(size=(n, d))).astype(
        np.float16)
    targets = unit(centroids[rng.integers(0, k // 2, 90)] + 0.05 * rng.normal(size=(90, d)))
    targets = targets.astype(np.float16)
    scores = np.round(rng.uniform(0.1, 0.4, n), 2).astype(np.float32)  # ties
    torch.save(centroids, root / "small_centroids.pt")
    tpaths = [root / f"in1k_clip_vit_l14_{i}.pt" for i in range(2)]
    for path, part in zip(tpaths, np.array_split(targets, 2), strict=True):
        torch.save({"image_features": torch.from_numpy(part)}, path)
    (root / "ids.txt").write_text("n02084071\nn01855672\nn00001740\nn02883344\n")
    wordnet = write_wordnet(root / "wordnet")
    scorers = [CaptionStats(), Language(),
               WordNetEntity(WordNetEntityParams(ids=str(root / "ids.txt"), wordnet=str(wordnet))),
               NearestCentroid(NearestCentroidParams(centroids=str(root / "small_centroids.pt")))]
    rows: list[dict[str, Any]] = [{"uid": f"{i:032x}", "shard": f"{i % 4:05d}.tar",
                                   "index": i // 4, "clip_score_l14": float(scores[i])}
                                  for i in range(n)]
    columns: dict[str, pa.DataType] = {"clip_score_l14": pa.float32()}
    inputs = [{"caption": c, "clip_image_emb_l14": e.tolist()} for c, e in zip(captions, emb,
                                                                                 strict=True)]
    for s in scorers:
        out, errors = score(s, [{c: x[c] for c in s.inputs()} for x in inputs])
        assert errors.ok_rows() == list(range(n))
        columns.update(s.outputs())
        for r, o in zip(rows, out, strict=True):
            r.update(o)
    source = write_store(root / "store", rows, columns, embeddings={"clip_image_emb_l14": emb})
    return {"root": root, "source": source, "captions": captions, "emb": emb,
            "centroids": centroids, "targets": targets, "scores": scores, "wordnet": wordnet,
            "assets": {"centroids": str(root / "small_centroids.pt"),
                       "targets": [str(p) for p in tpaths], "device": "cpu"}}


def datacomp_masks(pool: dict[str, Any]) -> dict[str, np.ndarray]:
    """DataComp's masks from its code's semantics, on the raw inputs."""
    import fasttext

    model = fasttext.load_model(str(bundled_model_path()))
    captions = pool["captions"]
    english = np.array([model.predict(c.replace("\n", " "), k=1)[0][0] == "__label__en"
                        for c in captions])
    wn = WordNetIndex(pool["wordnet"])
    ids = load_wordnet_ids(pool["root"] / "ids.txt")
    entity = np.array([wn.contains_entity(c, ids) for c in captions])
    caption_ok = english & np.array([fasttext_token_count(c) > 1 and len(c) > 5
                                     for c in captions])
    nearest = np.argmax(pool["emb"].astype(np.float32) @ pool["centroids"].T, axis=1)
    hit = np.unique(np.argmax(pool["targets"].astype(np.float32) @ pool["centroids"].T, axis=1))
    scores = pool["scores"]
    threshold = -np.sort(-scores)[int(len(scores) * 0.3)]  # get_threshold over the whole pool
    return {"text_based": english & entity, "caption": caption_ok,
            "image_based": caption_ok & np.isin(nearest, hit), "top": scores >= threshold}


def kept(pool: dict[str, Any], tmp_path: Path, step: dict[str, Any]) -> np.ndarray:
    p = pipeline_from_dict({"input": {"shards": "x"}, "score": [
        {"clip": {"model": "ViT-L-14", "pretrained": "openai", "name": "l14"}}, "caption_stats",
        "language", {"wordnet_entity": {"ids": str(pool["root"] / "ids.txt"),
                                        "wordnet": str(pool["wordnet"])}},
        {"nearest_centroid": {"centroids": pool["assets"]["centroids"]}}], "select": [step]})
    select(p.select, pool["source"], tmp_path)
    m = pq.read_table(tmp_path / "manifest").to_pandas()
    out = np.zeros(len(pool["captions"]), dtype=bool)
    out[[int(u, 16) for u in m[m.kept].uid]] = True
    return out


def test_text_based_equals_datacomp(pool: dict[str, Any], tmp_path: Path) -> None:
    expected = datacomp_masks(pool)["text_based"]
    assert 0 < expected.sum() < len(expected)
    assert kept(pool, tmp_path, {"preset": "datacomp_text_based"}).tolist() == expected.tolist()


def test_image_based_equals_datacomp(pool: dict[str, Any], tmp_path: Path) -> None:
    masks = datacomp_masks(pool)
    expected = masks["image_based"]
    assert 0 < expected.sum() < masks["caption"].sum()  # the centroid filter drops some
    # one-word captions ending in a newline pass (fasttext counts "</s>"): "sunset\n"
    assert any(ok and len(c.split()) == 1 for ok, c in zip(masks["caption"], pool["captions"],
                                                           strict=True))
    got = kept(pool, tmp_path, {"preset": "datacomp_image_based", **pool["assets"]})
    assert got.tolist() == expected.tolist()


def test_intersect_thresholds_the_whole_pool_as_datacomp(pool: dict[str, Any],
                                                         tmp_path: Path) -> None:
    masks = datacomp_masks(pool)
    expected = masks["top"] & masks["image_based"]
    assert 0 < expected.sum()
    got = kept(pool, tmp_path / "a", {"preset": "datacomp_image_based_intersect_clip_score",
                                      **pool["assets"]})
    assert got.tolist() == expected.tolist()
    # Ranking only the rows the caption filter kept (over: kept, after it) would differ: the
    # order of DataComp's operations matters and the preset follows it.
    scores = pool["scores"]
    sub = scores[masks["caption"]]
    late = scores >= -np.sort(-sub)[int(len(sub) * 0.3)]
    assert (late & masks["image_based"]).tolist() != expected.tolist()


def test_presets_name_their_parameters(pool: dict[str, Any]) -> None:
    p = pipeline_from_dict({"input": {"shards": "x"}, "score": ["caption_stats", "language"],
                            "select": [{"preset": "datacomp_image_based_intersect_clip_score",
                                        "column": "caption_chars", "fraction": 0.1,
                                        "centroid_column": "caption_words", **pool["assets"]}]})
    names = [s.stage.name for s in p.select]
    assert names == ["top_fraction", "in_set", "threshold", "threshold", "centroid_target"]
    top, target = p.select[0].stage.params, p.select[-1].stage.params
    assert (top.column, top.fraction, top.over) == ("caption_chars", 0.1, "pool")  # type: ignore[attr-defined]
    assert target.targets == pool["assets"]["targets"]  # type: ignore[attr-defined]
    # the defaults are where DataComp's download() caches its assets; missing ones fail the
    # pipeline's load, before any scoring
    cache = Path("~/.cache/datacomp").expanduser()
    if not (cache / "small_centroids.pt").is_file():
        with pytest.raises(ConfigError, match=re.escape(str(cache / "small_centroids.pt"))):
            pipeline_from_dict({"input": {"shards": "x"}, "score": ["caption_stats", "language"],
                                "select": [{"preset": "datacomp_image_based",
                                            "centroid_column": "caption_words"}]})
    with pytest.raises(ConfigError, match=r"in1k_clip_vit_l14_1\.pt"):
        pipeline_from_dict({"input": {"shards": "x"}, "score": ["caption_stats", "language"],
                            "select": [{"preset": "datacomp_image_based",
                                        "centroid_column": "caption_words",
                                        "centroids": pool["assets"]["centroids"],
                                        "targets": [pool["assets"]["targets"][0], str(
                                            pool["root"] / "in1k_clip_vit_l14_1.pt.missing")]}]})
