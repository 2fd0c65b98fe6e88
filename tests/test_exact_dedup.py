from __future__ import annotations

from stagetest import run_selector

from curate.stages.exact_dedup import ExactDedup, ExactDedupParams


def rows() -> list[dict[str, object]]:
    return [
        {"uid": "a", "image_sha256": "h1", "url_caption_sha256": "p1"},
        {"uid": "b", "image_sha256": "h1", "url_caption_sha256": "p2"},  # same image as a
        {"uid": "c", "image_sha256": "h2", "url_caption_sha256": "p1"},  # same pair as a
        {"uid": "d", "image_sha256": "h3", "url_caption_sha256": None},
        {"uid": "e", "image_sha256": "h3", "url_caption_sha256": None},  # same image as d
    ]


def test_first_in_pool_order_is_kept_and_duplicates_name_it() -> None:
    out = run_selector(ExactDedup(), rows())
    assert [(r["uid"], r["reason"], r["duplicate_of"]) for r in out] == [
        ("a", None, None), ("b", "duplicate_image", "a"), ("c", "duplicate_url_caption", "a"),
        ("d", None, None), ("e", "duplicate_image", "d")]


def test_only_rows_still_kept_take_part() -> None:
    data = rows()
    data[0]["reason"] = "dropped_earlier"
    import duckdb  # noqa: F401  (run_selector builds the table)

    out = run_selector(ExactDedup(ExactDedupParams(by=["image"])), [
        {k: v for k, v in r.items() if k != "reason"} for r in data])
    assert out[1]["reason"] == "duplicate_image"  # a was kept here, so b duplicates it
