"""The watermark scorer (LAION-5B's ``pwatermark``) against the published recipe, its weights
(local, hub, missing, wrong) and its failures, alone and in a pipeline run through Ray.

The weights are seeded random ones in the authors' format (the state dict of timm's
``efficientnet_b3a`` with the replaced classifier, saved by ``torch.save``). A freshly built
network gives ~0.503 on every image (its batch-norm statistics do not fit its activations), so
the fixture first sets those statistics from a pass over other photos and spreads the last
layer, making the probabilities differ between images: a wrong input would then show.
"""

from __future__ import annotations

import io
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from clipfixtures import big_photos
from hubcache import put_in_hub_cache
from PIL import Image
from shardmaker import sample_members, write_tar
from stagetest import score

from curate.errors import CurateError
from curate.stages.watermark import DEFAULT_WEIGHTS, Watermark, WatermarkParams, load_model

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def photos() -> list[bytes]:
    """Three photos as web JPEGs, a greyscale JPEG, an RGBA PNG, a small (upscaled) JPEG."""
    from skimage import data

    rgba = np.dstack([data.chelsea(), np.full(data.chelsea().shape[:2], 180, np.uint8)])
    return [*big_photos(3), _encode(Image.fromarray(data.camera()), "JPEG", quality=90),
            _encode(Image.fromarray(rgba), "PNG"),
            _encode(Image.fromarray(data.coffee()).resize((120, 80)), "JPEG")]


IMAGES = photos()


def _torch_vision() -> tuple[Any, Any, Any]:
    from curate.lib.torch_compat import ensure_torchvision

    ensure_torchvision()
    import timm
    import torch
    from torchvision import transforms

    return torch, timm, transforms


def published_model() -> Any:
    """The network as LAION's example_use.py and inference.py build it."""
    torch, timm, _ = _torch_vision()
    nn = torch.nn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm >= 0.9: "efficientnet_b3a" is efficientnet_b3
        model = timm.create_model("efficientnet_b3a", pretrained=False, num_classes=2)
    model.classifier = nn.Sequential(
        nn.Linear(in_features=1536, out_features=625), nn.ReLU(), nn.Dropout(p=0.3),
        nn.Linear(in_features=625, out_features=256), nn.ReLU(),
        nn.Linear(in_features=256, out_features=2))
    return model


def preprocessing() -> Any:
    _, _, T = _torch_vision()
    return T.Compose([T.Resize((256, 256)), T.ToTensor(), T.Normalize(MEAN, STD)])


def random_weights(path: Path, seed: int = 0) -> Path:
    """Seeded random weights, made to tell images apart (see the module docs), saved as the
    authors' release is: ``torch.save(model.state_dict())``."""
    torch, _, _ = _torch_vision()
    from skimage import data

    torch.manual_seed(seed)
    model = published_model()
    prep = preprocessing()
    calib = torch.stack([prep(Image.fromarray(a).convert("RGB")) for a in (
        data.hubble_deep_field(), data.immunohistochemistry(), data.coffee())])
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # running statistics = the mean over the pass
            m.reset_running_stats()
    with torch.no_grad():
        model(calib)
        model.eval()
        hidden = model.classifier[:5](model.forward_head(model.forward_features(calib),
                                                         pre_logits=True))
        last = model.classifier[5]
        diff = hidden @ (last.weight[0] - last.weight[1])  # logit 0 - logit 1, without bias
        last.weight.mul_(1.0 / diff.std())
        shift = (diff / diff.std()).mean()
        last.bias.copy_(torch.stack([-shift / 2, shift / 2]))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def reference(weights: Path, images: list[bytes], convert: bool = True) -> np.ndarray:
    """The published recipe on PIL images: the state dict loaded strictly, the transforms,
    softmax(logits)[:, 0]."""
    torch, _, _ = _torch_vision()
    model = published_model()
    model.load_state_dict(torch.load(weights))
    model.eval()
    prep = preprocessing()
    ims = [Image.open(io.BytesIO(b)) for b in images]
    batch = torch.stack([prep(im.convert("RGB") if convert else im) for im in ims])
    with torch.no_grad():
        return torch.nn.functional.softmax(model(batch), dim=1)[:, 0].numpy()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_weights(tmp_path_factory.mktemp("watermark") / "watermark_model_v1.pt")


@pytest.fixture(scope="module")
def expected(weights: Path) -> np.ndarray:
    return reference(weights, IMAGES)


def scorer(weights: str | Path, **kw: Any) -> Watermark:
    return Watermark(WatermarkParams(weights=str(weights), cpus=2, **kw))


def test_matches_the_published_recipe(weights: Path, expected: np.ndarray) -> None:
    out, errors = score(scorer(weights, batch_size=3), [{"image": b} for b in IMAGES])
    assert errors.stage == [None] * len(IMAGES)
    got = np.array([r["pwatermark"] for r in out], dtype=np.float64)
    assert np.abs(got - expected).max() < 1e-5, (got, expected)
    # The weights tell the images apart, so a wrong input or recipe would show.
    assert expected.max() - expected.min() > 0.3 and np.ptp(expected[:3]) > 0.1, expected


def test_the_laion5b_run_decoded_rgb_images_the_same_and_failed_the_others() -> None:
    """data.py fed Image.open to the transforms without convert('RGB'): the same tensors for
    RGB JPEGs; a greyscale or RGBA image raised there (no score), we convert it."""
    torch, _, _ = _torch_vision()
    prep = preprocessing()
    for b in IMAGES[:3] + IMAGES[5:]:
        im = Image.open(io.BytesIO(b))
        assert im.mode == "RGB"
        assert torch.equal(prep(im), prep(im.convert("RGB")))
    for b in IMAGES[3:5]:
        with pytest.raises(RuntimeError):
            prep(Image.open(io.BytesIO(b)))


def test_a_bad_image_fails_alone(weights: Path, expected: np.ndarray) -> None:
    from shardmaker import jpeg

    truncated = IMAGES[0][: len(IMAGES[0]) // 3]
    big = jpeg(1500, 1000)
    rows = [{"image": IMAGES[1]}, {"image": b"<html>not found</html>"}, {"image": truncated},
            {"image": big}, {"image": b""}, {"image": IMAGES[2]}]
    out, errors = score(scorer(weights, batch_size=4, max_pixels=1_000_000), rows)
    assert errors.stage == [None, "watermark", "watermark", "watermark", "watermark", None]
    assert "looks like HTML" in (errors.message[1] or "")
    assert "truncated" in (errors.message[2] or "")
    assert "over max_pixels 1000000" in (errors.message[3] or "")
    assert [r["pwatermark"] is None for r in out] == [False, True, True, True, True, False]
    got = [out[0]["pwatermark"], out[5]["pwatermark"]]
    assert np.abs(np.array(got) - expected[[1, 2]]).max() < 1e-5


def test_weights_by_digest_from_a_file_the_hub_cache_or_a_wrapped_checkpoint(
        weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hub
    import torch

    local = scorer(weights)
    copy = shutil.copy(weights, tmp_path / "elsewhere.pth")
    assert scorer(copy).fingerprint() == local.fingerprint()  # the bytes, not the path
    other = torch.load(weights)
    other["classifier.5.bias"] += 1.0
    torch.save(other, tmp_path / "other.pt")
    assert scorer(tmp_path / "other.pt").fingerprint() != local.fingerprint()
    assert scorer(weights, batch_size=7).fingerprint() != local.fingerprint()

    # The checkpoint layout the authors' inference.py reads: {"weights": state_dict}.
    torch.save({"weights": torch.load(weights)}, tmp_path / "wrapped.pt")
    a, b = load_model(weights).state_dict(), load_model(tmp_path / "wrapped.pt").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # A hub name, offline, from the Hugging Face cache: the same identity as the local file.
    snap = put_in_hub_cache(tmp_path / "hub", "someorg/watermark", "v1/watermark_model_v1.pt",
                            weights.read_bytes())
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    named = scorer("hf-hub:someorg/watermark/v1/watermark_model_v1.pt")
    assert named.params.weights == "hf-hub:someorg/watermark/v1/watermark_model_v1.pt"
    assert named.weights_path() == snap
    named.check()
    assert named.fingerprint() == local.fingerprint()
    with pytest.raises(CurateError, match=r"hf download someorg/watermark nope\.pt"):
        scorer("hf-hub:someorg/watermark/nope.pt").check()


def test_missing_weights_name_where_to_get_them(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CurateError) as info:
        scorer(tmp_path / "nope.pt").fingerprint()
    assert info.value.message == f"no watermark weights file {str(tmp_path / 'nope.pt')!r}"
    assert "LAION-5B-WatermarkDetection" in (info.value.hint or "")
    assert "watermark_model_v1.pt" in (info.value.hint or "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = Watermark()
    assert default.params.weights == str(Path(DEFAULT_WEIGHTS).expanduser())
    with pytest.raises(CurateError, match=re.escape(str(tmp_path / "home" / ".cache"))):
        default.check()


def test_without_timm_the_error_says_what_to_install(weights: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(CurateError, match="needs timm") as info:
        scorer(weights).check()
    assert "pip install timm" in (info.value.hint or "")


def test_a_state_dict_of_another_model_is_a_clear_error(weights: Path, tmp_path: Path) -> None:
    torch, timm, _ = _torch_vision()
    # The likeliest mistake: timm's plain network (one Linear classifier), not the detector.
    plain = timm.create_model("efficientnet_b3", pretrained=False, num_classes=2)
    torch.save(plain.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CurateError) as info:
        scorer(tmp_path / "plain.pt").check()
    msg = info.value.message
    assert "do not fit LAION's watermark model" in msg
    assert "6 missing (classifier.0.weight, classifier.0.bias, classifier.3.weight, ...)" in msg
    assert "2 unexpected (classifier.weight, classifier.bias)" in msg
    # A resized layer.
    state = torch.load(weights)
    state["classifier.3.weight"] = state["classifier.3.weight"][:100]
    torch.save(state, tmp_path / "narrow.pt")
    with pytest.raises(CurateError, match=r"1 of another shape \(classifier.3.weight\)"):
        scorer(tmp_path / "narrow.pt").check()
    # Not a PyTorch file at all, and a pickle of something else.
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CurateError, match="are not a PyTorch state dict"):
        scorer(tmp_path / "junk.pt").check()
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CurateError, match="hold no state dict of tensors"):
        scorer(tmp_path / "list.pt").check()


def test_pipeline_run_through_ray(weights: Path, expected: np.ndarray, tmp_path: Path,
                                  ray_local: None) -> None:
    """Scored on a Ray worker; LAION-Aesthetics' watermark rule (pwatermark < 0.8) applied."""
    from curate.config import pipeline_from_dict
    from curate.runner import run

    picks = [1, 2, 4]
    members = [m for k, i in enumerate(picks) for m in sample_members(
        f"s{k}", IMAGES[i], f"photo {k}", ext="png" if i == 4 else "jpg")]
    members += sample_members("bad", b"\xff\xd8\xff\xe0 broken jpeg", "a broken image")
    write_tar(tmp_path / "pool" / "00000.tar", members)
    p = pipeline_from_dict({
        "input": {"shards": str(tmp_path / "pool" / "*.tar")},
        "score": [{"watermark": {"weights": str(weights), "cpus": 1, "batch_size": 2}}],
        "select": [{"rule": "threshold", "column": "pwatermark", "lt": 0.8,
                    "reason": "watermarked"}]})
    result = run(p, tmp_path / "run", progress=False)
    rows = {r["key"]: r for r in pq.read_table(result.dir / "manifest").to_pylist()}
    assert result.samples == 4
    for k, i in enumerate(picks):
        assert abs(rows[f"s{k}"]["pwatermark"] - expected[i]) < 1e-5
        assert rows[f"s{k}"]["kept"] == bool(expected[i] < 0.8)
        assert rows[f"s{k}"]["reason"] == (None if expected[i] < 0.8 else "watermarked")
    assert rows["bad"]["pwatermark"] is None and rows["bad"]["error_stage"] == "watermark"
    assert 0 < result.kept < 3, expected[picks]


def test_on_a_gpu_the_convolutions_run_without_tf32(weights: Path) -> None:
    """cuDNN's TF32 (on by default) is off during the forward pass and restored after."""
    import torch

    stage = scorer(weights)
    stage._torch = torch
    stage.device = "cuda"
    before = torch.backends.cudnn.allow_tf32
    with stage._fp32():
        assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is before


@pytest.mark.gpu
def test_gpu_fp32_matches_cpu(weights: Path, expected: np.ndarray) -> None:
    gpu = scorer(weights, batch_size=4)
    gpu.device = "cuda"
    out, errors = score(gpu, [{"image": b} for b in IMAGES])
    assert errors.stage == [None] * len(IMAGES)
    got = np.array([r["pwatermark"] for r in out], dtype=np.float64)
    assert np.abs(got - expected).max() < 1e-4
