from __future__ import annotations

import pytest
from stagetest import score

from curate.errors import CurateError
from curate.stages.language import Language, LanguageParams


def test_detects_languages_with_bundled_model() -> None:
    rows = [{"caption": "a photograph of a dog running on the beach at sunset"},
            {"caption": "ein Hund läuft bei Sonnenuntergang am Strand entlang"},
            {"caption": "un chien qui court sur la plage au coucher du soleil"},
            {"caption": "un perro corriendo en la playa al atardecer"},
            {"caption": "  "}, {"caption": None},
            {"caption": "multi\nline caption about a cat\nsleeping on a sofa"}]
    out, errors = score(Language(), rows)
    assert [r["lang"] for r in out] == ["en", "de", "fr", "es", None, None, "en"]
    assert 0.5 < out[0]["lang_score"] <= 1.0
    assert all(s is None for s in errors.stage)


def test_missing_model_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CurateError, match="not found"):
        Language(LanguageParams(model_path=str(tmp_path / "none.ftz"))).setup()


SPACES = [" ", " ", " ", "\xa0", "\u2003", "\u3000", "\u2009", "\t", "\n", "\r\n", "  "]
WORDS = ("a red circle on blue background photo of the cat sleeping sofa dog beach at sunset "
         "ein Hund am Strand le chat sur la plage el perro en la playa").split()


def test_text_given_to_fasttext_is_datacomps() -> None:
    """DataComp predicts on ``text.replace("\\n", " ")`` and nothing else; Unicode spaces stay.
    Written from that rule, on 3,000 captions with mixed separators, every decision and score
    must equal the model's on DataComp's text."""
    import random

    import fasttext

    from curate.stages.language import bundled_model_path

    rng = random.Random(0)
    captions = []
    for _ in range(3000):
        n = rng.randint(1, 9)
        parts = [rng.choice(WORDS) + rng.choice(SPACES) for _ in range(n)]
        captions.append("".join(parts).rstrip(" ") or "x")
    captions[0] = "a\xa0red\xa0circle\xa0on\xa0a\xa0blue\xa0background"  # the example
    model = fasttext.load_model(str(bundled_model_path()))
    expected = []
    for c in captions:
        labels, probs = model.predict(c.replace("\n", " "))
        expected.append((labels[0].removeprefix("__label__"), min(1.0, float(probs[0]))))
    out, _ = score(Language(), [{"caption": c} for c in captions])
    got = [(r["lang"], r["lang_score"]) for r in out]
    assert [g[0] for g in got] == [e[0] for e in expected]
    assert all(abs(g[1] - e[1]) < 1e-6 for g, e in zip(got, expected, strict=True))
    assert got[0][0] == "ca"  # NBSP is not read as a space: DataComp says ca, not en
    # and the collapsed text would have changed some decisions
    collapsed = [model.predict(" ".join(c.split()))[0][0].removeprefix("__label__")
                 for c in captions]
    assert sum(a != e[0] for a, e in zip(collapsed, expected, strict=True)) > 0
