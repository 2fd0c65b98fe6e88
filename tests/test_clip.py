"""The CLIP scorer against open_clip's reference path, its failures, and its embeddings."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from clipfixtures import big_photos, random_clip_dir
from shardmaker import sample_members, write_tar
from stagetest import score

from curate.errors import CurateError
from curate.stages.clip import Clip, ClipParams

CAPTIONS = ["an astronaut in an orange suit", "a tabby cat looking at the camera",
            "a cup of coffee on a saucer", "a rocket on the launch pad",
            "a portrait photograph", "a cat lying on a carpet"]


def reference_scores(model_dir: Path, images: list[bytes], captions: list[str],
                     ) -> tuple[np.ndarray, np.ndarray]:
    """open_clip's own path: PIL open → the model's preprocess → encode → cosine."""
    import open_clip
    import torch
    from PIL import Image

    net, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    net.eval()
    tok = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    with torch.inference_mode():
        x = torch.stack([preprocess(Image.open(io.BytesIO(b))) for b in images])
        img = torch.nn.functional.normalize(net.encode_image(x), dim=-1)
        txt = torch.nn.functional.normalize(net.encode_text(tok(captions)), dim=-1)
    return (img * txt).sum(-1).numpy(), img.numpy()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_clip_dir(tmp_path_factory.mktemp("clip") / "tiny")


@pytest.mark.parametrize("arch", ["curate-tiny", "ViT-S-32"])
def test_scores_match_open_clip_reference(arch: str, tmp_path: Path) -> None:
    model_dir = random_clip_dir(tmp_path / arch, arch)
    images = big_photos(6)
    ref_scores, ref_img = reference_scores(model_dir, images, CAPTIONS)
    stage = Clip(ClipParams(model=str(model_dir), pretrained=None, batch_size=4))
    out, errors = score(stage, [{"image": b, "caption": c} for b, c in
                                zip(images, CAPTIONS, strict=True)])
    got = np.array([r["clip_score"] for r in out])
    assert all(e is None for e in errors.stage)
    assert np.abs(got - ref_scores).max() < 0.01, (got, ref_scores)
    emb = np.array([r["clip_image_emb"] for r in out], dtype=np.float32)
    cos = (emb * ref_img).sum(-1) / np.linalg.norm(emb, axis=-1)
    assert cos.min() > 0.99


def test_undecodable_image_fails_alone(tiny_dir: Path) -> None:
    images = big_photos(3)
    rows = [{"image": images[0], "caption": "a"}, {"image": b"\xff\xd8junk", "caption": "b"},
            {"image": images[2], "caption": "c"}]
    out, errors = score(Clip(ClipParams(model=str(tiny_dir), pretrained=None)), rows)
    assert errors.stage == [None, "clip", None]
    assert out[1]["clip_score"] is None and out[1]["clip_image_emb"] is None
    assert out[0]["clip_score"] is not None and out[2]["clip_score"] is not None


def test_named_scorers_have_their_own_columns(tiny_dir: Path) -> None:
    stage = Clip(ClipParams(model=str(tiny_dir), pretrained=None, name="tiny",
                            embeddings=False))
    assert list(stage.outputs()) == ["clip_score_tiny"] and stage.label == "clip_tiny"
    from curate.config import pipeline_from_dict

    p = pipeline_from_dict({"input": {"shards": "x"}, "score": [
        {"clip": {"model": str(tiny_dir), "pretrained": None, "name": "a"}},
        {"clip": {"model": str(tiny_dir), "pretrained": None, "name": "b"}}],
        "select": [{"rule": "sql", "keep": "clip_score_a > 0 OR clip_score_b > 0",
                    "reason": "low"}]})
    assert {"clip_score_a", "clip_score_b"} <= set(p.signal_columns())
    assert "clip_image_emb_a" not in p.signal_columns()  # embeddings are sidecars


def test_missing_weights_offline_is_one_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    import huggingface_hub.constants

    from curate.lib.clip_model import load_clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read at import; the constant is read per call
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CurateError) as info:
        load_clip("ViT-B-32", "laion2b_s34b_b79k")
    assert "ViT-B-32" in info.value.message and "laion2b_s34b_b79k" in info.value.message
    assert info.value.hint is not None and "pretrained: /path/to" in info.value.hint
    with pytest.raises(CurateError, match="does not exist"):
        load_clip("ViT-B-32", str(tmp_path / "weights" / "nope.bin"))
    with pytest.raises(CurateError, match=r"no open_clip_config\.json"):
        Clip(ClipParams(model=str(tmp_path))).outputs()


def test_embeddings_are_stored_beside_the_scores(tiny_dir: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from curate.config import pipeline_from_dict
    from curate.runner import score

    images = big_photos(3)
    members = (sample_members("a", images[0], "first") + sample_members("b", b"bad", "second")
               + sample_members("c", images[1], "third"))
    write_tar(tmp_path / "pool" / "00000.tar", members)
    p = pipeline_from_dict({"input": {"shards": str(tmp_path / "pool" / "*.tar")}, "score": [
        {"clip": {"model": str(tiny_dir), "pretrained": None}}]})
    result = score(p, tmp_path / "store", local=True)
    [version] = result.versions
    [npy] = (tmp_path / "store" / "scores" / "clip" / version.version / "clip_image_emb").glob(
        "00000.*.npy")
    emb = np.load(npy, mmap_mode="r")
    assert emb.shape == (3, 256) and emb.dtype == np.float16
    assert np.isnan(emb[1]).all() and not np.isnan(emb[[0, 2]]).any()
    [scores] = (tmp_path / "store" / "scores" / "clip" / version.version).glob("00000.*.parquet")
    sig = pq.read_table(scores)
    assert sig.column_names == ["__status", "__error", "clip_score"]  # embeddings beside it
    assert sig.column("__status").to_pylist() == ["ok", "error", "ok"]
    assert version.sidecars == {"clip_image_emb": 256, "clip_text_emb": 256}
    norms = np.linalg.norm(emb[[0, 2]].astype(np.float32), axis=-1)
    assert np.allclose(norms, 1, atol=1e-2)
    assert isinstance(sig.column("clip_score"), pa.ChunkedArray)


@pytest.mark.parametrize("arch", ["curate-tiny", "ViT-S-32"])
def test_trimmed_text_tower_equals_open_clip(arch: str) -> None:
    import torch

    from curate.lib.clip_model import _open_clip, can_trim_text, encode_text_trimmed, trim_tokens

    open_clip = _open_clip()
    torch.manual_seed(0)
    net = open_clip.create_model(arch, pretrained=None).eval()
    tok = open_clip.get_tokenizer(arch)
    tokens = tok(["a cat", "two red circles on the left of a blue square", ""])
    assert can_trim_text(net)
    short = trim_tokens(tokens)
    assert short.shape[1] < tokens.shape[1]
    with torch.inference_mode():
        full = net.encode_text(tokens)
        trimmed = encode_text_trimmed(net, short)
    assert torch.allclose(full, trimmed, atol=1e-5, rtol=1e-4)


def test_worker_asking_for_more_cpus_than_any_node_still_runs(tiny_dir: Path, tmp_path: Path,
                                                              ray_local: None) -> None:
    from curate.config import pipeline_from_dict
    from curate.runner import run

    images = big_photos(2)
    write_tar(tmp_path / "pool" / "00000.tar",
              sample_members("a", images[0], "a photo") + sample_members("b", images[1], "b"))
    p = pipeline_from_dict({
        "input": {"shards": str(tmp_path / "pool" / "*.tar")},
        "score": [{"clip": {"model": str(tiny_dir), "pretrained": None, "cpus": 4}}]})
    result = run(p, tmp_path / "run", progress=False)  # 4 > the 2 CPUs: capped, not stuck
    assert result.samples == 2 and result.kept == 2


def test_weights_that_cannot_load_fail_on_the_driver_before_any_worker(
        tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import shutil

    from conftest import curate_cli

    from curate.lib.clip_model import check_weights

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # The tag is known but its weights are neither cached here nor downloadable (no network).
    with pytest.raises(CurateError) as info:
        check_weights("ViT-B-32", "laion2b_s34b_b79k")
    assert "not in the local Hugging Face cache" in info.value.message
    assert "pretrained: /path/to" in (info.value.hint or "")
    with monkeypatch.context() as offline:
        offline.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(CurateError, match="HF_HUB_OFFLINE is set"):
            check_weights("ViT-B-32", "laion2b_s34b_b79k")
    with pytest.raises(CurateError, match=r"known tags: .*laion2b_s34b_b79k"):
        check_weights("ViT-B-32", "laion2b_s99z_b0k")  # a tag open_clip does not know
    with pytest.raises(CurateError, match="does not exist"):
        check_weights("ViT-B-32", str(tmp_path / "weights" / "nope.bin"))
    empty = tmp_path / "no_weights"
    empty.mkdir()
    shutil.copy(tiny_dir / "open_clip_config.json", empty)
    with pytest.raises(CurateError, match="has no weights"):
        check_weights(str(empty), None)
    check_weights(str(tiny_dir), None)  # local weights: nothing to fetch
    check_weights("curate-tiny", None)  # random weights (tests): nothing to fetch

    # Through the command line: one error line and a hint, nothing cut, and no worker started.
    images = big_photos(1)
    write_tar(tmp_path / "pool" / "00000.tar", sample_members("a", images[0], "a photo"))
    pipe = tmp_path / "clip.yaml"
    pipe.write_text(json.dumps({"input": {"shards": str(tmp_path / "pool" / "*.tar")},
                                "score": [{"clip": {"model": "ViT-B-32"}}]}))
    res = curate_cli("run", str(pipe), "--out", str(tmp_path / "run"), "--no-progress")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[-2].startswith("error: the weights of ViT-B-32 (laion2b_s34b_b79k) are not")
    assert lines[-1].startswith("hint: pass local weights") and lines[-1].endswith(")")
    events = [json.loads(x)["event"] for x in
              (tmp_path / "run" / "store" / "log.jsonl").read_text().splitlines()]
    assert "workers_started" not in events and "ray" not in events
