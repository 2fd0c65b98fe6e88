"""Property-based fuzzing of every input parser (issue 15): tar shards (truncation at every
offset, flipped bytes, overwritten headers, hostile member names and sizes, json and caption
members), URL lists (CSV, TSV, JSON, JSON lines, Parquet, text), pipeline and selection YAML,
and one scoring pass over damaged shards.

Each property is checked against what the test itself knows about the input it built: which
samples a cut or a flipped byte can reach is worked out from the archive's layout (tarfile's
own offsets, read from the clean archive) and webdataset's grouping convention, never from the
reader's account of what it did. Every example is derived from a fixed seed (``derandomize``)
and nothing is kept between runs (``database=None``), so CI runs the same inputs every time.
"""

from __future__ import annotations

import copy
import csv
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import string
import tarfile
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from shardmaker import jpeg, png, random_bytes, sample_members, write_tar

from curate.config import (
    InputConfig,
    Pipeline,
    Selection,
    load_pipeline,
    load_selection,
    pipeline_from_dict,
)
from curate.errors import CurateError
from curate.ingest.urls import RESERVED, UrlList, read_url_list
from curate.io.shards import (
    ShardReader,
    ShardReadReport,
    ShardRef,
    ShardUnreadable,
    read_members,
)
from curate.stages.base import registered
from curate.uid import derive_uid, normalise_uid

REPO = Path(__file__).resolve().parent.parent


def fuzz(max_examples: int) -> Any:
    """Seeded, bounded hypothesis settings: the same examples on every run
    (``CURATE_FUZZ_SCALE=20`` runs twenty times as many, for a longer search by hand)."""
    scale = float(os.environ.get("CURATE_FUZZ_SCALE", "1"))
    return settings(max_examples=max(1, int(max_examples * scale)), deadline=None,
                    derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# --------------------------------------------------------------------------------------------
# Shards: building, reading, and what the test knows about them

MEM = fsspec.filesystem("memory")
MEM_DIR = "/curate-fuzz"
HEX32 = re.compile(r"[0-9a-f]{32}")
GIVEN_UID = "0123456789abcdef0123456789abcdef"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
CAPTION_EXTS = ("txt", "text", "caption")
COMPRESSION_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """``members`` as a tar, with the same fixed metadata as ``shardmaker.write_tar``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


@pytest.fixture(scope="module", autouse=True)
def _clean_up() -> Iterator[None]:
    for folder in (_URL_DIR, _YAML_DIR):
        folder.mkdir(mode=0o700)
    yield
    if MEM.exists(MEM_DIR):
        MEM.rm(MEM_DIR, recursive=True)
    for folder in (_URL_DIR, _YAML_DIR):
        shutil.rmtree(folder, ignore_errors=True)


def put(data: bytes, name: str = "00000.tar") -> ShardRef:
    MEM.pipe_file(f"{MEM_DIR}/{name}", data)
    return ShardRef(f"memory://{MEM_DIR}/{name}", name)


@dataclass
class Read:
    rows: list[dict[str, Any]]
    report: ShardReadReport
    ref: ShardRef


def read(data: bytes, name: str = "00000.tar") -> Read:
    ref = put(data, name)
    reader = ShardReader(ref, batch_size=4)
    rows = [r for batch in reader for r in batch.to_pylist()]
    return Read(rows, reader.report, ref)


@dataclass(frozen=True)
class Member:
    """One member of an archive as tarfile lays it out."""

    name: str
    offset: int  # its first header block (a pax header included)
    offset_data: int  # its data: the headers end here
    size: int
    is_file: bool

    @property
    def end(self) -> int:
        return self.offset_data + self.size

    @property
    def padded_end(self) -> int:
        return self.offset_data + -(-self.size // 512) * 512


def layout(data: bytes) -> list[Member]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [Member(m.name, m.offset, m.offset_data, m.size, m.isfile())
                for m in tar.getmembers()]


def wds_split(name: str) -> tuple[str, str] | None:
    """webdataset's key convention, written out again here: the key is the name up to the
    first dot of its base name, the rest (lower-cased) is the extension; names without one,
    dot files and ``__``-prefixed keys belong to no sample."""
    base = name.rsplit("/", 1)[-1]
    if "." not in base or base.startswith("."):
        return None
    stem, ext = base.split(".", 1)
    if stem.startswith("__"):
        return None
    return name[: len(name) - len(base)] + stem, ext.lower()


@dataclass
class Sample:
    """A sample as the test expects it: its key, how many earlier samples had that key, and
    the member (index in the archive) of each extension."""

    key: str
    occurrence: int
    members: dict[str, int] = field(default_factory=dict)

    @property
    def first(self) -> int:
        return min(self.members.values())

    @property
    def last(self) -> int:
        return max(self.members.values())


def group(members: list[Member]) -> list[Sample]:
    """Consecutive file members with one key are a sample; a repeated extension starts the
    next one."""
    samples: list[Sample] = []
    seen: Counter[str] = Counter()
    current: Sample | None = None
    for i, m in enumerate(members):
        parts = wds_split(m.name) if m.is_file else None
        if parts is None:
            continue
        key, ext = parts
        if current is None or current.key != key or ext in current.members:
            current = Sample(key, seen[key])
            seen[key] += 1
            samples.append(current)
        current.members[ext] = i
    return samples


def blobs(data: bytes, members: list[Member]) -> list[bytes]:
    """Each member's data bytes, cut from ``data`` at the clean archive's layout."""
    return [data[m.offset_data:m.end] for m in members]


def content(sample: Sample, blob: list[bytes]) -> dict[str, Any]:
    """The columns an ``ok`` row of ``sample`` must hold when its members are ``blob`` (text
    that is not UTF-8 is decoded with replacement characters: no ok row can hold it)."""
    image = next((e for e in IMAGE_EXTS if e in sample.members), None)
    cap = next((e for e in CAPTION_EXTS if e in sample.members), None)

    def text(ext: str | None) -> str | None:
        return blob[sample.members[ext]].decode("utf-8", "replace") if ext else None

    return {"key": sample.key,
            "image_member": image,
            "image": blob[sample.members[image]] if image else None,
            "caption": text(cap),
            "json": text("json" if "json" in sample.members else None)}


def row_content(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("key", "image_member", "image", "caption", "json")}


def check_rows(rd: Read, unique_uids: bool = True) -> None:
    """What holds for every read, whatever the input: rows numbered 0..n-1, status ok or error
    (an error has stage ``read`` and a reason), a well-formed uid, the image hash of the image,
    and counters that agree with the rows."""
    rows = rd.rows
    assert [r["index"] for r in rows] == list(range(len(rows)))
    assert rd.report.samples == len(rows)
    assert rd.report.read_errors == sum(r["status"] == "error" for r in rows)
    for r in rows:
        assert r["status"] in ("ok", "error"), r
        if r["status"] == "error":
            assert r["error"] and r["error_stage"] == "read", r
        else:
            assert r["error"] is None and r["error_stage"] is None, r
            assert r["image"] is not None and r["image_member"] in IMAGE_EXTS, r
        assert HEX32.fullmatch(r["uid"]), r
        assert r["shard"] == rd.ref.shard_id
        if r["image"] is not None:
            assert r["image_sha256"] == hashlib.sha256(r["image"]).hexdigest()
    keys = Counter(r["key"] for r in rows)
    assert rd.report.key_collisions == sum(n - 1 for n in keys.values())
    if unique_uids:
        assert len({r["uid"] for r in rows}) == len(rows), Counter(r["uid"] for r in rows)


def check_read_members(rd: Read) -> None:
    """The output writer's ``read_members`` numbers samples as the reader does: for every ok
    sample it finds the same key and the same image bytes at the same index."""
    ok = {r["index"]: r for r in rd.rows if r["status"] == "ok"}
    got = read_members(rd.ref, set(ok))
    assert set(got) == set(ok)
    for i, r in ok.items():
        assert got[i]["__key__"] == r["key"].encode()
        assert got[i][r["image_member"]] == r["image"]


def occurrences(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    seen: Counter[str] = Counter()
    out = []
    for r in rows:
        out.append((r["key"], seen[r["key"]]))
        seen[r["key"]] += 1
    return out


TINY = [png(4, 4, (200, 20 * i, 40)) for i in range(6)]  # 77-byte images: one tar block each


def small_members() -> list[tuple[str, bytes]]:
    """Two samples and, between them, a member without an extension (no sample's): the
    reader must hold the first sample open across it (more of its members could follow)."""
    return [*sample_members("s0", TINY[0], "a red house by the river",
                            {"uid": GIVEN_UID, "url": "https://x.invalid/0"}, ext="png"),
            ("notes", b"not a sample member"),
            *sample_members("s1", TINY[1], "a blue door", ext="png")]


def three_samples(meta: bool = True) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for i in range(3):
        out += sample_members(f"{i:04d}", TINY[i], f"a photo of a small house number {i}",
                              {"url": f"https://x.invalid/{i}"} if meta else None, ext="png")
    return out


@dataclass
class Shard:
    """A clean archive and what the test knows about it."""

    data: bytes
    members: list[Member]
    samples: list[Sample]

    @classmethod
    def of(cls, members: list[tuple[str, bytes]], compressed: bool = False) -> Shard:
        """The shard of ``members`` (``compressed``: as a .tar.gz, laid out as the tar in it)."""
        data = tar_bytes(members)
        lay = layout(data)
        return cls(gz(data) if compressed else data, lay, group(lay))

    @property
    def archive_end(self) -> int:
        """Where the end-of-archive blocks start."""
        return max(m.padded_end for m in self.members)

    def owner(self) -> dict[int, int]:
        """member index -> sample number"""
        return {i: n for n, s in enumerate(self.samples) for i in s.members.values()}

    def expected(self, data: bytes | None = None) -> list[dict[str, Any]]:
        b = blobs(self.data if data is None else data, self.members)
        return [content(s, b) for s in self.samples]


# --------------------------------------------------------------------------------------------
# 1. Truncation


def truncation_model(shard: Shard, cut: int) -> tuple[list[int], set[int], bool] | None:
    """For a shard cut after ``cut`` bytes: the samples the reader must yield (those whose
    first header is complete), those that must be ok (a sample is complete only once the next
    sample's first header, or the end-of-archive block, is there: until then more of its
    members could follow), and whether the shard is truncated. None: not readable at all (not
    even the first header is there)."""
    lay, samples = shard.members, shard.samples
    if cut < lay[0].offset_data:
        return None
    yielded = [j for j, s in enumerate(samples) if cut >= lay[s.first].offset_data]
    ok = set()
    for j in yielded:
        close = (lay[samples[j + 1].first].offset_data if j + 1 < len(samples)
                 else shard.archive_end + 512)
        if cut >= close:
            ok.add(j)
    return yielded, ok, cut < shard.archive_end + 512


def check_truncated(shard: Shard, cut: int) -> None:
    model = truncation_model(shard, cut)
    data = shard.data[:cut]
    if model is None:
        with pytest.raises(ShardUnreadable):
            read(data)
        return
    yielded, ok, truncated = model
    rd = read(data)
    check_rows(rd)
    expected = shard.expected()
    assert [r["key"] for r in rd.rows] == [shard.samples[j].key for j in yielded], cut
    for r, j in zip(rd.rows, yielded, strict=True):
        if j in ok:
            assert r["status"] == "ok", (cut, r["error"])
            assert row_content(r) == expected[j]
        else:
            assert r["status"] == "error", (cut, r)
    assert (rd.report.truncated is not None) == truncated, (cut, rd.report)
    assert rd.report.damaged is None, (cut, rd.report)
    if ok:
        check_read_members(rd)


def test_truncation_at_every_offset() -> None:
    """A small shard (two samples of tiny images and a member of no sample) cut at every byte
    offset up to one block past its end, then at every block boundary of the rest."""
    shard = Shard.of(small_members())
    assert len(shard.data) < 12_000
    stop = shard.archive_end + 512
    for cut in [*range(stop + 1), *range(stop, len(shard.data) + 1, 512)]:
        check_truncated(shard, cut)


@st.composite
def shard_members(draw: st.DrawFn, max_samples: int = 4, plain: bool = False,
                  ) -> list[tuple[str, bytes]]:
    """Samples with image, caption and json members of random sizes, some with extra members
    or members of no sample; unless ``plain``, some with long or non-ASCII keys (pax headers,
    whose records have no checksum: a changed byte there renames a member undetectably, so
    the damage tests use plain names)."""
    out: list[tuple[str, bytes]] = []
    keys = ["{:05d}", "dir/{}", "k{}"] if plain else ["{:05d}", "dir/{}", "k" * 110 + "{}",
                                                      "é{}", "{}-ünïcode/ß"]
    for i in range(draw(st.integers(1, max_samples))):
        key = draw(st.sampled_from(keys)).format(i)
        size = draw(st.integers(0, 1500))
        out.append((f"{key}.{draw(st.sampled_from(['jpg', 'png', 'webp']))}",
                    bytes([i + 1]) * size))
        if draw(st.booleans()):
            out.append((f"{key}.txt", f"caption {i} ".encode() * draw(st.integers(0, 80))))
        if draw(st.booleans()):
            out.append((f"{key}.json", json.dumps({"url": f"https://x.invalid/{i}"}).encode()))
        if draw(st.booleans()):
            out.append((draw(st.sampled_from(["README", f"{key}.cls", "__meta__.json"])),
                        b"x" * draw(st.integers(0, 700))))
    return out


@fuzz(60)
@given(members=shard_members(), where=st.floats(0, 1))
def test_truncation_of_random_layouts(members: list[tuple[str, bytes]], where: float) -> None:
    shard = Shard.of(members)
    check_truncated(shard, int(where * (shard.archive_end + 1024)))


# --------------------------------------------------------------------------------------------
# 2. Flipped bytes and overwritten headers


def zone(shard: Shard, pos: int) -> tuple[str, int | None]:
    """Where byte ``pos`` is: ("header" | "data" | "padding", member) or ("end", None)."""
    for i, m in enumerate(shard.members):
        if m.offset <= pos < m.offset_data:
            return "header", i
        if m.offset_data <= pos < m.end:
            return "data", i
        if m.end <= pos < m.padded_end:
            return "padding", i
    return "end", None


def reach(shard: Shard, positions: list[int]) -> tuple[set[int], set[int]]:
    """The samples damage at ``positions`` may change: (all of them, those whose own data was
    changed). A changed header loses its member, and the reader cannot tell whether the lost
    member was the last of the sample before it or the first of the sample after it, so both
    neighbours of a damaged region may fail; a changed data byte touches its own sample only;
    tar padding is never read; damage after the last member may hide more of the last
    sample."""
    owner = shard.owner()
    n = len(shard.samples)
    reached: set[int] = set()
    own_data: set[int] = set()
    for pos in positions:
        kind, i = zone(shard, pos)
        if kind == "end":
            reached.add(n - 1)
        elif kind == "data" and i in owner:
            reached.add(owner[i])
            own_data.add(owner[i])
        elif kind == "header":
            assert i is not None
            before = [owner[k] for k in range(i) if k in owner]
            after = [owner[k] for k in range(i + 1, len(shard.members)) if k in owner]
            reached.update(before[-1:] + after[:1])
            if i in owner:
                reached.add(owner[i])
    return reached, own_data


def check_damaged(shard: Shard, data: bytes, positions: list[int]) -> Read | None:
    """The read of ``data`` (``shard`` with the bytes at ``positions`` changed): samples
    out of reach are ok and unchanged, an ok sample holds exactly the bytes at its members'
    places, samples come in archive order, and lost or failed samples are reported. None
    when the damage left no valid header at all: the shard is then not a tar archive (it
    fails, rather than being read as 0 samples), which only happens when every sample was
    within reach of the damage."""
    reached, own_data = reach(shard, positions)
    try:
        rd = read(data)
    except ShardUnreadable as exc:
        assert "is not a tar archive" in str(exc)
        assert len(reached) == len(shard.samples), (reached, exc)
        return None
    check_rows(rd)
    expected_keys = [(s.key, s.occurrence) for s in shard.samples]
    got = occurrences(rd.rows)
    assert set(got) <= set(expected_keys), (got, expected_keys)
    where = {k: j for j, k in enumerate(expected_keys)}
    assert [where[k] for k in got] == sorted(where[k] for k in got)  # archive order
    now = shard.expected(data)
    by_sample = {where[k]: r for k, r in zip(got, rd.rows, strict=True)}
    for j in range(len(shard.samples)):
        r = by_sample.get(j)
        if j not in reached:
            assert r is not None and r["status"] == "ok", (j, r, rd.report)
        if r is not None and r["status"] == "ok":
            assert row_content(r) == now[j], (j, positions)
    lost = [j for j in range(len(shard.samples)) if j not in by_sample
            or (by_sample[j]["status"] == "error" and j not in own_data)]
    if lost:
        assert rd.report.damaged is not None or rd.report.truncated is not None, lost
    assert rd.report.truncated is None
    check_read_members(rd)
    return rd


@fuzz(80)
@given(members=shard_members(plain=True), data=st.data())
def test_a_flipped_byte_in_member_data_changes_only_its_sample(
        members: list[tuple[str, bytes]], data: st.DataObject) -> None:
    shard = Shard.of(members)
    filled = [i for i, m in enumerate(shard.members) if m.size]
    assume(filled)
    m = shard.members[data.draw(st.sampled_from(filled))]
    pos = data.draw(st.integers(m.offset_data, m.end - 1))
    damaged = bytearray(shard.data)
    damaged[pos] ^= data.draw(st.integers(1, 255))
    rd = check_damaged(shard, bytes(damaged), [pos])
    assert rd is not None and rd.report.damaged is None  # the tar itself is intact
    assert len(rd.rows) == len(shard.samples)


@fuzz(150)
@given(members=shard_members(plain=True), data=st.data())
def test_flipped_bytes_anywhere_cost_at_most_the_samples_next_to_them(
        members: list[tuple[str, bytes]], data: st.DataObject) -> None:
    shard = Shard.of(members)
    # One flip per 512-byte block: two in one header can keep its checksum (a byte sum) valid,
    # a renamed member that no reader can tell from the real thing.
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(shard.data) - 1),
                                         st.integers(1, 255)), min_size=1, max_size=3,
                               unique_by=lambda f: f[0] // 512))
    damaged = bytearray(shard.data)
    for pos, value in flips:
        damaged[pos] ^= value
    assume(not bytes(damaged).startswith(COMPRESSION_MAGIC))
    check_damaged(shard, bytes(damaged), [p for p, _ in flips])


def _valid_header(block: bytes) -> bool:
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


@fuzz(100)
@given(members=shard_members(plain=True), data=st.data())
def test_an_overwritten_header_is_skipped_and_reported(
        members: list[tuple[str, bytes]], data: st.DataObject) -> None:
    shard = Shard.of(members)
    i = data.draw(st.integers(0, len(shard.members) - 1))
    m = shard.members[i]
    assume(m.size > 0)  # a zeroed header of an empty member is an end-of-archive block
    block = data.draw(st.one_of(st.just(bytes(512)),
                                st.binary(min_size=512, max_size=512)), label="block")
    assume(not _valid_header(block))
    damaged = bytearray(shard.data)
    damaged[m.offset:m.offset + 512] = block
    assume(not bytes(damaged).startswith(COMPRESSION_MAGIC))
    rd = check_damaged(shard, bytes(damaged), [m.offset])
    if rd is None:  # it was the shard's only header
        assert len(shard.samples) == 1 or not any(
            _valid_header(bytes(damaged[b:b + 512])) for b in range(0, len(damaged), 512))
        return
    assert rd.report.damaged is not None
    owner = shard.owner()
    if i in owner:  # the sample that lost the member is never ok
        lost = (shard.samples[owner[i]].key, shard.samples[owner[i]].occurrence)
        assert all(r["status"] == "error" for k, r in zip(occurrences(rd.rows), rd.rows,
                                                          strict=True) if k == lost)


@fuzz(40)
@given(members=shard_members(max_samples=3, plain=True), data=st.data())
def test_damaged_compressed_shards(members: list[tuple[str, bytes]], data: st.DataObject) -> None:
    """A .tar.gz cut short or with flipped bytes: never an exception other than
    ShardUnreadable, and an ok sample is never changed."""
    shard = Shard.of(members, compressed=True)
    raw = bytearray(shard.data)
    if data.draw(st.booleans(), label="cut"):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        for pos, value in data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1),
                                                       st.integers(1, 255)), min_size=1,
                                             max_size=3)):
            raw[pos] ^= value
    try:
        rd = read(bytes(raw), "00000.tar.gz")
    except ShardUnreadable:
        return
    check_rows(rd)
    clean = {k: c for k, c in zip([(s.key, s.occurrence) for s in shard.samples],
                                  Shard.of(members).expected(), strict=True)}
    for k, r in zip(occurrences(rd.rows), rd.rows, strict=True):
        if r["status"] == "ok":
            assert row_content(r) == clean[k]
    if len(rd.rows) < len(shard.samples) or any(r["status"] == "error" for r in rd.rows):
        assert rd.report.truncated is not None or rd.report.damaged is not None


# --------------------------------------------------------------------------------------------
# 3. Member names and sizes

NAME_CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="\x00/")
SEGMENT = st.one_of(st.text(NAME_CHARS, max_size=8),
                    st.sampled_from(["..", ".", "", "a" * 120, "é", "__x", "k"]))
EXTENSION = st.one_of(st.sampled_from(["jpg", "JPG", "png", "webp", "txt", "text", "json",
                                       "caption", "cls", "seg.jpg", "", "tar.gz"]),
                      st.text(NAME_CHARS, max_size=6))


@st.composite
def member_name(draw: st.DrawFn) -> str:
    dirs = draw(st.lists(SEGMENT, max_size=3))
    stem = draw(st.one_of(st.sampled_from(["a", "a#1", "b", "00001", "..", "", "__meta__"]),
                          st.text(NAME_CHARS, max_size=10), st.just("x" * 200)))
    ext = draw(st.one_of(st.none(), EXTENSION))
    return "/".join([*dirs, stem + ("" if ext is None else "." + ext)])


def member_data(draw: st.DrawFn, name: str) -> bytes:
    ext = (wds_split(name) or ("", ""))[1]
    if ext in CAPTION_EXTS:
        return draw(st.text(max_size=40)).encode()
    if ext == "json":
        return json.dumps({"url": draw(st.text(max_size=20))}).encode()
    return draw(st.binary(max_size=900))


@st.composite
def named_members(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    names = draw(st.lists(member_name(), min_size=1, max_size=10))
    names = [n for n in names if n.rstrip("/")]  # tarfile cannot store an empty name
    assume(names)
    return [(n, member_data(draw, n)) for n in names]


@fuzz(200)
@given(members=named_members())
def test_random_member_names_and_sizes(members: list[tuple[str, bytes]]) -> None:
    """Any names (unicode, slashes, ``..``, 200 characters, empty extension, no dot, repeated
    keys, ``a#1`` after two ``a``) and sizes: one sample per webdataset group, in order, each
    uid distinct; ok exactly when it has an image member, with that member's bytes."""
    shard = Shard.of(members)  # tarfile's names (it drops a trailing "/" of a pax path)
    assert [m.name for m in shard.members] == [n.rstrip("/") if n.rstrip("/") != n and (
        len(n) > 100 or not n.isascii()) else n for n, _ in members]
    rd = read(shard.data)
    check_rows(rd)
    expected = shard.expected()
    assert [r["key"] for r in rd.rows] == [s.key for s in shard.samples]
    for r, want in zip(rd.rows, expected, strict=True):
        if want["image_member"] is None:
            assert r["status"] == "error" and "no image member" in r["error"]
        else:
            assert r["status"] == "ok", r["error"]
            assert row_content(r) == want
    ignored = sum(1 for m in shard.members if m.is_file and wds_split(m.name) is None)
    assert rd.report.ignored_members == ignored
    assert rd.report.damaged is None and rd.report.truncated is None
    check_read_members(rd)


# --------------------------------------------------------------------------------------------
# 4. json and caption members

JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=4),
    max_leaves=15)


def nested(n: int, in_object: bool) -> bytes:
    core = b"[" * n + b"]" * n
    return b'{"url": "u", "a": ' + core + b"}" if in_object else core


JSON_MEMBER = st.one_of(
    st.binary(max_size=120),
    st.text(max_size=60).map(str.encode),
    JSON_VALUE.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["url", "uid", "caption", "x"]), JSON_VALUE, max_size=3)
    .map(lambda v: json.dumps(v, ensure_ascii=False).encode()),
    st.builds(nested, st.integers(1, 200_000), st.booleans()),
    st.integers(1, 6000).map(lambda n: b'{"n": ' + b"9" * n + b"}"),
    st.sampled_from([b"NaN", b"Infinity", b'{"x": NaN, "y": -Infinity}', b'{"n": 1e99999}',
                     b"[]", b"null", b'"text"', b"", b"{}", b'{"url": "\\ud800"}',
                     b'{"url": "a\\udfffb", "uid": "\\ud800"}', b'{"\\ud800": 1}',
                     b'{"url": ["not", "a", "string"]}', b'{"uid": 12345}',
                     f'{{"uid": " {GIVEN_UID.upper()} "}}'.encode(), b"\xef\xbb\xbf{}",
                     b'{"a": 1, "a": 2}', b'{"url": "\\u0000"}', b'{"url": "a\x00b"}']))
CAPTION_MEMBER = st.one_of(st.none(), st.binary(max_size=80), st.text(max_size=40).map(str.encode),
                           st.sampled_from([b"", b"\xff\xfe", b"ok\x00nul", b"\xed\xa0\x80"]))


@fuzz(150)
@given(meta=st.one_of(st.none(), JSON_MEMBER), caption=CAPTION_MEMBER)
def test_json_and_caption_members_fail_only_their_sample(meta: bytes | None,
                                                         caption: bytes | None) -> None:
    members = three_samples()
    members = [m for m in members if not m[0].startswith("0001.")]
    middle = sample_members("0001", TINY[4], caption, meta, ext="png")
    members[3:3] = middle
    shard = Shard.of(members)
    rd = read(shard.data)
    check_rows(rd, unique_uids=False)
    assert len(rd.rows) == 3
    clean = read(Shard.of(three_samples()).data).rows
    for i in (0, 2):
        assert rd.rows[i] == clean[i]
    r = rd.rows[1]
    text: str | None = None
    if caption is not None:
        try:
            text = caption.decode("utf-8")
        except UnicodeDecodeError:
            assert r["status"] == "error" and "caption is not valid UTF-8" in r["error"]
    loaded: Any = None
    if meta is not None:
        try:
            loaded = json.loads(meta.decode("utf-8"))
        except (ValueError, RecursionError):
            assert r["status"] == "error" and "json member" in r["error"]
        if not isinstance(loaded, dict):
            assert r["status"] == "error" and "json member" in r["error"]
    if r["status"] == "ok":
        assert r["caption"] == text
        assert r["image"] == TINY[4]
        if meta is not None:
            assert isinstance(loaded, dict)
            assert r["json"] == meta.decode()
            assert r["uid"] == (normalise_uid(loaded.get("uid"))
                                or derive_uid("00000.tar", "0001"))
            url = loaded.get("url")
            assert r["url"] == (url if isinstance(url, str) else None)
            assert not has_surrogates(url)
        else:
            assert r["uid"] == derive_uid("00000.tar", "0001") and r["url"] is None


def has_surrogates(value: Any) -> bool:
    return isinstance(value, str) and any("\ud800" <= c <= "\udfff" for c in value)


# --------------------------------------------------------------------------------------------
# Regression tests for what the fuzzing found in the shard reader


def test_a_lost_last_member_fails_its_sample() -> None:
    """A corrupt header of a sample's last member (its json: the uid and url) between two
    samples: the reader cannot tell whose member it was, so both neighbours fail with the
    reason; before, the sample came out ok without its json, with a derived uid."""
    members = []
    for i in range(3):
        members += sample_members(f"{i:03d}", TINY[i], f"caption {i}",
                                  {"url": f"u{i}", "uid": f"{i + 1:032x}"}, ext="png")
    shard = Shard.of(members)
    m = next(m for m in shard.members if m.name == "001.json")
    data = bytearray(shard.data)
    data[m.offset + 120] ^= 0x10  # one flipped bit in the header's mode/uid fields
    rd = read(bytes(data))
    status = [(r["key"], r["status"]) for r in rd.rows]
    assert status == [("000", "ok"), ("001", "error"), ("002", "error")]
    assert "damaged" in rd.rows[1]["error"] and "damaged" in rd.rows[2]["error"]
    assert rd.rows[0]["uid"] == f"{1:032x}"
    assert rd.report.damaged is not None and rd.report.damaged.startswith(
        f"corrupt tar data at byte {m.offset}")


def test_a_lost_member_at_the_end_fails_the_last_sample() -> None:
    members = sample_members("000", TINY[0], "c", {"url": "u0"}, ext="png") + sample_members(
        "001", TINY[1], "c", {"url": "u1", "uid": GIVEN_UID}, ext="png")
    shard = Shard.of(members)
    m = shard.members[-1]  # 001.json
    data = bytearray(shard.data)
    data[m.offset] ^= 0x01
    rd = read(bytes(data))
    assert [(r["key"], r["status"]) for r in rd.rows] == [("000", "ok"), ("001", "error")]
    assert "damaged" in rd.rows[1]["error"]


def test_members_of_types_tarfile_skips_are_not_damage() -> None:
    """A member of a type tarfile does not know (here a GNU volume header, ``V``) has data
    that tarfile skips; that is not damage (before: reported as 'corrupt tar data')."""
    members = three_samples()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for k, (name, blob) in enumerate(members):
            if k == 3:
                info = tarfile.TarInfo("volume")
                info.type, info.size = b"V", 700
                tar.addfile(info, io.BytesIO(b"v" * 700))
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    rd = read(buf.getvalue())
    assert [r["status"] for r in rd.rows] == ["ok"] * 3
    assert rd.report.damaged is None and rd.report.truncated is None
    check_read_members(rd)


def test_a_damaged_shard_reads_the_same_from_memory_and_from_a_file(tmp_path: Path) -> None:
    """Telling skipped data from zero padding used to open the shard a second time; fsspec's
    memory filesystem hands every open the same file object, so on memory:// that moved the
    stream being read (members read twice, a bogus truncation)."""
    shard = Shard.of(three_samples())
    data = bytearray(shard.data)
    data[shard.members[4].offset] ^= 0xFF  # the second sample's caption header
    path = tmp_path / "00000.tar"
    path.write_bytes(bytes(data))
    reader = ShardReader(ShardRef(str(path), path.name), batch_size=4)
    from_file = [r for b in reader for r in b.to_pylist()]
    rd = read(bytes(data))
    assert rd.rows == from_file
    assert [r["status"] for r in rd.rows] == ["ok", "error", "ok"]
    assert rd.report == reader.report and rd.report.truncated is None


def test_compressed_shards_are_checked_like_plain_ones() -> None:
    """A .tar.gz is decompressed by the reader itself: a lost member at the end of the tar
    inside, a tar inside without its end-of-archive block and a bad gzip CRC are reported
    (before: the first two went unnoticed, the sample ok without its json; tarfile does not
    check the CRC); concatenated tars and gzip members are one shard without damage."""
    shard = Shard.of(three_samples())
    lost = bytearray(shard.data)
    lost[shard.members[-1].offset] ^= 0x01  # the last json's header
    rd = read(gz(bytes(lost)), "00000.tar.gz")
    assert [r["status"] for r in rd.rows] == ["ok", "ok", "error"]
    assert rd.report.damaged is not None
    rd = read(gz(shard.data[:shard.archive_end]), "00000.tar.gz")
    assert rd.report.truncated is not None and rd.rows[-1]["status"] == "error"
    members = three_samples()
    members[3] = ("0001.png", random_bytes(200_000))  # incompressible: read in several chunks
    big = Shard.of(members)
    bad_crc = bytearray(gz(big.data))
    bad_crc[-8] ^= 0x01  # the CRC, read after everything else
    rd = read(bytes(bad_crc), "00000.tar.gz")
    assert rd.rows[0]["status"] == "ok" and rd.rows[-1]["status"] == "error"
    assert rd.report.truncated is not None and "incorrect data check" in rd.report.truncated
    with pytest.raises(ShardUnreadable, match="incorrect data check"):  # all of it in one read
        bad_crc = bytearray(gz(shard.data))
        bad_crc[-8] ^= 0x01
        read(bytes(bad_crc), "00000.tar.gz")
    other = tar_bytes(sample_members("0003", TINY[3], "another", ext="png"))
    for data in (gz(shard.data + other), gz(shard.data) + gz(other) + bytes(100)):
        rd = read(data, "00000.tar.gz")
        assert [r["key"] for r in rd.rows] == ["0000", "0001", "0002", "0003"]
        assert all(r["status"] == "ok" for r in rd.rows)
        assert rd.report.damaged is None and rd.report.truncated is None
        check_read_members(rd)


def test_derived_uids_are_unique_whatever_the_keys() -> None:
    """``a`` twice, then a sample whose key is literally ``a#1``: the second ``a`` used to
    get the uid of ``a#1`` (both derived from the string "a#1")."""
    members = (sample_members("a", TINY[0], ext="png") + sample_members("a", TINY[1], ext="png")
               + sample_members("a#1", TINY[2], ext="png"))
    rd = read(tar_bytes(members))
    assert [r["key"] for r in rd.rows] == ["a", "a", "a#1"]
    assert len({r["uid"] for r in rd.rows}) == 3
    assert rd.rows[0]["uid"] == derive_uid("00000.tar", "a")
    assert rd.rows[1]["uid"] == derive_uid("00000.tar", "a#1")  # unchanged for the usual case


def _set_name(data: bytearray, offset: int, name: bytes) -> None:
    """Write ``name`` into the ustar header at ``offset`` and fix its checksum."""
    data[offset:offset + 100] = name.ljust(100, b"\0")
    data[offset + 148:offset + 156] = b" " * 8
    data[offset + 148:offset + 156] = b"%06o\0 " % sum(data[offset:offset + 512])


def test_member_names_that_are_not_utf8() -> None:
    """Names with bytes that are not UTF-8 (tarfile passes them on as surrogates, which
    neither Arrow nor the uid hash can encode) become keys with the bytes escaped; before,
    UnicodeEncodeError escaped the reader."""
    members = sample_members("aaa", TINY[0], ext="png") + sample_members("bbb", TINY[1], ext="png")
    shard = Shard.of(members)
    data = bytearray(shard.data)
    for m in shard.members:
        if m.name.startswith("aaa"):
            _set_name(data, m.offset, b"a\xffa" + m.name[3:].encode())
    rd = read(bytes(data))
    assert [(r["key"], r["status"]) for r in rd.rows] == [("a\\xffa", "ok"), ("bbb", "ok")]
    check_read_members(rd)
    # The same in a pax header (hdrcharset BINARY), and in a json url: a lone surrogate.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            if name == "aaa.txt":
                info.pax_headers = {"hdrcharset": "BINARY", "path": "aaa\udcff.txt"}
            tar.addfile(info, io.BytesIO(blob))
    rd = read(buf.getvalue())
    assert [r["status"] for r in rd.rows] == ["ok", "error", "ok"]
    assert rd.rows[1]["key"] == "aaa\\xff"


def test_a_json_url_with_a_lone_surrogate_fails_its_sample() -> None:
    members = (sample_members("a", TINY[0], "c", b'{"url": "https://x.invalid/\\ud800"}',
                              ext="png") + sample_members("b", TINY[1], ext="png"))
    rd = read(tar_bytes(members))
    assert [r["status"] for r in rd.rows] == ["error", "ok"]
    assert "url" in rd.rows[0]["error"] and rd.rows[0]["url"] is None


def test_malformed_pax_numbers_end_the_shard_as_truncated() -> None:
    """tarfile raises ValueError (not a TarError) for a pax sparse header whose numbers are
    not numbers; it used to escape the reader."""
    members = three_samples()
    for headers in ({"GNU.sparse.size": "abc"},
                    {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                     "GNU.sparse.realsize": "10"}):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, blob in members:
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                if name == "0001.txt":
                    info.pax_headers = dict(headers)
                tar.addfile(info, io.BytesIO(blob))
        rd = read(buf.getvalue())
        assert [(r["key"], r["status"]) for r in rd.rows] == [("0000", "ok"), ("0001", "error")]
        assert rd.report.truncated is not None and "header" in rd.report.truncated
        check_read_members(rd)


# --------------------------------------------------------------------------------------------
# 5. URL lists

# Scratch folders, made by _clean_up before the module's first test (collecting the module
# without running it, e.g. with -k, leaves nothing behind) and removed after its last.
_SCRATCH = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
_URL_DIR = Path(tempfile.gettempdir()) / f"curate-fuzz-urls-{_SCRATCH}"


def url_file(name: str, data: bytes) -> Path:
    path = _URL_DIR / name
    path.write_bytes(data)
    return path


def read_list(path: Path, **settings_: Any) -> UrlList | CurateError:
    """The URL list read, or the CurateError it gives; any other exception fails the test."""
    try:
        return read_url_list(InputConfig(urls=str(path), **settings_))
    except CurateError as exc:
        assert exc.message.strip()
        return exc


def check_list(got: UrlList, rows: int | None = None, urls: list[str | None] | None = None,
               given: list[Any] | None = None) -> None:
    t = got.table
    assert t.column_names[:3] == ["url", "caption", "uid"]
    uids = got.uids
    assert all(isinstance(u, str) and HEX32.fullmatch(u) for u in uids)
    g = [normalise_uid(v) for v in given] if given is not None else [None] * t.num_rows
    derived = [u for u, v in zip(uids, g, strict=True) if v is None]
    assert len(set(derived)) == len(derived)
    assert [u for u, v in zip(uids, g, strict=True) if v is not None] == [v for v in g if v]
    if rows is not None:
        assert t.num_rows == rows
    if urls is not None:
        assert t.column("url").to_pylist() == urls
    t.validate(full=True)
    t.to_pylist()


@fuzz(120)
@given(fmt=st.sampled_from(["csv", "tsv", "json", "jsonl", "txt", "parquet"]),
       blob=st.binary(max_size=300), caption_col=st.sampled_from(["caption", None]))
def test_url_lists_of_random_bytes(fmt: str, blob: bytes, caption_col: str | None) -> None:
    got = read_list(url_file(f"junk.{fmt}", blob), caption_col=caption_col)
    if isinstance(got, UrlList):
        check_list(got)


def clean_columns(names: list[str], caption_col: str | None) -> bool:
    """Whether a list with these columns names what it must (url, and the caption column
    when one is set) and nothing the download writes itself."""
    needed = {"url"} | ({caption_col} if caption_col else set())
    return needed <= set(names) and not set(names) & (set(RESERVED) - needed - {"uid"})


FIELD = st.one_of(st.text(max_size=12), st.sampled_from(
    ["", " ", '"', '""', "a,b", "a\tb", "line\nbreak", "cr\r", "NA", "null", "1", "-2.5",
     "2020-01-01", "true", "http://x.invalid/a?b=c,d", "\u2028", "\ufeff", "'"]))
COLUMN = st.one_of(st.sampled_from(["url", "caption", "uid", "extra", "n", "key", "url ",
                                    "URL", ""]), st.text(string.ascii_lowercase, min_size=1,
                                                         max_size=5))


@fuzz(150)
@given(header=st.lists(COLUMN, min_size=1, max_size=5), data=st.data(),
       sep=st.sampled_from([",", "\t"]),
       quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
       caption_col=st.sampled_from(["caption", None]))
def test_csv_and_tsv_url_lists(header: list[str], data: st.DataObject, sep: str, quoting: int,
                               caption_col: str | None) -> None:
    """Well-formed CSV/TSV (as Python's csv writes it: any quoting, quotes, separators and
    newlines inside fields, nulls, missing or repeated columns): read with one row per row and
    the url values as written, or refused with a CurateError."""
    rows = data.draw(st.lists(st.lists(FIELD, min_size=len(header), max_size=len(header)),
                              max_size=6))
    text = io.StringIO()
    writer = csv.writer(text, delimiter=sep, quoting=quoting)  # type: ignore[arg-type]
    writer.writerow(header)
    writer.writerows(rows)
    path = url_file("list." + ("csv" if sep == "," else "tsv"), text.getvalue().encode())
    got = read_list(path, caption_col=caption_col)
    valid = (bool(rows) and all(header) and len(set(header)) == len(header)
             and clean_columns(header, caption_col))
    if valid:
        assert isinstance(got, UrlList), got
    if isinstance(got, UrlList):
        col = header.index("url")
        given_uids = [r[header.index("uid")] for r in rows] if "uid" in header else None
        check_list(got, rows=len(rows), urls=[r[col] for r in rows], given=given_uids)


JSON_RECORD = st.fixed_dictionaries(
    {"url": st.one_of(st.text(max_size=15), st.sampled_from(["http://x.invalid/\u2028a"]))},
    optional={"caption": st.one_of(st.none(), st.text(max_size=15),
                                   st.just("two\u2028lines\u2029\x85")),
              "n": st.one_of(st.none(), st.integers(-100, 100)),
              "uid": st.sampled_from([GIVEN_UID, "x", "0" * 31 + "a"])})


@fuzz(120)
@given(records=st.lists(JSON_RECORD, min_size=1, max_size=5), lines=st.booleans(),
       ascii_only=st.booleans(), caption_col=st.sampled_from(["caption", None]))
def test_json_url_lists(records: list[dict[str, Any]], lines: bool, ascii_only: bool,
                        caption_col: str | None) -> None:
    """A JSON array of objects, or JSON lines (one object or more; non-ASCII written as is):
    one row per object, in order."""
    if lines:
        text = "".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in records)
    else:
        text = json.dumps(records, ensure_ascii=ascii_only)
    got = read_list(url_file("list.jsonl" if lines else "list.json", text.encode()),
                    caption_col=caption_col)
    if not clean_columns(list({k: None for r in records for k in r}), caption_col):
        assert isinstance(got, CurateError)
        return
    assert isinstance(got, UrlList), got
    check_list(got, rows=len(records), urls=[r["url"] for r in records],
               given=[r.get("uid") for r in records])


@fuzz(100)
@given(values=st.lists(JSON_VALUE, min_size=1, max_size=4), lines=st.booleans())
def test_json_url_lists_of_any_values(values: list[Any], lines: bool) -> None:
    text = ("".join(json.dumps(v) + "\n" for v in values) if lines else json.dumps(values))
    got = read_list(url_file("any.jsonl" if lines else "any.json", text.encode()),
                    caption_col=None)
    if isinstance(got, UrlList):
        check_list(got, rows=len(values))


ARROW_COLUMN: list[Callable[[int], st.SearchStrategy[pa.Array]]] = [
    lambda n: st.lists(st.one_of(st.none(), st.text(max_size=8)), min_size=n, max_size=n)
    .map(lambda v: pa.array(v, pa.string())),
    lambda n: st.lists(st.one_of(st.none(), st.text(max_size=8)), min_size=n, max_size=n)
    .map(lambda v: pa.array(v, pa.large_string())),
    lambda n: st.lists(st.text("ab", max_size=2), min_size=n, max_size=n)
    .map(lambda v: pa.array(v).dictionary_encode()),
    lambda n: st.lists(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1)), min_size=n,
                       max_size=n).map(lambda v: pa.array(v, pa.int64())),
    lambda n: st.lists(st.one_of(st.none(), st.floats()), min_size=n, max_size=n)
    .map(lambda v: pa.array(v, pa.float64())),
    lambda n: st.lists(st.one_of(st.none(), st.booleans()), min_size=n, max_size=n)
    .map(pa.array),
    lambda n: st.lists(st.one_of(st.none(), st.binary(max_size=6)), min_size=n, max_size=n)
    .map(lambda v: pa.array(v, pa.binary())),
    lambda n: st.lists(st.one_of(st.none(), st.datetimes(min_value=datetime(1900, 1, 1))),
                       min_size=n, max_size=n).map(lambda v: pa.array(v, pa.timestamp("us"))),
    lambda n: st.lists(st.one_of(st.none(), st.dates(min_value=date(1, 1, 1))), min_size=n,
                       max_size=n).map(lambda v: pa.array(v, pa.date32())),
    lambda n: st.lists(st.one_of(st.none(), st.decimals(-999, 999, places=2)), min_size=n,
                       max_size=n).map(lambda v: pa.array([None if x is None else Decimal(x)
                                                           for x in v], pa.decimal128(7, 2))),
    lambda n: st.lists(st.one_of(st.none(), st.lists(st.integers(0, 9), max_size=3)),
                       min_size=n, max_size=n).map(lambda v: pa.array(v, pa.list_(pa.int8()))),
    lambda n: st.lists(st.fixed_dictionaries({"a": st.integers(0, 9),
                                              "t": st.one_of(st.none(), st.text(max_size=3))}),
                       min_size=n, max_size=n).map(pa.array),
    lambda n: st.just(pa.nulls(n)),
]


@st.composite
def arrow_table(draw: st.DrawFn) -> pa.Table:
    n = draw(st.integers(0, 5))
    names = draw(st.lists(COLUMN, min_size=1, max_size=5))
    columns = [draw(draw(st.sampled_from(ARROW_COLUMN))(n)) for _ in names]
    return pa.Table.from_arrays(columns, names=names)


@fuzz(120)
@given(table=arrow_table(), caption_col=st.sampled_from(["caption", None]))
def test_parquet_url_lists(table: pa.Table, caption_col: str | None) -> None:
    """Parquet with any column types (strings, dictionaries, numbers, binary, timestamps,
    dates, decimals, lists, structs, nulls) under any names: one row per row, or a
    CurateError."""
    buf = io.BytesIO()
    pq.write_table(table, buf)
    got = read_list(url_file("list.parquet", buf.getvalue()), caption_col=caption_col)
    names = table.column_names
    text_like = (len(set(names)) == len(names) and table.num_rows > 0
                 and clean_columns(names, caption_col)
                 and all(pa.types.is_string(table.column(c).type) for c in names))
    if text_like:
        assert isinstance(got, UrlList), got
    if isinstance(got, UrlList):
        given_uids = table.column("uid").to_pylist() if "uid" in names else None
        check_list(got, rows=table.num_rows, given=given_uids)


@fuzz(60)
@given(lines=st.lists(st.text(st.characters(exclude_categories=("Cs", "Zl", "Zp", "Cc")),
                              max_size=20), min_size=1, max_size=6))
def test_text_url_lists(lines: list[str]) -> None:
    got = read_list(url_file("list.txt", "\n".join(lines).encode()), caption_col=None)
    kept = [s.strip() for s in lines if s.strip()]
    if not kept:
        assert isinstance(got, CurateError)
        return
    assert isinstance(got, UrlList), got
    check_list(got, rows=len(kept), urls=kept)


def test_url_list_regressions() -> None:
    """What the fuzzing found: a JSON-lines list of one object was refused ("not a list of
    JSON objects"), a raw U+2028 inside a JSON-lines string split its line, and a deeply
    nested JSON list raised RecursionError."""
    one = read_list(url_file("one.jsonl", b'{"url": "http://x.invalid/a", "caption": "c"}\n'))
    assert isinstance(one, UrlList) and one.table.num_rows == 1
    sep = json.dumps({"url": "http://x.invalid/a", "caption": "a\u2028b"}, ensure_ascii=False)
    two = read_list(url_file("ls.jsonl", f"{sep}\n{sep}\n".encode()))
    assert isinstance(two, UrlList) and two.table.column("caption").to_pylist() == ["a\u2028b"] * 2
    for name, text in (("deep.json", "[" * 100_000 + "]" * 100_000),
                       ("deep.jsonl", '{"url": "a", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")):
        got = read_list(url_file(name, text.encode()))
        assert isinstance(got, CurateError) and "nested too deeply" in got.message


# --------------------------------------------------------------------------------------------
# 6. Pipeline and selection YAML

_YAML_DIR = Path(tempfile.gettempdir()) / f"curate-fuzz-yaml-{_SCRATCH}"
PIPELINES = {name: yaml.safe_load((REPO / "pipelines" / f"{name}.yaml").read_text())
             for name in ("basic", "demo")}
STAGE_NAMES = sorted({*registered("scorer"), *registered("rule"), *registered("selector")})
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                   st.sampled_from(["image_info", "caption_stats", "threshold", "exact_dedup",
                                    "datacomp_basic", "../../pipelines/basic", "x" * 300, "",
                                    "${x}", "${min}", "*", "s3://", "memory://x", "a::b"]))
YAML_VALUE = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.one_of(st.text(max_size=8), st.sampled_from(["name", "input", "score", "select",
                                                        "output", "run", "rule", "preset",
                                                        "selector", "column", "reason"]),
                  st.integers(), st.booleans(), st.none()), inner, max_size=4),
    max_leaves=25)


def load_both(text: str | bytes) -> None:
    """load_pipeline and load_selection of the file: a valid object, or a CurateError with a
    message; any other exception fails the test."""
    path = _YAML_DIR / "p.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    for load, kind in ((load_pipeline, Pipeline), (load_selection, Selection)):
        try:
            got = load(path)
        except CurateError as exc:
            assert exc.message.strip()
            continue
        assert isinstance(got, kind)


def dump(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


@fuzz(150)
@given(doc=YAML_VALUE)
def test_random_yaml_documents(doc: Any) -> None:
    load_both(dump(doc))


@fuzz(100)
@given(doc=st.dictionaries(st.sampled_from(["name", "input", "score", "select", "output",
                                            "run", "store", "rewrite", "description"]),
                           YAML_VALUE, min_size=1, max_size=6))
def test_random_pipeline_shaped_documents(doc: dict[str, Any]) -> None:
    load_both(dump(doc))


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, (*prefix, i))


def stage_params(name: str) -> st.SearchStrategy[dict[str, Any]]:
    """Random values for a stage's own parameters (for clip, without stored embeddings: their
    size would need the model's config, importing open_clip)."""
    for kind in ("scorer", "rule", "selector"):
        cls = registered(kind).get(name)  # type: ignore[arg-type]
        if cls is not None:
            keys = sorted(cls.Params.model_fields)
            params = st.dictionaries(st.sampled_from(keys), YAML_VALUE, max_size=3) if keys \
                else st.just({})
            return params.map(lambda d: {**d, "embeddings": False}) if name == "clip" \
                else params
    return st.dictionaries(st.text(max_size=5), YAML_VALUE, max_size=2)


def real_pipeline(name: str) -> dict[str, Any]:
    doc = copy.deepcopy(PIPELINES[name])
    for item in doc["score"]:
        if isinstance(item, dict) and "clip" in item:
            item["clip"]["embeddings"] = False
    return doc


@st.composite
def mutated_pipeline(draw: st.DrawFn) -> Any:
    """A real pipeline with 1 to 4 edits: a key dropped, a value replaced by any value, a step
    replaced by a random stage (a registered name or not) with random parameters, random
    parameters added to a step, a key or list item added."""
    doc: Any = real_pipeline(draw(st.sampled_from(sorted(PIPELINES))))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(list(paths(doc))))
        if not where:
            doc = draw(YAML_VALUE)
            continue
        parent: Any = doc
        for part in where[:-1]:
            parent = parent[part]
        last = where[-1]
        op = draw(st.sampled_from(["drop", "replace", "stage", "params", "add"]))
        if op == "drop":
            del parent[last]
        elif op == "replace":
            parent[last] = draw(YAML_VALUE)
        elif op in ("stage", "params"):
            name = draw(st.one_of(st.sampled_from(STAGE_NAMES), st.text(max_size=10)))
            params = draw(stage_params(name))
            if op == "params" and isinstance(parent[last], dict):
                parent[last].update(params)
            else:
                kind = draw(st.sampled_from(["scorer", "rule", "selector", "preset"]))
                parent[last] = {name: params} if kind == "scorer" else {kind: name, **params}
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(YAML_VALUE)
        else:
            parent.insert(last, draw(YAML_VALUE))
    return without_clip_embeddings(doc)


def without_clip_embeddings(value: Any) -> Any:
    """``value`` with every clip scorer storing no embeddings: their size needs the model's
    config, and so a 10-second import of open_clip, for one example."""
    if isinstance(value, list):
        return [{"clip": {"embeddings": False}} if v == "clip" else without_clip_embeddings(v)
                for v in value]
    if isinstance(value, dict):
        out = {k: without_clip_embeddings(v) for k, v in value.items()}
        if "clip" in out and (out["clip"] is None or isinstance(out["clip"], dict)):
            out["clip"] = {**(out["clip"] or {}), "embeddings": False}
        return out
    return value


@fuzz(150)
@given(doc=mutated_pipeline())
def test_mutated_real_pipelines(doc: Any) -> None:
    """pipelines/basic.yaml and demo.yaml with keys dropped, values of other types, random
    stage names and parameters."""
    load_both(dump(doc))


YAML_SNIPPETS = st.sampled_from([
    "&a [x, *a]", "*undefined", "!!python/object:os.system {}", "!!python/name:os.system",
    "!!set {a, b}", "!!binary aGVsbG8=", "!!omap [{a: 1}]", "!!pairs [[a, 1]]", "!foo bar",
    "!!timestamp 2020-01-01", "!!float nan", ".inf", "<<: *base", "? [a, b]\n: c",
    "'unterminated", "{a: 1, a: 2}", "\t", "%YAML 1.1\n---", "---\n---", "... ", "@", "`",
    "a: b: c", "- - - -", "[" * 3000 + "]" * 3000, "{a: " * 3000 + "1" + "}" * 3000,
    "x: &r\n  - *r", "\x00", "\ufeff", "é: ü", "? |\n  long\n: v", "&a a: 1",
    "score: &s [image_info]\nselect: *s", "input: !!str {shards: x}"])


@fuzz(150)
@given(base=st.sampled_from(["basic", "demo", "selections/strict_captions"]), data=st.data())
def test_real_pipeline_text_mutations(base: str, data: st.DataObject) -> None:
    """The text of real pipeline files with snippets (anchors, aliases, tags, unterminated
    quotes, deep nesting, NUL), random characters or random bytes spliced in."""
    text = (REPO / "pipelines" / f"{base}.yaml").read_bytes()
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        piece = data.draw(st.one_of(YAML_SNIPPETS.map(str.encode), st.binary(max_size=8),
                                    st.text(max_size=8).map(str.encode)))
        cut = data.draw(st.integers(0, 20))
        text = text[:at] + piece + text[at + cut:]
    load_both(text)


def test_yaml_regressions() -> None:
    """What the fuzzing found: YAML nested thousands deep raised RecursionError; a preset
    given parameters whose names are not all strings raised TypeError; a preset name that
    walks out of the preset folder loaded any YAML file and raised KeyError; ``!!set`` was
    taken as a list in an order that changes from run to run; a value that does not fit its
    tag raised whatever PyYAML's constructor raised."""
    for text in ("[" * 5000 + "]" * 5000, "a: " + "{b: " * 3000 + "1" + "}" * 3000):
        path = _YAML_DIR / "deep.yaml"
        path.write_text(text)
        with pytest.raises(CurateError, match="nested too deeply"):
            load_pipeline(path)
    base = "input: {shards: x}\nscore: [caption_stats]\nselect:\n  - preset: "
    for step, match in (("datacomp_basic\n    1: 2\n    a: 3\n", "has no parameter"),
                        ("../../pipelines/basic\n", "unknown preset"),
                        ("../presets/datacomp_basic\n", "unknown preset")):
        path = _YAML_DIR / "preset.yaml"
        path.write_text(base + step)
        with pytest.raises(CurateError, match=match):
            load_pipeline(path)
    # A set has no order: its scorers would run in a different order from run to run.
    path = _YAML_DIR / "set.yaml"
    path.write_text("input: {shards: x}\nscore: !!set {caption_stats, image_info}\n")
    with pytest.raises(CurateError, match="tag !!set is not allowed"):
        load_pipeline(path)
    # PyYAML's constructors fail with ValueError, KeyError, IndexError or AttributeError on a
    # value that does not fit its explicit tag.
    for value, tag in (("!!int x", "!!int"), ("!!float ''", "!!float"), ("!!bool maybe", "!!bool"),
                       ("!!timestamp 2020-01-01# x", "!!timestamp"), ("!!map x", "!!map")):
        path.write_text(f"input: {{shards: x}}\nscore: [image_info]\nname: {value}\n")
        with pytest.raises(CurateError, match=f"line 3, column 7: the value is not a valid {tag}"):
            load_selection(path)


# --------------------------------------------------------------------------------------------
# 7. One scoring pass over damaged shards, without Ray


def _pool_members(shard: int) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for i in range(4):
        out += sample_members(f"{shard}{i:03d}", jpeg(24 + i, 16, (i * 60, 30, shard * 90),
                                                      quality=60),
                              f"a small photograph number {i} of shard {shard}",
                              {"url": f"https://x.invalid/{shard}/{i}"})
    return out


DAMAGE = st.one_of(
    st.tuples(st.just("cut"), st.floats(0.05, 1.0)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)),
                                        min_size=1, max_size=3)),
    st.tuples(st.just("header"), st.integers(0, 11)),
    st.tuples(st.just("none"), st.none()))


def damage(data: bytes, how: tuple[str, Any]) -> bytes:
    kind, arg = how
    out = bytearray(data)
    if kind == "cut":
        return bytes(out[:max(512 * 4, int(len(out) * arg))])
    if kind == "flip":
        for where, value in arg:
            out[min(len(out) - 1, int(where * len(out)))] ^= value
    if kind == "header":
        m = layout(data)[arg]
        out[m.offset:m.offset + 512] = hashlib.sha512(bytes([arg])).digest() * 8
    return bytes(out)


@fuzz(8)
@given(first=DAMAGE, second=DAMAGE)
def test_scoring_damaged_shards_accounts_for_every_sample(first: tuple[str, Any],
                                                         second: tuple[str, Any]) -> None:
    """``score`` (in process) then ``select`` on a two-shard pool, each shard cut short, with
    flipped bytes or with a corrupt header: the run ends, and every sample the reader sees
    is in the manifest exactly once, ok or an error with a reason."""
    from curate.runner import score, select

    with tempfile.TemporaryDirectory(prefix="curate-fuzz-run-") as tmp:
        root = Path(tmp)
        seen: Counter[tuple[str, int, str]] = Counter()
        for n, how in enumerate((first, second)):
            path = write_tar(root / "pool" / f"{n:05d}.tar", _pool_members(n))
            path.write_bytes(damage(path.read_bytes(), how))
            rd = ShardReader(ShardRef(str(path), path.name), batch_size=3)
            seen.update((r["shard"], r["index"], r["key"]) for b in rd for r in b.to_pylist())
        pipeline = pipeline_from_dict({
            "name": "fuzz", "input": {"shards": str(root / "pool" / "*.tar")},
            "score": ["image_info", "caption_stats", "exact_hash"],
            "select": [{"rule": "threshold", "column": "caption_words", "gt": 2,
                        "reason": "short"}, {"selector": "exact_dedup"}],
            "output": {"write_shards": False}, "run": {"batch_size": 3}})
        score(pipeline, root / "store", local=True, progress=False)
        result = select(root / "store", pipeline, root / "sel", progress=False)
        manifest = pq.read_table(result.dir / "manifest").to_pylist()
        got = Counter((r["shard"], r["index"], r["key"]) for r in manifest)
        assert got == seen
        assert result.samples == len(manifest) == sum(seen.values())
        for r in manifest:
            assert r["status"] in ("ok", "error")
            if r["status"] == "error":
                assert r["error"] and r["reason"] == f"error:{r['error_stage']}"
                assert not r["kept"]
            assert r["kept"] == (r["reason"] is None)
        assert len({r["uid"] for r in manifest}) == len(manifest)


def test_fuzz_helpers_agree_with_a_clean_read() -> None:
    """The test's own model of a clean shard is the reader's: keys, contents and statuses."""
    for members in (small_members(), three_samples(), three_samples(meta=False)):
        shard = Shard.of(members)
        rd = read(shard.data)
        check_rows(rd)
        assert [row_content(r) for r in rd.rows] == shard.expected()
        assert all(r["status"] == "ok" for r in rd.rows)
