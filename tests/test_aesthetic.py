"""aesthetic: LAION-Aesthetics V2 and V1 over stored (float16) CLIP embeddings, against the
published architectures written here as the authors define them, with seeded random weights
saved in the authors' state-dict formats; loading from a path, from the hub cache, missing or
wrong files; the CLIP-model check; a real tiny-CLIP pipeline reading the stored embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hubcache import put_in_hub_cache
from shardmaker import jpeg, write_tar
from stagetest import score
from torch import nn

from curate.errors import CurateError
from curate.stages.aesthetic import Aesthetic, AestheticParams
from curate.stages.clip import Clip, ClipParams


class AuthorsMLP(nn.Module):
    """improved-aesthetic-predictor's ``MLP`` (simple_inference.py): its ``layers`` as
    published, ReLUs commented out (``relu=True``: the reluMSE variant's layout)."""

    def __init__(self, input_size: int, relu: bool = False) -> None:
        super().__init__()
        r = [nn.ReLU()] if relu else []
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), *r, nn.Dropout(0.2),
            nn.Linear(1024, 128), *r, nn.Dropout(0.2),
            nn.Linear(128, 64), *r, nn.Dropout(0.1),
            nn.Linear(64, 16), *r,
            nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def authors_normalized(a: np.ndarray) -> np.ndarray:
    """The authors' ``normalized`` (L2, a zero row left as it is)."""
    l2 = np.atleast_1d(np.linalg.norm(a, 2, -1))
    l2[l2 == 0] = 1
    return a / np.expand_dims(l2, -1)


def v2_weights(path: Path, dim: int = 768, seed: int = 0, relu: bool = False) -> AuthorsMLP:
    torch.manual_seed(seed)
    m = AuthorsMLP(dim, relu).eval()
    torch.save(m.state_dict(), path)
    return m


def v1_weights(path: Path, dim: int = 768, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    m = nn.Linear(dim, 1).eval()
    torch.save(m.state_dict(), path)
    return m


def embeddings(n: int, dim: int = 768, seed: int = 0) -> np.ndarray:
    """Unit vectors rounded to float16, as the clip scorer stores them."""
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def stored(emb: np.ndarray, offset: int = 0) -> pa.Array:
    """The store's column type: fixed-size lists of float16 (sliced, as batches are)."""
    col = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float16()), emb.shape[1])
    return col.slice(offset)


def run(scorer: Aesthetic, emb: np.ndarray, column: str = "clip_image_emb_l14") -> np.ndarray:
    scorer.setup()
    out = scorer.score_batch(pa.table({column: stored(emb)}))
    return out[scorer.column].to_numpy(zero_copy_only=False)


def test_v2_equals_the_authors_mlp_on_stored_float16(tmp_path: Path) -> None:
    ref = v2_weights(tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    emb = embeddings(300)
    s = Aesthetic(AestheticParams(weights=str(tmp_path / "sac+logos+ava1-l14-linearMSE.pth")))
    got = run(s, emb)
    with torch.no_grad():  # the authors' inference: normalized(embedding) → model
        want = ref(torch.from_numpy(authors_normalized(emb.astype(np.float32)))).numpy()[:, 0]
    assert s.column == "aesthetic_score" and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)  # the same operations on the same input
    # without normalisation the head sees the stored vector as it is
    raw = run(Aesthetic(AestheticParams(weights=str(tmp_path / "sac+logos+ava1-l14-linearMSE."
                                                                "pth"), normalise=False)), emb)
    with torch.no_grad():
        np.testing.assert_allclose(raw, ref(torch.from_numpy(emb.astype(np.float32))).numpy()[
            :, 0], rtol=0, atol=1e-6)


def test_v2_relu_layout_and_v1_linear_head(tmp_path: Path) -> None:
    relu = v2_weights(tmp_path / "ava+logos-l14-reluMSE.pth", relu=True, seed=1)
    emb = embeddings(64, seed=1)
    got = run(Aesthetic(AestheticParams(weights=str(tmp_path / "ava+logos-l14-reluMSE.pth"))),
              emb)
    with torch.no_grad():
        want = relu(torch.from_numpy(authors_normalized(emb.astype(np.float32)))).numpy()[:, 0]
    np.testing.assert_array_equal(got, want)

    lin = v1_weights(tmp_path / "sa_0_4_vit_b_32_linear.pth", dim=512, seed=2)
    emb = embeddings(64, dim=512, seed=2)
    s = Aesthetic(AestheticParams(model="v1", weights=str(tmp_path / "sa_0_4_vit_b_32_linear.pth"),
                                  column="clip_image_emb", trained_on="ViT-B-32/openai"))
    got = run(s, emb, "clip_image_emb")
    with torch.no_grad():  # the V1 notebook: image_features /= norm, then the linear layer
        f = torch.from_numpy(emb.astype(np.float32))
        f /= f.norm(dim=-1, keepdim=True)
        want = lin(f).numpy()[:, 0]
    np.testing.assert_array_equal(got, want)
    # a V1 file given as V2 (or the reverse) is refused, naming what was expected
    with pytest.raises(CurateError, match="not a LAION-Aesthetics V2"):
        Aesthetic(AestheticParams(weights=str(tmp_path / "sa_0_4_vit_b_32_linear.pth"))).check()
    with pytest.raises(CurateError, match="not a LAION-Aesthetics V1"):
        Aesthetic(AestheticParams(model="v1", weights=str(tmp_path / "ava+logos-l14-reluMSE.pth"))
                  ).check()


def test_bad_rows_fail_alone_and_a_wrong_width_is_named(tmp_path: Path) -> None:
    v2_weights(tmp_path / "w.pth", dim=8)
    s = Aesthetic(AestheticParams(weights=str(tmp_path / "w.pth"), column="e"))
    rows = [{"e": [1.0] * 8}, {"e": [float("nan")] + [0.0] * 7}, {"e": [0.0] * 8},
            {"e": [0.5, None, 0, 0, 0, 0, 0, 0]}]
    out, errors = score(s, rows)
    assert out[0]["aesthetic_score"] is not None and out[2]["aesthetic_score"] is not None
    assert out[1]["aesthetic_score"] is None and out[3]["aesthetic_score"] is None
    assert errors.stage[1] == errors.stage[3] == "aesthetic" and errors.stage[0] is None
    assert "NaN" in (errors.message[1] or "")
    # a zero vector stays zero, as the authors' normalized leaves it
    torch.manual_seed(0)
    ref = AuthorsMLP(8).eval()
    ref.load_state_dict(torch.load(tmp_path / "w.pth"))
    with torch.no_grad():
        assert out[2]["aesthetic_score"] == pytest.approx(float(ref(torch.zeros(1, 8))[0, 0]))
    # embeddings of another width: every sample fails with the reason
    out, errors = score(s, [{"e": [1.0] * 4}, {"e": [0.0, 1.0, 0.0, 0.0]}])
    assert [r["aesthetic_score"] for r in out] == [None, None]
    assert "e has 4 dimensions, the aesthetic head takes 8" in (errors.message[0] or "")


def test_weights_from_a_path_the_hub_cache_or_missing(tmp_path: Path, monkeypatch: Any) -> None:
    from huggingface_hub import constants

    v2_weights(tmp_path / "a.pth")
    data = (tmp_path / "a.pth").read_bytes()
    monkeypatch.chdir(tmp_path)
    local = Aesthetic(AestheticParams(weights="a.pth"))
    assert local.params.weights == str(tmp_path / "a.pth")  # absolute, for workers elsewhere
    put_in_hub_cache(tmp_path / "hub", "someorg/aesthetic", "v2/sac.pth", data)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub = Aesthetic(AestheticParams(weights="hf-hub:someorg/aesthetic/v2/sac.pth"))
    emb = embeddings(20)
    np.testing.assert_array_equal(run(hub, emb), run(local, emb))
    # the identity is the weights' content: a copy elsewhere is the same version
    (tmp_path / "b.pth").write_bytes(data)
    assert Aesthetic(AestheticParams(weights=str(tmp_path / "b.pth"))).fingerprint() == \
        hub.fingerprint() == local.fingerprint()
    v2_weights(tmp_path / "c.pth", seed=5)
    assert Aesthetic(AestheticParams(weights=str(tmp_path / "c.pth"))).fingerprint() != \
        local.fingerprint()
    assert Aesthetic(AestheticParams(weights="a.pth", name="x")).fingerprint() != \
        local.fingerprint()

    with pytest.raises(CurateError, match="not in the Hugging Face cache") as e:
        Aesthetic(AestheticParams(weights="hf-hub:someorg/aesthetic/other.pth")).check()
    assert "hf download someorg/aesthetic other.pth" in str(e.value.hint)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the default cache path is missing
    with pytest.raises(CurateError, match="no aesthetic weights file") as e:
        Aesthetic().check()
    assert "sac+logos+ava1-l14-linearMSE.pth" in e.value.message
    assert "improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth" in str(
        e.value.hint)
    with pytest.raises(CurateError, match=r"emb_reader/sa_0_4_vit_l_14_linear\.pth"):
        Aesthetic(AestheticParams(model="v1")).fingerprint()
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(CurateError, match="not a torch state dict"):
        Aesthetic(AestheticParams(weights=str(tmp_path / "junk.pth"))).check()


def clip_scorer(model: str, pretrained: str | None, name: str = "l14",
                embed_dim: int | None = None) -> Clip:
    return Clip(ClipParams(model=model, pretrained=pretrained, name=name, embed_dim=embed_dim))


def test_only_the_clip_model_it_was_trained_on_unless_opted_out(tmp_path: Path) -> None:
    v2_weights(tmp_path / "w.pth")
    s = Aesthetic(AestheticParams(weights=str(tmp_path / "w.pth")))
    l14 = clip_scorer("ViT-L-14", "openai")
    s.check_producers({"clip_image_emb_l14": l14})  # OpenAI's L/14: accepted
    s.check_producers({"clip_image_emb_l14": clip_scorer("ViT-L-14-quickgelu", "openai")})
    other = clip_scorer("ViT-L-14", "laion2b_s32b_b82k")
    with pytest.raises(CurateError, match="trained on ViT-L-14/openai image embeddings, but "
                       "clip_image_emb_l14 comes from scorer clip_l14 "
                       r"\(ViT-L-14/laion2b_s32b_b82k\)") as e:
        s.check_producers({"clip_image_emb_l14": other})
    assert "any_model: true" in str(e.value.hint)
    with pytest.raises(CurateError, match="has no known producer"):
        s.check_producers({})
    Aesthetic(AestheticParams(weights=str(tmp_path / "w.pth"), any_model=True)).check_producers(
        {"clip_image_emb_l14": other})
    # a B/32 embedding (512) under a head taking 768 is refused even with any_model
    b32 = clip_scorer("ViT-B-32", "openai", embed_dim=512)
    with pytest.raises(CurateError, match=r"has 512 dimensions .* the head takes 768"):
        Aesthetic(AestheticParams(weights=str(tmp_path / "w.pth"), any_model=True)
                  ).check_producers({"clip_image_emb_l14": b32})
    # a V1 B/32 head, told what it was trained on, takes the B/32 scorer's embedding
    v1_weights(tmp_path / "b32.pth", dim=512)
    Aesthetic(AestheticParams(model="v1", weights=str(tmp_path / "b32.pth"), column="clip_"
                              "image_emb_l14", trained_on="ViT-B-32/openai")).check_producers(
        {"clip_image_emb_l14": b32})


def test_a_pipeline_reads_the_stored_embeddings(tmp_path: Path) -> None:
    """A real tiny CLIP scores a pool once; adding the heads computes only the heads (CLIP
    reused, not even run), and their columns equal the heads applied to the stored float16
    embeddings."""
    from curate.config import pipeline_from_dict
    from curate.runner import score as score_store
    from curate.runner import select

    for n in range(2):
        members = []
        for i in range(5):
            members += [(f"{n}{i:03d}.jpg", jpeg(64, 48, (40 * i, 200 - 30 * n, 90))),
                        (f"{n}{i:03d}.txt", f"a photo number {i} of shard {n}".encode())]
        members += [(f"{n}999.jpg", b"not a jpeg"), (f"{n}999.txt", b"broken")]
        write_tar(tmp_path / "pool" / f"{n:05d}.tar", members)
    v2_weights(tmp_path / "aes.pth", dim=256)  # curate-tiny's embeddings are 256 wide
    clip = {"clip": {"model": "curate-tiny", "pretrained": None, "name": "l14", "cpus": 1,
                     "gpus": 0}}
    head = {"aesthetic": {"weights": str(tmp_path / "aes.pth"), "any_model": True}}

    def pipeline(scorers: list[Any]) -> Any:
        return pipeline_from_dict({"name": "p", "input": {"shards": str(tmp_path / "pool" /
                                                                        "*.tar")},
                                   "score": scorers, "select": [],
                                   "output": {"write_shards": False}})

    store = tmp_path / "store"
    first = score_store(pipeline([clip]), store, local=True, progress=False)
    assert first.scorers["clip_l14"].computed == 2
    second = score_store(pipeline([clip, head]), store, local=True, progress=False)
    assert (second.scorers["clip_l14"].computed, second.scorers["clip_l14"].reused) == (0, 2)
    assert second.scorers["clip_l14"].samples == 0  # no CLIP forward pass at all
    assert second.scorers["aesthetic"].computed == 2
    sel = select(store, pipeline([clip, head]), tmp_path / "sel", progress=False)
    rows = pq.read_table(sel.dir / "manifest").to_pylist()
    torch.manual_seed(0)
    ref = AuthorsMLP(256).eval()
    ref.load_state_dict(torch.load(tmp_path / "aes.pth"))
    checked = 0
    for r in rows:
        if r["key"].endswith("999"):  # CLIP could not read it: the head skips it
            assert r["aesthetic_score"] is None
            continue
        [npy] = (store / "scores" / "clip_l14").glob(
            f"*/clip_image_emb_l14/{r['shard'][:-4]}.*.npy")
        x = np.load(npy)[r["index"]]
        assert x.dtype == np.float16
        with torch.no_grad():
            want = float(ref(torch.from_numpy(authors_normalized(x.astype(np.float32)[None])))[0,
                                                                                              0])
        assert r["aesthetic_score"] == pytest.approx(want, abs=1e-6)
        checked += 1
    assert checked == 10


@pytest.mark.gpu
def test_on_a_gpu_the_scores_are_the_cpu_scores(tmp_path: Path) -> None:
    v2_weights(tmp_path / "w.pth")
    emb = embeddings(500)
    cpu = run(Aesthetic(AestheticParams(weights=str(tmp_path / "w.pth"))), emb)
    gpu = Aesthetic(AestheticParams(weights=str(tmp_path / "w.pth"), gpus=1))
    gpu.device = "cuda"
    np.testing.assert_allclose(run(gpu, emb), cpu, rtol=0, atol=1e-3)  # TF32 matmuls allowed


def test_pipeline_validation_refuses_another_clip_model(tmp_path: Path) -> None:
    """``curate.config.check_scorers`` passes each scorer its inputs' producers
    (``check_producers``): a pipeline is refused before any work."""
    from curate import config

    v2_weights(tmp_path / "w.pth")

    def pipeline(clip: dict[str, Any], **head: Any) -> Any:
        return config.pipeline_from_dict({
            "input": {"shards": str(tmp_path / "*.tar")}, "select": [],
            "score": [{"clip": {"name": "l14", **clip}},
                      {"aesthetic": {"weights": str(tmp_path / "w.pth"), **head}}]})

    pipeline({"model": "ViT-L-14", "pretrained": "openai"})
    with pytest.raises(config.ConfigError, match=r"score\[1\] \(scorer aesthetic\).*trained on "
                       r"ViT-L-14/openai image embeddings"):
        pipeline({"model": "ViT-L-14", "pretrained": "laion2b_s32b_b82k"})
    pipeline({"model": "ViT-L-14", "pretrained": "laion2b_s32b_b82k"}, any_model=True)
    with pytest.raises(config.ConfigError, match="has 512 dimensions"):
        pipeline({"model": "ViT-B-32", "pretrained": "openai"}, any_model=True)
