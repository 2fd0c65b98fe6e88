"""A small pool laid out as DataComp ships and downloads it, made here (no download):

* ``shards/{i:08d}.tar``: img2dataset's webdataset output (jpg resized so the long side is at
  most 512, txt, json with img2dataset's keys: url, key, caption, status, width, height,
  original_width, original_height, sha256, uid), ``{i:08d}_stats.json`` ({"successes": n}) and
  img2dataset's per-shard ``{i:08d}.parquet``;
* ``metadata/part-{j}.parquet``: DataComp's released metadata (uid, url, text, original_width,
  original_height, clip_b32_similarity_score, clip_l14_similarity_score, face_bboxes, sha256)
  in another order and split than the shards, as the release is.

Captions mix English and other languages, short ones, Unicode spaces; original sizes include
images that are small only after resizing (1500×500 stored as 512×171) and extreme aspect
ratios; similarity scores are float32 with ties; some images have face boxes.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ENGLISH = ["a red circle on a blue background", "photo of a dog running on the beach",
           "a cat sleeping on the sofa at home", "two people walking in the park at sunset",
           "close up of a green apple on a table", "vintage poster of a mountain landscape"]
OTHER = ["ein Hund läuft am Strand entlang", "un chat qui dort sur le canapé",
         "un perro corriendo en la playa", "gatto che dorme sul divano di casa"]
SHORT = ["dog", "a cat", "hi", "red car"]
SIZES = [(1500, 500), (800, 600), (640, 480), (300, 180), (2000, 2000), (250, 900),
         (600, 200), (199, 400), (1024, 341), (512, 512), (4000, 1000), (220, 660)]


@dataclass(frozen=True)
class DataCompPool:
    root: Path
    shards: Path
    metadata: Path
    uids: list[str]


def _caption(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.5:
        text = rng.choice(ENGLISH)
    elif r < 0.7:
        text = rng.choice(OTHER)
    elif r < 0.85:
        text = rng.choice(SHORT)
    else:
        text = rng.choice(ENGLISH).replace(" ", rng.choice(["\xa0", "\u2003", " \n"]))
    return text


def _resized(width: int, height: int, long_side: int = 512) -> tuple[int, int]:
    scale = min(1.0, long_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _jpeg(size: tuple[int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def make_datacomp_pool(root: Path, shards: int = 2, per_shard: int = 40, seed: int = 0,
                       face_every: int = 5) -> DataCompPool:
    rng = random.Random(seed)
    shard_dir, meta_dir = root / "shards", root / "metadata"
    shard_dir.mkdir(parents=True)
    meta_dir.mkdir(parents=True)
    rows: list[dict[str, object]] = []
    for s in range(shards):
        members: list[tuple[str, bytes]] = []
        i2d_rows = []
        for i in range(per_shard):
            n = s * per_shard + i
            key = f"{s:04d}{i:04d}"
            uid = hashlib.md5(f"{seed}-{n}".encode()).hexdigest()
            ow, oh = SIZES[n % len(SIZES)]
            w, h = _resized(ow, oh)
            image = _jpeg((w, h), n)
            caption = _caption(rng)
            url = f"http://example.com/{n}.jpg"
            sha = hashlib.sha256(image).hexdigest()
            meta = {"url": url, "key": key, "caption": caption, "status": "success",
                    "error_message": None, "width": w, "height": h, "original_width": ow,
                    "original_height": oh, "exif": "{}", "sha256": sha, "uid": uid}
            members += [(f"{key}.jpg", image), (f"{key}.txt", caption.encode()),
                        (f"{key}.json", json.dumps(meta).encode())]
            i2d_rows.append(meta)
            score_b32 = np.float32(round(rng.uniform(0.1, 0.4), 3))
            score_l14 = np.float32(round(rng.uniform(0.1, 0.4), 2))  # 2 decimals: ties
            faces = [[0.1, 0.1, 0.4, 0.5]] if n % face_every == 0 else []
            rows.append({"uid": uid, "url": url, "text": caption, "original_width": ow,
                         "original_height": oh, "clip_b32_similarity_score": score_b32,
                         "clip_l14_similarity_score": score_l14, "face_bboxes": faces,
                         "sha256": sha})
        _tar(shard_dir / f"{s:08d}.tar", members)
        (shard_dir / f"{s:08d}_stats.json").write_text(json.dumps({"successes": per_shard}))
        pq.write_table(pa.Table.from_pylist(i2d_rows), shard_dir / f"{s:08d}.parquet")
    schema = pa.schema({"uid": pa.string(), "url": pa.string(), "text": pa.string(),
                        "original_width": pa.int64(), "original_height": pa.int64(),
                        "clip_b32_similarity_score": pa.float32(),
                        "clip_l14_similarity_score": pa.float32(),
                        "face_bboxes": pa.list_(pa.list_(pa.float64())), "sha256": pa.string()})
    order = sorted(rows, key=lambda r: str(r["uid"]))  # the release is not in shard order
    parts = np.array_split(np.arange(len(order)), 3)
    for j, idx in enumerate(parts):
        pq.write_table(pa.Table.from_pylist([order[k] for k in idx], schema=schema),
                       meta_dir / f"part-{j}.parquet")
    return DataCompPool(root, shard_dir, meta_dir, [str(r["uid"]) for r in rows])
