"""Bad inputs are recorded with a reason (the run goes on) or rejected up front with one clear
line (bad pipelines), never a crash or a silent drop."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from conftest import REPO, curate_cli, demo_pipeline
from shardmaker import clean_shard, jpeg, sample_members, write_tar

from curate.runner import run


@pytest.fixture(scope="module")
def bad_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pool = tmp_path_factory.mktemp("bad") / "pool"
    good = jpeg(320, 240)
    write_tar(pool / "00000.tar",
              sample_members("ok1", jpeg(330, 240, (1, 2, 3)),
                             "a clean photo of a red barn in a field")
              + sample_members("corrupt", good[: len(good) // 3], "a corrupt jpeg of a red barn")
              + sample_members("notutf8", jpeg(340, 240, (9, 9, 9)),
                               b"a caption with \xff\xfe bytes in it")
              + sample_members("nocaption", jpeg(350, 240, (7, 7, 7)), None)
              + sample_members("noimage", None, "a sample with a caption but without an image")
              + sample_members("badjson", jpeg(360, 240, (5, 5, 5)),
                               "a photo of a blue boat on a lake", b"{oops")
              + sample_members("zero", b"", "a zero byte image file of a dog on grass"))
    path = clean_shard(pool / "00001.tar", 6, prefix="t")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.55)])  # truncated tar
    clean_shard(pool / "00002.tar", 3, prefix="c", start=10)  # images distinct from 00001
    return pool


def test_bad_samples_are_recorded_and_the_run_continues(bad_pool: Path, tmp_path: Path,
                                                        ray_local: None) -> None:
    result = run(demo_pipeline(bad_pool), tmp_path / "run", progress=False)
    con = duckdb.connect()
    rows = {r[0]: r[1:] for r in con.execute(f"""
        SELECT key, reason, error FROM '{result.dir}/manifest/*.parquet'
        WHERE shard = '00000.tar'""").fetchall()}
    assert rows["ok1"][0] is None
    assert rows["corrupt"][0] == "error:image_info"
    assert rows["notutf8"][0] == "error:read" and "not valid UTF-8" in rows["notutf8"][1]
    assert rows["nocaption"][0] == "caption_too_short"
    assert rows["noimage"][0] == "error:read" and "no image member" in rows["noimage"][1]
    assert rows["badjson"][0] == "error:read" and "JSON" in rows["badjson"][1]
    assert rows["zero"][0] == "error:image_info" and "0 bytes" in rows["zero"][1]
    shards = dict(con.execute(f"""SELECT shard, status FROM '{result.dir}/shards.parquet'
        """).fetchall())
    assert shards == {"00000.tar": "done", "00001.tar": "truncated", "00002.tar": "done"}
    truncated = con.execute(f"""SELECT count(*), count(*) FILTER (WHERE reason IS NULL)
        FROM '{result.dir}/manifest/*.parquet' WHERE shard = '00001.tar'""").fetchone()
    assert truncated is not None and 2 <= truncated[0] < 6 and truncated[1] == truncated[0] - 1
    assert result.kept == 1 + truncated[1] + 3


BAD_PIPELINES = {
    "unknown stage": ("score:\n  - image_info\n  - clipp\n",
                      "score[1]: unknown scorer 'clipp'"),
    "bad parameter": ("score:\n  - image_info: {max_pixel: 5}\n",
                      "score[0] (scorer image_info): max_pixel: unknown key"),
    "bad value": ("score:\n  - image_info: {max_pixels: -1}\n",
                  "max_pixels: Input should be greater than 0"),
    "unknown top-level key": ("score: [image_info]\nouptut: {}\n", "ouptut: unknown key"),
    "rule on a missing column": ("score: [image_info]\nselect:\n  - preset: datacomp_basic\n",
                                 "caption_chars"),
    "unknown preset": ("score: [image_info]\nselect:\n  - preset: datacomp\n",
                       "unknown preset 'datacomp'"),
    "not yaml": ("score: [image_info\n", "not valid YAML at line 4, column 8: this '[' list "
                 "is never closed", "line 4 is: score: [image_info"),
    "glued list items": ("score:\n  - image_info\n    - caption_stats\n",
                         "line 6, column 5: the list item '- caption_stats' is indented deeper "
                         "than the item '- image_info' above it, so YAML reads the two as one "
                         "text, 'image_info - caption_stats'",
                         "give every `- ` of one list the same indentation"),
    "colon in a value": ("description: filters: many\nscore: [image_info]\n",
                         "not valid YAML at line 4, column 21: a ':' where no key can begin",
                         "line 4 is: description: filters: many"),
    "tab": ("score:\n\t- image_info\n", "line 5, column 1: a tab character: YAML indents "
            "with spaces only", None),
    "preset typo": ("score: [image_info]\nselect:\n  - preset: datacomp_basc\n",
                    "unknown preset 'datacomp_basc'", "did you mean 'datacomp_basic'?"),
    "several bad parameters": ("score:\n  - image_info: {max_pixels: -1, max_pixel: 5, batch: 3}\n",
                               "score[0] (scorer image_info): max_pixel: unknown key; batch: "
                               "unknown key; max_pixels: Input should be greater than 0", None),
    "misspelled column": ("score: [image_info, caption_stats]\nselect:\n  - rule: threshold\n"
                          "    column: caption_word\n    gt: 2\n    reason: short\n",
                          'not found in FROM clause! Candidate bindings: "caption_words"', None),
    "threshold on text": ("score: [image_info, language]\nselect:\n  - rule: threshold\n"
                          "    column: lang\n    min: 0.5\n    reason: r\n",
                          "select[0] (rule threshold, reason r): column 'lang' is text (a "
                          "string column), and threshold compares it with numbers",
                          "`rule: in_set` (column: lang, values: [...])"),
    "top_fraction on text": ("score: [image_info, language]\nselect:\n  - rule: top_fraction\n"
                             "    column: lang\n    fraction: 0.5\n    reason: r\n",
                             "column 'lang' is text (a string column), and top_fraction "
                             "compares it with numbers", None),
    "rule without reason": ("score: [image_info]\nselect:\n  - rule: threshold\n"
                            "    column: width\n    min: 10\n",
                            "select[0] (rule threshold): no `reason:`; every rule names the "
                            "reason its drops get", "e.g. `reason: width_out_of_range`"),
    "wrong type": ("score: [image_info]\nrun: {batch_size: big}\n",
                   "run.batch_size: Input should be a valid integer"),
    "nested unknown key": ("  download: {timeot: 3}\nscore: [image_info]\n",  # inside input:
                           "input.download.timeot: unknown key"),
    "duplicate key": ("score: [image_info]\nrun:\n  batch_size: 4\n  batch_size: 8\n",
                      "line 7, column 3: key 'batch_size' is given twice in one mapping"),
    "python tag": ("score: [image_info]\n"
                   "description: !!python/object/apply:os.system [\"echo pwned\"]\n",
                   "tag !!python/object/apply:os.system is not allowed"),
    "alias bomb": ("score: [image_info]\nx0: &x0 [a, a, a, a, a, a, a, a, a, a]\n" + "".join(
        f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 10)}]\n" for i in range(1, 6)),
                   "expands to more than 100000 values"),
}


@pytest.mark.parametrize("case", sorted(BAD_PIPELINES))
def test_bad_pipeline_is_one_clear_line(case: str, tmp_path: Path) -> None:
    body, expected, *hint = BAD_PIPELINES[case]
    path = tmp_path / "p.yaml"
    path.write_text(f"name: bad\ninput:\n  shards: {REPO}/pipelines/*.yaml\n{body}")
    res = curate_cli("run", str(path), "--out", str(tmp_path / "run"))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and expected in lines[0], res.stderr
    assert "Traceback" not in res.stderr and len(lines) <= 2
    if hint and hint[0]:
        assert lines[1].startswith("hint: ") and hint[0] in lines[1], res.stderr
    assert not (tmp_path / "run").exists()  # rejected before any work


def test_missing_input_is_rejected_before_work(tmp_path: Path) -> None:
    res = curate_cli("run", str(REPO / "pipelines" / "basic.yaml"), "--out", str(tmp_path / "r"),
                     "--input", str(tmp_path / "nowhere" / "{00000..00003}.tar"))
    assert res.returncode == 2
    assert "does not exist" in res.stderr and "hint:" in res.stderr
    assert not (tmp_path / "r").exists()
