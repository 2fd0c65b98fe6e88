"""Hostile inputs (issue 9): tar members named like paths, decompression bombs, images that are
not what their extension says, empty members, colliding keys and uids, 1 MB captions, NUL
bytes, pickles, and hostile pipeline files. Each is recorded with a reason or refused with one
clear line; nothing is written outside the run directory, and nothing of the input is executed
or unpickled."""

from __future__ import annotations

import ast
import io
import json
import random
import re
import string
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from clipfixtures import random_clip_dir
from conftest import REPO, curate_cli, demo_pipeline
from shardmaker import (
    HTML_PAGE,
    gif_claiming,
    jpeg,
    jpeg_claiming,
    link_member,
    npy_payload,
    pickle_payload,
    png,
    png_bomb,
    random_bytes,
    sample_members,
    write_tar,
)
from textimages import poster

from curate.config import pipeline_from_dict
from curate.runner import run
from curate.schema import BATCH_SCHEMA
from curate.stages.base import BatchErrors, Scorer, run_scorer, text_prefix

PATH_KEYS = ("../../escape", "/etc/curate_abs", "a/../../../curate_up")
BAD_UIDS = ("../../../../tmp/curate_evil_uid", 12345, "0123456789abcdef0123456789abcdeg",
            "0123456789abcdef0123456789abcdef0")
GOOD_UID = "0123456789abcdef0123456789abcdef"
UNSAFE_NAMES = ("escape", "curate_abs", "curate_up", "curate_evil_uid")
MEMBER_NAME = re.compile(r"[0-9a-f]{32}\.(jpg|png|gif|webp|txt|json)")
BOMB_REASON = re.compile(r"image is (\d+x\d+ = )?\d+ pixels, over max_pixels 89478485")


def _english(i: int) -> str:
    return f"a photograph of a small red house number {i} near the river"


def _big_caption() -> str:
    """Just over 1,000,000 characters of English words (spaCy refuses more than 1,000,000)."""
    words = ["the", "dog", "runs", "across", "green", "grass", "near", "an", "old", "red",
             "barn", "while", "children", "play", "in", "the", "morning", "sun"]
    out, n, i = [], 0, 0
    while n <= 1_000_010:  # n counts a space after the last word too
        w = words[i % len(words)]
        out.append(w)
        n += len(w) + 1
        i += 1
    return " ".join(out)


@dataclass
class Pool:
    root: Path
    pool: Path
    marker: Path  # created by anything that unpickles the pickle members
    big_caption: str
    expected: dict[tuple[str, int], str] = field(default_factory=dict)  # (shard, index) → key
    originals: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (key, ext) → bytes


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Pool:
    root = tmp_path_factory.mktemp("hostile")
    marker = root / "UNPICKLED"
    big = _big_caption()
    pool = Pool(root=root, pool=root / "pool", marker=marker, big_caption=big)
    colour = iter(range(1, 200))

    def photo() -> bytes:
        i = next(colour)
        return jpeg(300 + i, 240, (i * 37 % 255, i * 91 % 255, 120))

    samples: list[tuple[str, list[Any]]] = []  # (key, members)

    def add(key: str, members: list[Any]) -> None:
        samples.append((key, members))

    for i, (key, uid) in enumerate(zip(PATH_KEYS, BAD_UIDS, strict=False)):
        add(key, sample_members(key, photo(), _english(i), {"uid": uid, "url": f"u{i}"}))
    add("baduid", sample_members("baduid", photo(), _english(3), {"uid": BAD_UIDS[3]}))
    add("upper", sample_members("upper", photo(), _english(4),
                                {"uid": f" {GOOD_UID.upper()}\n"}))
    add("sameuid", sample_members("sameuid", photo(), _english(5), {"uid": GOOD_UID}))
    add("dup", sample_members("dup", photo(), _english(6)))
    add("dup", sample_members("dup", photo(), _english(7)))
    add("pngasjpg", sample_members("pngasjpg", png(330, 240), _english(8), ext="jpg"))
    add("html", sample_members("html", HTML_PAGE, _english(9), ext="jpg"))
    add("noise", sample_members("noise", random_bytes(4096), _english(10), ext="webp"))
    add("textpng", sample_members("textpng", b"just some words, no pixels\n", _english(11),
                                  ext="png"))
    add("zeroimg", sample_members("zeroimg", b"", _english(12)))
    add("zerocap", sample_members("zerocap", photo(), b""))
    add("zerojson", sample_members("zerojson", photo(), _english(13), b""))
    add("bigcap", sample_members("bigcap", poster(["SUMMER SALE", "50% OFF"]), big))
    add("nulcap", sample_members("nulcap", photo(),
                                 "a red barn\x00 standing in a green field at dawn"))
    add("nuljson", sample_members("nuljson", photo(), _english(14),
                                  b'{"url": "https://example.invalid/a\x00b"}'))
    add("nulurl", sample_members("nulurl", photo(), _english(15),
                                 {"url": "https://example.invalid/a\x00b"}))
    add("notutf8", sample_members("notutf8", photo(), b"a red barn \xff\xfe in a field"))
    add("pngbomb", sample_members("pngbomb", png_bomb(40000, 40000), _english(16), ext="png"))
    add("midbomb", sample_members("midbomb", png_bomb(12000, 12000), _english(17), ext="png"))
    add("jpgbomb", sample_members("jpgbomb", jpeg_claiming(65000, 65000), _english(18)))
    add("gifbomb", sample_members("gifbomb", gif_claiming(65535, 65535), _english(19),
                                  ext="gif"))
    pickles = [(f"pickles.{ext}", pickle_payload(marker)) for ext in ("pyd", "pickle", "pth")]
    add("pickles", [*sample_members("pickles", photo(), _english(20)), *pickles,
                    ("pickles.npy", npy_payload(marker))])
    add("link", [link_member("link.jpg", "/etc/passwd"), ("link.txt", b"a symlink")])
    add("hard", [link_member("hard.jpg", "../../escape.jpg", tarfile.LNKTYPE),
                 ("hard.txt", b"a hard link")])
    directory = tarfile.TarInfo("../../curate_dir")
    directory.type = tarfile.DIRTYPE
    members: list[Any] = [directory]
    for index, (key, ms) in enumerate(samples):
        pool.expected[("00000.tar", index)] = key
        members += ms
        for m in ms:
            if isinstance(m, tuple):
                pool.originals[(key, m[0].rsplit(".", 1)[1])] = m[1]
    write_tar(pool.pool / "00000.tar", members)
    # A second shard: the same key again, and a clean sample.
    write_tar(pool.pool / "00001.tar", sample_members("dup", photo(), _english(30))
              + sample_members("clean", photo(), _english(31)))
    pool.expected[("00001.tar", 0)] = "dup"
    pool.expected[("00001.tar", 1)] = "clean"
    # Proof that the payload works: unpickling it creates its file.
    import pickle

    control = root / "control"
    pickle.loads(pickle_payload(control))  # the test's own bytes, to show the marker is live
    assert control.exists()
    control.unlink()
    return pool


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def _selection(run_dir: Path) -> Path:
    from curate.audit.catalog import resolve_selection
    from curate.io.dataset import MANIFEST

    return resolve_selection(run_dir, MANIFEST)


def _manifest(run_dir: Path) -> dict[tuple[str, int], dict[str, Any]]:
    con = duckdb.connect()
    cur = con.execute(f"SELECT * FROM '{_selection(run_dir)}/manifest/*.parquet'")
    names = [d[0] for d in cur.description]
    return {(r["shard"], r["index"]): r for r in (dict(zip(names, row, strict=True))
                                                   for row in cur.fetchall())}


def _output(run_dir: Path) -> dict[str, dict[str, bytes]]:
    """uid → extension → bytes, over every output tar (asserting unique member names)."""
    out: dict[str, dict[str, bytes]] = {}
    for path in sorted((_selection(run_dir) / "output").rglob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                assert m.isfile() and MEMBER_NAME.fullmatch(m.name), m.name
                uid, ext = m.name.split(".", 1)
                assert ext not in out.setdefault(uid, {}), f"{m.name} twice"
                out[uid][ext] = tar.extractfile(m).read()  # type: ignore[union-attr]
    return out


def _assert_nothing_escaped(pool: Pool, before: set[str], run_dir: Path) -> None:
    new = _tree(pool.root) - before
    outside = sorted(p for p in new if not p.startswith(run_dir.name + "/") and p != run_dir.name)
    assert outside == [], outside
    assert not pool.marker.exists()
    for base in {pool.root, pool.pool, run_dir, run_dir / "output", REPO, REPO.parent,
                 Path("/"), Path("/etc"), Path("/tmp"), Path.cwd()}:
        for name in UNSAFE_NAMES:
            assert not list(base.glob(f"{name}*")), f"{base}/{name}* exists"
    names = {p.name for p in run_dir.rglob("*")}
    assert not any(n.startswith(UNSAFE_NAMES) for n in names)


# --------------------------------------------------------------------------------------------
# The basic pipeline (image_info first) over the hostile pool, output included.


@pytest.mark.slow
def test_basic_pipeline_records_every_hostile_sample(hostile: Pool, ray_local: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    work = hostile.root / "cwd" / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # a relative ../../x would land inside the tree we watch
    before = _tree(hostile.root)
    run_dir = hostile.root / "run_basic"
    run(demo_pipeline(hostile.pool, write_shards=True), run_dir, progress=False)
    _assert_nothing_escaped(hostile, before, run_dir)

    rows = _manifest(run_dir)
    assert set(rows) == set(hostile.expected)  # every sample, exactly once
    assert all(rows[k]["key"] == key for k, key in hostile.expected.items())
    assert all(re.fullmatch(r"[0-9a-f]{32}", r["uid"]) for r in rows.values())
    by_key: dict[str, list[dict[str, Any]]] = {}
    for k in sorted(rows):
        by_key.setdefault(rows[k]["key"], []).append(rows[k])
    one = {key: rs[0] for key, rs in by_key.items()}

    # 1. Path-like keys and unclean json uids: derived uids, kept, named by uid in the output.
    for key in (*PATH_KEYS, "baduid"):
        assert one[key]["reason"] is None, one[key]
        assert one[key]["uid"] not in {str(u) for u in BAD_UIDS}
    assert one["upper"]["uid"] == GOOD_UID and one["upper"]["reason"] is None
    assert one["sameuid"]["uid"] == GOOD_UID and one["sameuid"]["reason"] == "duplicate_uid"
    # 5. Colliding keys: all three samples named dup are kept, under distinct uids.
    assert [r["reason"] for r in by_key["dup"]] == [None, None, None]
    assert len({r["uid"] for r in by_key["dup"]}) == 3
    # 3. Content decides the format; what is no image says what it looks like.
    assert one["pngasjpg"]["reason"] is None and one["pngasjpg"]["image_format"] == "PNG"
    errors = {key: (r["reason"], r["error"]) for key, r in one.items() if r["error"]}
    assert errors["html"] == ("error:image_info",
                              "UnidentifiedImageError: not an image: looks like HTML")
    assert errors["textpng"][1].endswith("not an image: looks like text")
    assert "not an image: unknown format (first bytes" in errors["noise"][1]
    # 4. Empty members.
    assert errors["zeroimg"] == ("error:image_info", "ValueError: empty image member (0 bytes)")
    assert one["zerocap"]["caption"] == "" and one["zerocap"]["reason"] == "caption_too_short"
    assert errors["zerojson"] == ("error:read", "json member is empty (0 bytes)")
    # 6. The 1 MB caption: scored, kept, and its true length reported.
    assert one["bigcap"]["reason"] is None
    assert one["bigcap"]["caption_chars"] == len(hostile.big_caption) > 1_000_000
    # 7. NUL: kept in captions and escaped json strings; a raw NUL makes the json invalid.
    assert one["nulcap"]["reason"] is None and "\x00" in one["nulcap"]["caption"]
    assert one["nulurl"]["reason"] is None and one["nulurl"]["url"].endswith("a\x00b")
    assert errors["nuljson"][0] == "error:read" and "control character" in errors["nuljson"][1]
    assert errors["notutf8"][0] == "error:read" and "not valid UTF-8" in errors["notutf8"][1]
    # 2. Bombs: refused from their headers.
    for key in ("pngbomb", "midbomb", "jpgbomb", "gifbomb"):
        assert errors[key][0] == "error:image_info" and BOMB_REASON.search(errors[key][1]), \
            errors[key]
    assert "12000x12000 = 144000000 pixels" in errors["midbomb"][1]
    # Links are never followed: those samples have no image.
    for key in ("link", "hard"):
        assert errors[key][0] == "error:read" and "no image member" in errors[key][1]
    # 9a. Pickles travel as bytes and are never loaded; the other keys are all fine.
    assert one["pickles"]["reason"] is None
    assert set(errors) == {"html", "textpng", "noise", "zeroimg", "zerojson", "nuljson",
                           "notutf8", "pngbomb", "midbomb", "jpgbomb", "gifbomb", "link", "hard"}

    # The output: one sample per kept uid, member names made of the uid only, bytes untouched.
    out = _output(run_dir)
    kept = {r["uid"]: r for r in rows.values() if r["kept"]}
    assert set(out) == set(kept)
    assert not any(set(members) - {"jpg", "png", "txt", "json"} for members in out.values())
    by_uid = {r["uid"]: r["key"] for r in rows.values() if r["kept"]}
    png_uid = one["pngasjpg"]["uid"]
    assert out[png_uid]["jpg"] == hostile.originals[("pngasjpg", "jpg")]
    assert out[png_uid]["jpg"].startswith(b"\x89PNG")
    assert out[one["bigcap"]["uid"]]["txt"] == hostile.big_caption.encode()
    assert out[one["nulcap"]["uid"]]["txt"] == hostile.originals[("nulcap", "txt")]
    meta = json.loads(out[one["nulurl"]["uid"]]["json"])
    assert meta["url"].endswith("a\x00b") and meta["uid"] == one["nulurl"]["uid"]
    for uid, key in by_uid.items():
        assert json.loads(out[uid]["json"])["uid"] == uid
        if key not in ("dup", "clean", "bigcap"):
            assert out[uid]["txt"] == hostile.originals[(key, "txt")]


# --------------------------------------------------------------------------------------------
# Every image-decoding and caption stage, without image_info, over the same pool.


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_clip_dir(tmp_path_factory.mktemp("clip") / "tiny")


@pytest.mark.slow
def test_every_stage_survives_the_hostile_pool(hostile: Pool, tiny_clip: Path,
                                               ray_local: None) -> None:
    pipeline = pipeline_from_dict({
        "name": "hostile_full",
        "input": {"shards": str(hostile.pool / "*.tar")},
        "score": ["caption_stats", "language", "exact_hash", "metaclip_match",
                  "caption_complexity", "image_complexity", "ocr", "parrot",
                  {"clip": {"model": str(tiny_clip), "pretrained": None, "mask_text": True,
                            "batch_size": 16}}],
        "output": {"samples_per_shard": 10, "write_shards": True},
    })
    before = _tree(hostile.root)
    run_dir = hostile.root / "run_full"
    run(pipeline, run_dir, progress=False)
    _assert_nothing_escaped(hostile, before, run_dir)
    rows = _manifest(run_dir)
    assert set(rows) == set(hostile.expected)
    one = {r["key"]: r for _, r in sorted(rows.items(), reverse=True)}  # first of each key
    # The first decoding stage refuses bombs and non-images: image_info is not needed for that.
    for key in ("pngbomb", "midbomb", "jpgbomb", "gifbomb"):
        assert one[key]["reason"] == "error:image_complexity", one[key]
        assert BOMB_REASON.search(one[key]["error"]), one[key]["error"]
    assert one["html"]["error"].endswith("not an image: looks like HTML")
    # The 1 MB caption went through every caption stage, the OCR, parrot and CLIP.
    big = one["bigcap"]
    assert big["reason"] is None and big["error"] is None
    assert big["caption_chars"] == len(hostile.big_caption)
    assert big["lang"] == "en" and big["caption_relations"] > 0 and big["has_action"]
    assert big["metaclip_matches"] > 0 and big["ocr_text"] == "SUMMER SALE 50% OFF"
    assert big["parrot_word_overlap"] is not None and big["parrot_char_sim"] is not None
    assert big["clip_score"] is not None and big["clip_score_masked"] is not None
    nul = one["nulcap"]
    assert nul["reason"] is None and nul["clip_score"] is not None and nul["lang"] == "en"
    assert one["pickles"]["reason"] is None
    out = _output(run_dir)
    assert set(out) == {r["uid"] for r in rows.values() if r["kept"]}


# --------------------------------------------------------------------------------------------
# 2. Every decoder refuses a bomb from its header: the pixels are never decoded.


def _peak_reset() -> int | None:
    """Reset this process's peak RSS and return the current RSS in KiB (None: unsupported)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status("VmRSS")


def _status(field_name: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field_name}:\s+(\d+)", text).group(1))  # type: ignore[union-attr]


def _score_ready(scorer: Scorer, rows: list[dict[str, Any]]) -> BatchErrors:
    """Score ``rows`` with a scorer already set up (its model loading stays out of the peak)."""
    full = [{"uid": f"{i:032x}", "shard": "s.tar", "key": str(i), "index": i, "status": "ok",
             **r} for i, r in enumerate(rows)]
    batch = pa.Table.from_pylist(full, schema=BATCH_SCHEMA)
    errors = BatchErrors.from_batch(batch)
    run_scorer(scorer, batch, errors)
    return errors


@pytest.fixture(scope="module")
def rgb_bomb() -> bytes:
    """9000 x 9000 RGB, 0.2 MB as PNG: 243 MB once decoded."""
    return png_bomb(9000, 9000, rgb=True)


def test_every_decoder_refuses_bombs_before_decoding(rgb_bomb: bytes, tiny_clip: Path) -> None:
    from curate.audit.report import _thumbnail
    from curate.lib.imaging import FastPreprocess
    from curate.stages.clip import Clip, ClipParams
    from curate.stages.image_complexity import ImageComplexity, ImageComplexityParams
    from curate.stages.image_info import ImageInfo, ImageInfoParams
    from curate.stages.ocr import Ocr, OcrParams

    limit = 1_000_000
    stages: list[Scorer] = [
        ImageInfo(ImageInfoParams(max_pixels=limit)),
        ImageComplexity(ImageComplexityParams(max_pixels=limit)),
        Ocr(OcrParams(max_pixels=limit)),
        Clip(ClipParams(model=str(tiny_clip), pretrained=None, max_pixels=limit)),
    ]
    for stage in stages:  # set up and warm up: only the refusals are measured
        stage.setup()
        assert _score_ready(stage, [{"image": jpeg(), "caption": "a caption"}]).stage == [None]
    bombs = [rgb_bomb, png_bomb(40000, 40000), jpeg_claiming(65000, 65000),
             gif_claiming(65535, 65535)]
    rows = [{"image": b, "caption": "a caption"} for b in bombs]
    start = _peak_reset()
    if start is None:
        pytest.skip("this kernel cannot reset the peak RSS (/proc/self/clear_refs)")
    for stage in stages:
        errors = _score_ready(stage, rows)
        assert errors.stage == [stage.label] * 4
        assert "image is 9000x9000 = 81000000 pixels, over max_pixels 1000000" in \
            errors.message[0], errors.message[0]
        assert all(f"over max_pixels {limit}" in m for m in errors.message[1:]), errors.message
    prep = FastPreprocess(lambda im: im, (224, 224), max_pixels=limit)  # train-filter's path
    with pytest.raises(ValueError, match="over max_pixels"):
        prep(rgb_bomb)
    assert _thumbnail(bombs[1]) == "cannot decode: ValueError"  # the report's thumbnails
    grown_mib = (_status("VmHWM") - start) / 1024
    assert grown_mib < 64, f"peak RSS grew {grown_mib:.0f} MiB while refusing bombs"
    # The control: allowed, the same bytes really decode to a quarter of a gigabyte.
    _peak_reset()
    errors = _score_ready(ImageInfo(ImageInfoParams(max_pixels=100_000_000)), rows[:1])
    assert errors.stage == [None]
    assert (_status("VmHWM") - start) / 1024 > 200


def test_pixel_limit_is_validated() -> None:
    from pydantic import ValidationError

    from curate.lib.imaging import PILLOW_HARD_LIMIT
    from curate.stages.clip import ClipParams

    with pytest.raises(ValidationError, match="less than or equal to 178956970"):
        ClipParams(max_pixels=PILLOW_HARD_LIMIT + 1)


# --------------------------------------------------------------------------------------------
# 6. Work per caption is bounded where it grows faster than the caption.


def test_text_prefix_collapses_whitespace_and_cuts_at_a_word() -> None:
    assert text_prefix("  a  bb\n\tccc  ", 100) == "a bb ccc"
    assert text_prefix("  a  bb\n\tccc  ", 6) == "a bb"
    assert text_prefix("abcdefgh", 3) == "abc"  # one overlong word is cut inside
    assert text_prefix(None, 5) == "" and text_prefix("", 5) == ""
    assert text_prefix(" " * 1_000_000 + "word", 10) == "word"


def test_clip_tokens_of_the_prefix_are_those_of_the_whole_caption(tiny_clip: Path) -> None:
    from curate.stages.clip import CHARS_PER_TOKEN, Clip, ClipParams

    stage = Clip(ClipParams(model=str(tiny_clip), pretrained=None))
    stage.setup()
    tok = stage._tokenizer
    long = " ".join(_english(i) for i in range(100))  # 6,000 characters, far past 77 tokens
    assert (tok([text_prefix(long, CHARS_PER_TOKEN * 77)]) == tok([long])).all()
    # A 1 MB single word would cost CLIP's BPE hours (quadratic); the prefix bounds it.
    word = "".join(random.Random(0).choices(string.ascii_lowercase, k=1_000_000))
    errors = _score_ready(stage, [{"image": jpeg(), "caption": word},
                                  {"image": jpeg(), "caption": "ab\x00cd " * 200_000}])
    assert errors.stage == [None, None]


def test_caption_complexity_parses_a_bounded_prefix() -> None:
    from curate.stages.caption_complexity import CaptionComplexity

    stage = CaptionComplexity()
    stage.setup()
    big = _big_caption()  # over spaCy's 1,000,000-character limit
    out = stage.score_batch(pa.table({"caption": [big, text_prefix(big, 2000)]}))
    assert out["caption_relations"][0] == out["caption_relations"][1] > 0


def test_parrot_compares_a_bounded_prefix_and_counts_every_word() -> None:
    from curate.stages.parrot import MAX_CHARS, char_similarity, word_overlap

    caption = "ox " * 400_000 + "summer sale fifty percent off"
    ocr = "SUMMER SALE FIFTY PERCENT OFF"
    # The spelled text lies beyond the compared prefix, so it does not count there ...
    assert char_similarity(caption, ocr) == 0.0
    assert char_similarity(caption[-40:], ocr) == 1.0
    # ... while the word overlap reads the whole caption.
    assert word_overlap(caption, ocr) == pytest.approx(5 / 400_005)
    assert MAX_CHARS < len(caption)


# --------------------------------------------------------------------------------------------
# 8. Hostile pipeline files.


def test_python_tags_in_a_pipeline_are_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "p.yaml"
    path.write_text(f"name: x\ninput:\n  shards: {REPO}/pipelines/*.yaml\nscore: [image_info]\n"
                    f"description: !!python/object/apply:os.system [\"touch {marker}\"]\n")
    res = curate_cli("run", str(path), "--out", str(tmp_path / "run"))
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith(f"error: {path}: line 5, column 14: tag "
                                 "!!python/object/apply:os.system is not allowed")
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_pipeline_yaml_keys_and_size() -> None:
    from curate.config import load_yaml
    from curate.errors import ConfigError

    ok = REPO / "pipelines" / "basic.yaml"
    assert load_yaml(ok)["name"] == "basic"
    with pytest.raises(ConfigError, match="key 'b' is given twice"):
        _yaml("a: 1\nb: 2\nb: 3\n")
    with pytest.raises(ConfigError, match="key 'x' is given twice"):
        _yaml("a: {x: 1, x: 1}\n")  # even with equal values
    assert _yaml("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n") == {
        "base": {"x": 1, "y": 2}, "c": {"x": 3, "y": 2}}  # a merge key may be overridden
    with pytest.raises(ConfigError, match="expands to more than 100000 values"):
        _yaml("a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n" + "".join(
            f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n"
            for p, c in zip("abcde", "bcdef", strict=True)))
    with pytest.raises(ConfigError, match="expands to more than"):
        _yaml("a: &a [*a]\n")  # a list that holds itself
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 6"):
        _yaml(b"name: \xff\n")


def _yaml(text: str | bytes) -> Any:
    import tempfile

    from curate.config import load_yaml

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "p.yaml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return load_yaml(path)


# --------------------------------------------------------------------------------------------
# 9b. Nothing in curate/ can execute or unpickle its input.

SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}
# (file, call) pairs allowed anyway, each with its justification. Keep it empty if possible.
ALLOWED: dict[tuple[str, str], str] = {}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _unsafe_calls(tree: ast.Module) -> list[tuple[int, str]]:
    safe_loaders = set(SAFE_YAML_LOADERS)
    for node in ast.walk(tree):  # loader classes defined here on top of a safe loader
        if isinstance(node, ast.ClassDef) and any(
                _dotted(b).split(".")[-1] in SAFE_YAML_LOADERS for b in node.bases):
            safe_loaders.add(node.name)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            mods = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(m.split(".")[0] in {"pickle", "cPickle", "dill", "marshal", "shelve",
                                       "cloudpickle", "joblib"} for m in mods):
                found.append((node.lineno, f"imports {', '.join(m for m in mods if m)}"))
            continue
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        last = name.split(".")[-1]
        bad = None
        if name in {"eval", "exec", "compile", "__import__", "os.system", "os.popen",
                    "pd.read_pickle", "pandas.read_pickle", "yaml.unsafe_load",
                    "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"}:
            bad = name
        elif name == "yaml.load":
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or _dotted(loader).split(".")[-1] not in safe_loaders:
                bad = "yaml.load without a safe Loader"
        elif name in {"np.load", "numpy.load"} and _is_true(_kw(node, "allow_pickle")):
            bad = "np.load(allow_pickle=True)"
        elif name == "torch.load" and not _is_true(_kw(node, "weights_only")):
            bad = "torch.load without weights_only=True"
        elif name.startswith("subprocess.") and _is_true(_kw(node, "shell")):
            bad = f"{name}(shell=True)"
        elif last in {"loads", "load"} and name.split(".")[0] in {"pickle", "dill", "marshal",
                                                                  "cloudpickle", "joblib"}:
            bad = name
        if bad:
            found.append((node.lineno, bad))
    return found


def test_static_scan_catches_what_it_should() -> None:
    code = ("import pickle\nimport yaml\nyaml.load(s)\nyaml.load(s, Loader=yaml.Loader)\n"
            "class L(yaml.SafeLoader): pass\nyaml.load(s, Loader=L)\n"
            "np.load(f, allow_pickle=True)\nnp.load(f)\ntorch.load(f)\n"
            "torch.load(f, weights_only=True)\nsubprocess.run(c, shell=True)\n"
            "subprocess.run([c])\neval('1')\nexec('x')\nmodel.eval()\n")
    lines = sorted(line for line, _ in _unsafe_calls(ast.parse(code)))
    assert lines == [1, 3, 4, 7, 9, 11, 13, 14]


def test_curate_never_executes_or_unpickles_its_input() -> None:
    problems = []
    for path in sorted((REPO / "curate").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for line, what in _unsafe_calls(ast.parse(path.read_text(encoding="utf-8"))):
            if (rel, what) not in ALLOWED:
                problems.append(f"{rel}:{line}: {what}")
    assert problems == []


def test_read_members_returns_pickles_as_bytes(hostile: Pool) -> None:
    from curate.io.shards import ShardReader, list_shards, read_members

    ref = list_shards(str(hostile.pool / "00000.tar"))[0]
    index = next(i for (s, i), k in hostile.expected.items() if k == "pickles")
    members = read_members(ref, {index})[index]
    assert members["pyd"] == hostile.originals[("pickles", "pyd")]
    reader = ShardReader(ref)
    rows = [r for batch in reader for r in batch.to_pylist()]
    assert len(rows) == sum(1 for s, _ in hostile.expected if s == ref.shard_id)
    assert reader.report.key_collisions == 1
    assert not hostile.marker.exists()
    assert io.BytesIO(members["pth"]).read(2) == b"\x80\x04"  # still a pickle, never loaded


def test_split_values_from_the_data_stay_one_directory_deep(tmp_path: Path) -> None:
    import posixpath

    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.write.output import plan

    values = ["x/../../../../tmp/evil", "..", "/etc", "a b", None]
    pq.write_table(pa.table({
        "uid": [f"{i:032x}" for i in range(len(values))], "shard": ["00000.tar"] * len(values),
        "index": list(range(len(values))), "image_member": ["jpg"] * len(values),
        "kept": [True] * len(values), "grp": values}), tmp_path / "manifest.parquet")
    shards = plan(tmp_path / "manifest.parquet", [], 10, "grp")
    names = sorted(s.name for s in shards)
    assert len(names) == len(values)
    for name in names:
        parts = name.split("/")
        assert len(parts) == 2 and parts[0].startswith("grp=") and parts[1] == "00000.tar"
        assert posixpath.normpath(name) == name and ".." not in parts
    assert "grp=x%2F..%2F..%2F..%2F..%2Ftmp%2Fevil/00000.tar" in names


def test_oversized_members_are_skipped_unread(tmp_path: Path, ray_local: None) -> None:
    from shardmaker import jpeg, sample_members, write_tar

    from curate.io.shards import ShardReader, ShardRef
    from curate.score.plan import reader_fingerprint

    big = "a photo of a dog " * 200_000  # 3.4 MB caption
    pool = tmp_path / "pool"
    write_tar(pool / "00000.tar", sample_members("small", jpeg(300, 240), "a photo of a cat")
              + sample_members("huge", jpeg(310, 240, (1, 2, 3)), big)
              + sample_members("after", jpeg(320, 240, (4, 5, 6)), "a photo of a bird"))
    ref = ShardRef(url=str(pool / "00000.tar"), shard_id="00000.tar")
    rows = [r for b in ShardReader(ref, max_member_bytes=2**20) for r in b.to_pylist()]
    assert [r["key"] for r in rows] == ["small", "huge", "after"]  # grouping is intact
    huge = rows[1]
    assert huge["status"] == "error" and huge["error_stage"] == "read"
    assert f"member .txt is {len(big)} bytes, over max_member_bytes 1048576" in huge["error"]
    assert huge["caption"] == ""  # never read
    assert rows[0]["status"] == rows[2]["status"] == "ok"
    # The default limit reads it; a different limit is a different reader (and so a
    # different version of every scorer).
    rows = [r for b in ShardReader(ref) for r in b.to_pylist()]
    assert rows[1]["status"] == "ok" and rows[1]["caption"] == big
    assert reader_fingerprint(2**20) != reader_fingerprint()

    p = demo_pipeline(pool)
    p.input = p.input.model_copy(update={"max_member_bytes": 2**20})
    result = run(p, tmp_path / "run", progress=False)
    con = duckdb.connect()
    got = dict(con.sql(f"SELECT key, reason FROM '{result.dir}/manifest/*.parquet'").fetchall())
    assert got["huge"] == "error:read" and result.samples == 3
