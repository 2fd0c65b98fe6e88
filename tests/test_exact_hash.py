from __future__ import annotations

import hashlib

from stagetest import score

from curate.stages.exact_hash import ExactHash


def test_hashes_url_caption() -> None:
    rows = [{"image": b"abc", "url": "u1", "caption": "c"},
            {"image": b"abc", "url": "u2", "caption": "c"},
            {"image": b"xyz", "url": "u1", "caption": "c"},
            {"image": b"xyz", "url": None, "caption": "c"}]
    out, _ = score(ExactHash(), rows)
    assert set(out[0]) == {"url_caption_sha256"}  # image_sha256 is the reader's
    assert out[0]["url_caption_sha256"] == hashlib.sha256(b"u1\0c").hexdigest()
    assert out[0]["url_caption_sha256"] == out[2]["url_caption_sha256"]
    assert out[0]["url_caption_sha256"] != out[1]["url_caption_sha256"]
    assert out[3]["url_caption_sha256"] is None
