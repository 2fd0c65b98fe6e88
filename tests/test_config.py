"""Pipeline validation: everything wrong is found before any work, with its location."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import REPO

from curate.config import load_pipeline, load_selection, pipeline_from_dict
from curate.errors import ConfigError


def base(**kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"name": "t", "input": {"shards": "x/*.tar"},
                         "score": ["image_info", "caption_stats", "language", "exact_hash"]}
    d.update(kw)
    return d


def test_shipped_pipelines_validate(tmp_path: Any, monkeypatch: Any) -> None:
    from clipfixtures import random_clip_dir

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="model directory 'demo/filter' does not exist"):
        load_pipeline(REPO / "pipelines" / "demo.yaml")
    random_clip_dir(tmp_path / "demo" / "filter")  # what `make demo` trains first
    for path in sorted((REPO / "pipelines").glob("*.yaml")):
        load_pipeline(path)
        load_selection(path)  # a pipeline is also a selection (of its own scorers)
    for path in sorted((REPO / "pipelines" / "selections").glob("*.yaml")):
        sel = load_selection(path)
        assert sel.scorers is None and sel.select


def test_presets_expand_into_rules_in_order() -> None:
    p = pipeline_from_dict(base(select=[{"preset": "datacomp_basic"},
                                        {"selector": "exact_dedup"}]))
    assert [s.stage.label for s in p.select] == [
        "caption_too_short", "caption_too_few_words", "not_english", "image_too_small",
        "aspect_ratio_too_extreme", "exact_dedup"]


@pytest.mark.parametrize(("data", "message", "hint"), [
    (base(score=["image_info", "languag"]), "score[1]: unknown scorer 'languag'",
     "did you mean 'language'?"),
    (base(select=[{"rule": "threshold", "column": "width"}]), "give at least one of", None),
    (base(select=[{"rule": "threshold", "colum": "width", "min": 1}]), "colum: unknown key",
     "did you mean 'column'?"),
    (base(select=[{"rule": "sql", "keep": "nonexistent > 1", "reason": "r"}]),
     "select[0] (rule sql, reason r)", None),
    (base(score=["caption_stats"], select=[{"rule": "threshold", "column": "width", "min": 1,
                                            "reason": "narrow"}]),
     "width", "scorer 'image_info' produces 'width'"),
    (base(select=[{"selector": "exact_dedup"}], score=["image_info"]),
     "needs column 'url_caption_sha256'", "exact_hash"),
    (base(score=["image_info", "image_info"]), "already produced by image_info", None),
    (base(select=[{"rule": "in_set", "column": "lang", "values": ["en"], "reason": "x"},
                  {"rule": "in_set", "column": "lang", "values": ["de"], "reason": "x"}]),
     "drop reason 'x' is already used", None),
    (base(select=[{"rule": "threshold", "preset": "x"}]), "give exactly one of", None),
    (base(input={"shards": "a", "urls": "b"}), "exactly one of 'shards'", None),
    (base(run={"workers": 0}), "run.workers", None),
    (base(score=[]), "score", None),
])
def test_errors_name_the_place(data: dict[str, Any], message: str, hint: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        pipeline_from_dict(data)
    assert message in info.value.message
    if hint:
        assert info.value.hint is not None and hint in info.value.hint


def test_missing_file_lists_known_pipelines(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError) as info:
        load_pipeline("pipelines/dmeo.yaml")
    assert info.value.hint is not None and "demo.yaml" in info.value.hint


def test_readme_pipeline_example_validates() -> None:
    import re

    import yaml

    from curate.config import pipeline_from_dict

    text = (REPO / "README.md").read_text()
    block = re.search(r"```yaml\n(name: demo\n.*?)```", text, re.S)
    assert block is not None
    pipeline_from_dict(yaml.safe_load(block.group(1)))


def test_missing_column_hint_is_cheap() -> None:
    """The hint naming the scorer that makes a missing column does not load open_clip (the
    clip scorer's embedding width would): in a fresh process, no open_clip import."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from curate.config import _who_makes\n"
            "print(_who_makes('clip_image_emb_l14'))\n"
            "print('open_clip' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    assert out == ["None", "False"]  # a suffixed column: no scorer makes it by default
    out2 = subprocess.run([sys.executable, "-c", code.replace("_l14", "")], capture_output=True,
                          text=True, timeout=120, check=True).stdout.splitlines()
    assert out2 == ["scorer 'clip' produces 'clip_image_emb': add it to `score:`", "False"]
