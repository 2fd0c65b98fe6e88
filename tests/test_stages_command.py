"""``curate stages`` (issue 17, finding 4): aligned columns, whole first sentences without
reStructuredText markup, and ``curate stages NAME`` with parameters, columns and steps."""

from __future__ import annotations

import re

import pytest

from curate.cli import main
from curate.config import known_presets
from curate.stages.base import registered


def _stages(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["stages", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_the_listing_is_aligned_whole_and_plain(capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    rc, out, _ = _stages(capsys)
    assert rc == 0
    assert "``" not in out and "caption_complexitycaption" not in out
    names = {n for k in ("scorer", "rule", "selector") for n in registered(k)} | set(
        known_presets())
    entries: dict[str, str] = {}
    column = None
    current = None
    for line in out.splitlines():
        assert len(line) <= 100, line
        m = re.match(r"^  (\S+)( +)(\S.*)$", line)
        if re.fullmatch(r"\w+s:", line):  # a section: scorers, rules, selectors, presets
            column = current = None
        elif m and m.group(1) in names:
            start = 2 + len(m.group(1)) + len(m.group(2))
            assert column in (None, start), line  # a section's texts start in one column
            assert len(m.group(2)) >= 2, line  # never run into the name
            column = start
            current = m.group(1)
            entries[current] = m.group(3)
            continue
        if current and column and line.startswith(" " * column) and line.strip():
            entries[current] += " " + line.strip()  # a wrapped description continues there
        else:
            current = None
    assert set(entries) == names
    builtin = {n for k in ("scorer", "rule", "selector") for n, c in registered(k).items()
               if c.__module__.startswith("curate.")} | set(known_presets())
    for name in builtin:  # a whole sentence, not cut mid-way
        assert entries[name].endswith((".", "?")), (name, entries[name])
    assert entries["caption_complexity"] == ("Caption complexity and action, from a spaCy "
                                             "parse (DiHT CAT).")
    assert entries["embedding_head"].startswith("A small MLP over an embedding that another "
                                                "scorer stored (e.g. the CLIP image embedding)")
    assert entries["datacomp_basic"].startswith("DataComp \"basic filtering\" baseline")


def test_one_stage_in_full(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _stages(capsys, "threshold")
    assert rc == 0
    assert out.startswith("rule threshold (built in; curate.stages.threshold.Threshold, ")
    assert "``" not in out
    assert re.search(r"^  column +str +\(required\)", out, re.MULTILINE), out
    assert re.search(r"^  min +float \| None +None", out, re.MULTILINE), out
    assert "drop reason: the step's `reason:`" in out
    rc, out, _ = _stages(capsys, "caption_stats")
    assert "parameters: none" in out and "reads: caption" in out
    assert re.search(r"^  caption_words +int32$", out, re.MULTILINE), out
    rc, out, _ = _stages(capsys, "caption_complexity")
    assert re.search(r"^  max_chars +int +2000 +parse only this many characters", out,
                     re.MULTILINE), out
    rc, out, _ = _stages(capsys, "exact_dedup")
    assert "drop reasons: duplicate_image, duplicate_url_caption" in out
    assert re.search(r"^  duplicate_of +string", out, re.MULTILINE), out


def test_a_preset_in_full(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _stages(capsys, "tmars")
    assert rc == 0
    assert out.startswith("preset tmars (")
    assert "T-MARS (Maini et al., 2023)" in out
    assert "  column: 'clip_score_masked'" in out and "  fraction: 0.5" in out
    assert "  - rule: top_fraction" in out and "    column: ${column}" in out


def test_an_unknown_name_suggests_the_closest(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _stages(capsys, "caption_stat")
    assert rc == 2
    assert "error: no stage or preset is named 'caption_stat'" in err
    assert "did you mean 'caption_stats'" in err
