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
