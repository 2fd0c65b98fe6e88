"""The tiny captioners built offline and the transformers caption backend on them: the demo BLIP
saves and loads back through AutoProcessor + AutoModelForImageTextToText, its trained captions
are well-formed demo captions; a LLaVA-style chat model gets the prompt as a chat message with
the image; per-request seeds make captions independent of batching; a broken image fails
alone; validation of synthetic captions."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from curate.errors import CurateError
from curate.recaption.backend_transformers import TransformersCaptionBackend, load_captioner
from curate.recaption.config import RecaptionConfig
from curate.rewrite.backends import GenRequest
from curate.rewrite.validate import caption_rejection


def _scene_jpegs(n: int, seed: int = 3) -> list[bytes]:
    import random

    from curate.demo import generator as g

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        g._render_scene(rng, g._random_scene(rng), 160, 120).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def _backend(model: Path, **cfg: object) -> TransformersCaptionBackend:
    b = TransformersCaptionBackend(RecaptionConfig(backend="transformers", model=str(model),
                                                   **cfg), "cpu")
    b.setup()
    return b


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from curate.demo.captioner import make_tiny_llava

    return make_tiny_llava(tmp_path_factory.mktemp("llava") / "llava")


def test_demo_captioner_loads_like_a_hub_model(random_captioner: Path) -> None:
    processor, model = load_captioner(str(random_captioner), None, None)
    assert type(model).__name__ == "BlipForConditionalGeneration"
    assert type(processor).__name__ == "BlipProcessor"
    ids = processor.tokenizer("two red circles on a white background")["input_ids"]
    assert processor.tokenizer.unk_token_id not in ids  # the demo's words are in the vocab


def test_seeds_not_batching(random_captioner: Path) -> None:
    b = _backend(random_captioner, sampling={"temperature": 1.0, "top_p": 0.95,
                                             "max_tokens": 10})
    assert b.format == "plain"
    reqs = [GenRequest("", seed=100 + i, image=im) for i, im in enumerate(_scene_jpegs(5))]
    together = [r.text for r in b.generate(reqs)]
    alone = [b.generate([r])[0].text for r in reqs]
    reordered = [r.text for r in b.generate(reqs[::-1])][::-1]
    assert together == alone == reordered
    assert all(r.error is None for r in b.generate(reqs))


def test_a_broken_image_fails_alone(random_captioner: Path) -> None:
    b = _backend(random_captioner, sampling={"max_tokens": 6})
    good = _scene_jpegs(2)
    out = b.generate([GenRequest("", 1, good[0]), GenRequest("", 2, b"\xff\xd8garbage"),
                      GenRequest("", 3, None), GenRequest("", 4, good[1])])
    assert out[0].error is None and out[3].error is None
    assert out[1].text is None and out[1].error and out[1].error.startswith("image:")
    assert out[2].text is None and "empty image" in (out[2].error or "")


def test_trained_captioner_writes_demo_captions(trained_captioner: Path) -> None:
    b = _backend(trained_captioner)
    results = b.generate([GenRequest("", seed=i, image=im)
                          for i, im in enumerate(_scene_jpegs(8))])
    texts = [r.text for r in results]
    ok = [t for t in texts if caption_rejection(t, min_words=3) is None]
    assert len(ok) >= 6, texts
    assert sum("background" in (t or "") for t in texts) >= 6  # the scenes' vocabulary


def test_chat_model_gets_prompt_and_image(tiny_llava: Path) -> None:
    b = _backend(tiny_llava, prompt="Describe this image in one sentence.",
                 sampling={"max_tokens": 8})
    assert b.format == "chat"
    text = b.prompt_text()
    assert text is not None and "<image>" in text and "describe this image" in text.lower()
    reqs = [GenRequest("", seed=i, image=im) for i, im in enumerate(_scene_jpegs(4))]
    together = [r.text for r in b.generate(reqs)]
    assert all(t for t in together)
    assert [b.generate([r])[0].text for r in reqs] == together  # left padding, own seeds


def test_plain_model_refuses_chat(random_captioner: Path) -> None:
    with pytest.raises(CurateError, match="no chat template"):
        _backend(random_captioner, prompt_format="chat")


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CurateError, match="could not be loaded"):
        _backend(tmp_path / "nope")


def test_caption_validation() -> None:
    ok = "a red circle on a white background"
    assert caption_rejection(ok) is None
    assert caption_rejection("") == "empty"
    assert caption_rejection("a cat") == "too_short"
    assert caption_rejection(" ".join(["word"] * 3 + ["x"])) == "repeated_tokens"
    assert caption_rejection("a " * 70 + "cat", max_words=60) == "too_long"
    assert caption_rejection("describe this image in one sentence: a red circle",
                             "Describe this image in one sentence.") == "prompt_echo"
    assert caption_rejection("qzx vbnm wrtp klmj") == "not_words"
    assert caption_rejection("a red \x00 circle here") == "malformed"
    assert caption_rejection(ok, lang_of=lambda _: "de") == "not_english"
