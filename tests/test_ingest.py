"""URL-list input downloaded by img2dataset from a local HTTP server on 127.0.0.1, with 404s,
a response slower than the timeout and a page that is not an image: every URL is one manifest
row, downloaded images are stored byte for byte, rows appended to the list are downloaded on the
next run (and nothing else is), uids do not depend on where a row lands, and two downloads of
one list give the same bytes."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import tarfile
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from http_server import LocalServer
from PIL import Image

from curate.config import InputConfig, pipeline_from_dict
from curate.errors import CurateError
from curate.ingest.download import download
from curate.ingest.urls import assign_uids, read_url_list, row_uid
from curate.io.shards import ShardReader
from curate.runner import run


def photo(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (320 + i, 240), (i * 40 % 255, 90, 200)).save(buf, "JPEG", quality=91)
    return buf.getvalue()


def url_input(urls: Path, **settings: object) -> InputConfig:
    download = settings.pop("download", {})
    p = pipeline_from_dict({"input": {"urls": str(urls), "download": download, **settings},
                            "score": ["image_info"]})
    return p.input


def manifest(result_dir: Path) -> dict[str, tuple]:
    """uid → (url, reason, error_stage, error) of a selection's manifest."""
    con = duckdb.connect()
    return {r[0]: r[1:] for r in con.execute(f"""
        SELECT uid, url, reason, error_stage, error FROM '{result_dir}/manifest/*.parquet'
        """).fetchall()}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_url_list_download(tmp_path: Path, ray_local: None) -> None:
    images = {f"{i}.jpg": photo(i) for i in range(7)}
    with LocalServer(images, slow_seconds=4.0) as srv:
        rows = [{"url": f"{srv.base}/img/{i}.jpg", "caption": f"a photo of a blue tile number {i}",
                 "uid": f"{i + 1:032x}"} for i in range(7)]
        rows += [
            {"url": f"{srv.base}/img/missing.jpg", "caption": "a photo that is not there",
             "uid": f"{100:032x}"},
            {"url": f"{srv.base}/page/index", "caption": "a web page instead of an image",
             "uid": f"{101:032x}"},
            {"url": f"{srv.base}/slow/0.jpg", "caption": "a server slower than the timeout",
             "uid": f"{102:032x}"},
        ]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
        pipeline = pipeline_from_dict({
            "name": "ingest",
            "input": {"urls": str(tmp_path / "urls.parquet"),
                      "download": {"timeout": 2, "samples_per_shard": 4, "thread_count": 4}},
            "score": ["image_info", "caption_stats", "language", "exact_hash"],
            "select": [{"preset": "datacomp_basic"}, {"selector": "exact_dedup"}],
        })
        result = run(pipeline, tmp_path / "run", progress=False)
        requests = len(srv.requested())

        got = manifest(result.dir)
        assert result.samples == len(got) == 10  # one row per URL
        assert set(got) == {r["uid"] for r in rows}  # the list's uid column is the sample uid
        for i in range(7):
            assert got[f"{i + 1:032x}"][1] is None
        missing, page, slow = got[f"{100:032x}"], got[f"{101:032x}"], got[f"{102:032x}"]
        assert missing[1:3] == ("error:download", "download") and "404" in missing[3]
        assert slow[1:3] == ("error:download", "download") and "timed out" in slow[3].lower()
        assert page[1:3] == ("error:image_info", "image_info")  # downloaded, not an image
        # The download directory holds the shards and nothing else; images are stored exactly
        # as served.
        dest = tmp_path / "run" / "store" / "download"
        assert sorted(p.name for p in dest.iterdir()) == [
            f"0000{i}.{ext}" for i in range(3) for ext in ("parquet", "tar")]
        served = set(images.values())
        for tar_path in sorted((result.dir / "output").glob("*.tar")):
            with tarfile.open(tar_path) as tar:
                jpgs = [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]  # type: ignore[union-attr]
                assert jpgs and all(j in served for j in jpgs)
        # A rerun downloads nothing again and resumes every shard.
        again = run(pipeline, tmp_path / "run", progress=False)
        assert again.shards_resumed == 3 and again.kept == result.kept
        assert len(srv.requested()) == requests


@pytest.mark.slow
def test_appended_rows_are_downloaded_on_rerun(tmp_path: Path, ray_local: None) -> None:
    images = {f"{i}.jpg": photo(i) for i in range(5)}
    listing = tmp_path / "urls.csv"
    with LocalServer(images) as srv:
        rows = [{"url": f"{srv.base}/img/{i}.jpg", "caption": f"a blue tile number {i}"}
                for i in range(5)]
        pcsv.write_csv(pa.Table.from_pylist(rows[:3]), listing)
        pipeline = pipeline_from_dict({
            "name": "append",
            "input": {"urls": str(listing),
                      "download": {"timeout": 2, "samples_per_shard": 2, "thread_count": 2}},
            "score": ["image_info"], "output": {"write_shards": False}})
        first = manifest(run(pipeline, tmp_path / "out", progress=False).dir)
        dest = tmp_path / "out" / "store" / "download"
        before = {p.name: digest(p) for p in dest.iterdir()}
        seen = len(srv.requested())
        assert sorted(srv.requested()) == [f"/img/{i}.jpg" for i in range(3)]

        pcsv.write_csv(pa.Table.from_pylist(rows), listing)  # two rows appended
        result = run(pipeline, tmp_path / "out", progress=False)
        second = manifest(result.dir)

    assert len(first) == 3 and len(second) == result.samples == 5
    assert {u: second[u] for u in first} == first  # old uids (and their rows) unchanged
    assert sorted(v[0] for v in second.values()) == sorted(r["url"] for r in rows)
    assert all(v[1] is None for v in second.values())  # every image kept
    assert sorted(srv.requested()[seen:]) == ["/img/3.jpg", "/img/4.jpg"]  # only the new rows
    # The earlier shards are untouched; the new rows went into a new shard.
    assert {n: digest(dest / n) for n in before} == before
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [*before, "00002.parquet", "00002.tar"])


@pytest.mark.slow
def test_download_is_byte_reproducible_and_keeps_every_row(tmp_path: Path,
                                                             ray_local: None) -> None:
    images = {f"{i}.jpg": photo(i) for i in range(5)}
    with LocalServer(images, slow_seconds=3.0) as srv:
        b = srv.base
        rows = [
            (f"{b}/img/0.jpg", "tile zero"),
            (f"{b}/img/missing.jpg", "a 404"),
            (f"{b}/img/1.jpg", "tile one"),
            (f"{b}/slow/2.jpg", "slower than the timeout"),
            (f"{b}/img/2.jpg", "tile two"),
            (None, "a row without a URL"),
            (f"{b}/page/x", "a page, not an image"),
            (f"{b}/img/3.jpg", "tile three"),
            ("file:///etc/hostname", "not an http URL"),
            (f"{b}/img/4.jpg", "tile four"),
            (f"{b}/img/0.jpg", "tile zero"),  # the same pair again: its own sample
        ]
        listing = tmp_path / "urls.parquet"
        pq.write_table(pa.table({"url": [r[0] for r in rows], "caption": [r[1] for r in rows],
                                 "license": [f"cc-{i}" for i in range(len(rows))]}), listing)
        cfg = url_input(listing, download={"timeout": 1, "samples_per_shard": 4,
                                           "thread_count": 4})
        a = download(cfg, tmp_path / "a")
        b_refs = download(cfg, tmp_path / "b")
        requests = srv.requested()
        assert download(cfg, tmp_path / "a") == a  # nothing new: nothing downloaded
        assert srv.requested() == requests

    assert [r.shard_id for r in a] == [r.shard_id for r in b_refs] == [
        "00000.tar", "00001.tar", "00002.tar"]
    for ra, rb in zip(a, b_refs, strict=True):
        assert Path(ra.url).read_bytes() == Path(rb.url).read_bytes()
        assert Path(ra.failures).read_bytes() == Path(rb.failures).read_bytes()  # type: ignore[arg-type]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        f"0000{i}.{ext}" for i in range(3) for ext in ("parquet", "tar")]
    # Each URL was requested once per download; rows that are not http(s) never.
    assert sorted(requests) == sorted(2 * [r[0][len(b):] for r in rows
                                          if r[0] and r[0].startswith(b)])
    # Canonical tars: samples in key order, fixed member metadata, keys of the final shard.
    for ref in a:
        with tarfile.open(ref.url) as tar:
            members = tar.getmembers()
            assert [m.name for m in members] == sorted(m.name for m in members)
            assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
                (0, 0, 0, "", "", 0o644)}
            for m in members:
                assert m.name.startswith(ref.shard_id[:5])
                if m.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(m).read())  # type: ignore[union-attr]
                    assert meta["key"] == m.name.split(".")[0]
    # Every row is one sample, in list order, with the list's other columns.
    uids = read_url_list(cfg).uids
    samples = [s for ref in a for batch in ShardReader(ref) for s in batch.to_pylist()]
    assert [s["uid"] for s in samples] == uids and len(set(uids)) == len(rows)
    assert [s["url"] for s in samples] == [r[0] for r in rows]
    errors = {i: s["error"] for i, s in enumerate(samples) if s["status"] == "error"}
    assert sorted(errors) == [1, 3, 5, 8]
    assert "404" in errors[1] and "timed out" in errors[3].lower()
    assert "no URL" in errors[5] and "not an http(s) URL" in errors[8]
    assert all(samples[i]["error_stage"] == "download" for i in errors)
    assert [s["image"] for s in samples if s["status"] == "ok" and "tile" in s["caption"]] == [
        images[f"{i}.jpg"] for i in (0, 1, 2, 3, 4, 0)]
    assert json.loads(samples[0]["json"])["license"] == "cc-0"


def test_rows_already_downloaded_are_not_downloaded_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The ledger is the uid column of the finished shards in the directory; nothing here
    starts img2dataset (the URLs point at a closed port)."""
    listing = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": [f"http://127.0.0.1:9/{i}.jpg" for i in range(3)],
                             "caption": ["a", "b", "c"]}), listing)
    cfg = url_input(listing)
    dest = tmp_path / "d"
    dest.mkdir()
    with tarfile.open(dest / "00000.tar", "w"):
        pass
    uids = read_url_list(cfg).uids
    gone = row_uid("http://127.0.0.1:9/old.jpg", "removed from the list", 0)
    pq.write_table(pa.table({"uid": [*uids, gone], "key": ["0", "1", "2", "3"],
                             "status": ["failed_to_download"] * 4}), dest / "00000.parquet")
    (dest / "00001.tar").write_bytes(b"a tar whose parquet was never written")
    with caplog.at_level(logging.WARNING, logger="curate"):
        refs = download(cfg, dest)
    assert [(r.shard_id, r.failures) for r in refs] == [("00000.tar", str(dest / "00000.parquet"))]
    assert not (dest / "00001.tar").exists()  # an unfinished shard is removed
    assert "1 rows downloaded" in caplog.text and "no longer in" in caplog.text

    pq.write_table(pa.table({"key": ["0"], "status": ["success"]}), dest / "00000.parquet")
    with pytest.raises(CurateError, match="no uid column"):
        download(cfg, dest)


def test_url_list_errors_are_clear(tmp_path: Path) -> None:
    pcsv.write_csv(pa.table({"link": ["http://127.0.0.1:9/x.jpg"]}), tmp_path / "u.csv")
    with pytest.raises(CurateError, match=r"no column 'url' \(columns: link\)"):
        download(url_input(tmp_path / "u.csv"), tmp_path / "d")
    with pytest.raises(CurateError, match=r"no column 'text' \(columns: link\)"):
        download(url_input(tmp_path / "u.csv", url_col="link", caption_col="text"), tmp_path / "d")
    with pytest.raises(CurateError, match="does not exist"):
        download(url_input(tmp_path / "nope.parquet"), tmp_path / "d")
    (tmp_path / "u.dat").write_text("http://127.0.0.1:9/x.jpg\n")
    with pytest.raises(CurateError, match="cannot tell the format"):
        download(url_input(tmp_path / "u.dat"), tmp_path / "d")
    pcsv.write_csv(pa.table({"url": pa.array([], pa.string())}), tmp_path / "empty.csv")
    (tmp_path / "empty.txt").write_text("\n\n")
    for empty in ("empty.csv", "empty.txt"):
        with pytest.raises(CurateError, match="has no rows"):
            download(url_input(tmp_path / empty, caption_col=None), tmp_path / "d")
    pq.write_table(pa.table({"url": ["http://x/a.jpg"], "caption": ["c"], "status": ["s"]}),
                   tmp_path / "r.parquet")
    with pytest.raises(CurateError, match="columns named status"):
        download(url_input(tmp_path / "r.parquet"), tmp_path / "d")
    (tmp_path / "bad.json").write_text('{"url": "http://x/a.jpg"')
    with pytest.raises(CurateError, match="neither a JSON array nor JSON lines"):
        download(url_input(tmp_path / "bad.json"), tmp_path / "d")
    assert not (tmp_path / "d").exists()  # nothing is created for a list that cannot be read


def test_uids_follow_the_rows_not_their_place(tmp_path: Path) -> None:
    rows = [{"url": f"http://example.com/{i}.jpg", "caption": f"photo {i} ✓"} for i in range(4)]
    rows.append(dict(rows[0]))  # the same pair twice

    def uids(rows: list[dict], name: str, **settings: object) -> list[str]:
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / name)
        return read_url_list(url_input(tmp_path / name, **settings)).uids

    a = uids(rows, "a.parquet")
    assert len(set(a)) == 5  # the repeated pair is two samples
    shuffled = [4, 2, 0, 3, 1]
    got = uids([rows[i] for i in shuffled], "shuffled.parquet")
    assert sorted(got) == sorted(a)
    assert [got[shuffled.index(i)] for i in (1, 2, 3)] == a[1:4]  # each row keeps its uid
    assert uids(rows[:3], "prefix.parquet") == a[:3]  # appending keeps the uids before
    other = [{"url": f"http://example.org/{i}.jpg", "caption": f"photo {i} ✓"} for i in range(4)]
    assert not set(uids(other, "other.parquet")) & set(a)  # unrelated lists: disjoint uids
    assert not set(uids([{**r, "caption": r["caption"] + "!"} for r in rows], "c.parquet")) & set(a)
    # Other columns do not enter the uid; the same rows give the same uids in every format.
    assert uids([{**r, "license": "cc-by"} for r in rows], "extra.parquet") == a
    table = pa.Table.from_pylist(rows)
    pcsv.write_csv(table, tmp_path / "l.csv")
    pcsv.write_csv(table, tmp_path / "l.tsv", pcsv.WriteOptions(delimiter="\t"))
    (tmp_path / "l.json").write_text(json.dumps(rows))
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for name in ("l.csv", "l.tsv", "l.json", "l.jsonl"):
        assert read_url_list(url_input(tmp_path / name)).uids == a, name
    (tmp_path / "l.txt").write_text("".join(r["url"] + "\n" for r in rows))
    only_urls = [{"url": r["url"]} for r in rows]
    assert read_url_list(url_input(tmp_path / "l.txt")).uids == uids(only_urls, "u.parquet",
                                                                      caption_col=None)
    # A valid uid column value wins (normalised); any other value is replaced by the derived one.
    given = [{**r, "uid": u} for r, u in zip(rows, [f" {1:032X} ", "nope", None, f"{1:032x}", ""],
                                             strict=True)]
    got = uids(given, "given.parquet")
    assert got[0] == got[3] == f"{1:032x}"  # a repeated uid stays (selection drops the later)
    assert got[1:3] == a[1:3] and got[4] == row_uid(rows[4]["url"], rows[4]["caption"], 0)
    pcsv.write_csv(pa.Table.from_pylist(given), tmp_path / "given.csv")
    assert read_url_list(url_input(tmp_path / "given.csv")).uids == got  # "0…01" stays text


def test_uid_properties() -> None:
    """Random lists (unicode, duplicates, nulls): every row has its own uid, and shuffling or
    appending rows never changes the uid of a row."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    text = st.one_of(st.none(), st.text(max_size=12))
    pairs = st.lists(st.tuples(st.sampled_from(["http://a/1", "http://a/2", ""]) | text, text),
                     max_size=30)

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(pairs, pairs, st.randoms(use_true_random=False))
    def check(rows: list, more: list, rnd: random.Random) -> None:
        uids = assign_uids([u for u, _ in rows], [c for _, c in rows])
        assert len(set(uids)) == len(rows)
        assert all(len(u) == 32 and int(u, 16) >= 0 and u == u.lower() for u in uids)
        longer = rows + more
        assert assign_uids([u for u, _ in longer], [c for _, c in longer])[:len(rows)] == uids
        order = list(range(len(rows)))
        rnd.shuffle(order)
        shuffled = assign_uids([rows[i][0] for i in order], [rows[i][1] for i in order])
        assert sorted(shuffled) == sorted(uids)
        # A row that occurs once keeps its very uid wherever it moves.
        for pos, i in enumerate(order):
            if rows.count(rows[i]) == 1:
                assert shuffled[pos] == uids[i]
        # Two lists share exactly the uids of the (url, caption, n) rows they share.
        other = assign_uids([u for u, _ in more], [c for _, c in more])
        assert len(set(uids) & set(other)) == sum(
            min(rows.count(p), more.count(p)) for p in set(rows))

    check()
