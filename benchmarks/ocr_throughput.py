"""OCR throughput per core: detection only, detection + recognition, RapidOCR's defaults.

On the demo pool's images (generated here, seed 0), one thread (so the figures are per core),
images decoded beforehand the way the ocr scorer decodes them (JPEG DCT scaling to the detector's
input size):

  det_only:      curate's settings, detection alone, on the text posters;
  det_rec:       curate's settings, detection then recognition of the boxes, on the posters;
  default:       RapidOCR() with its default settings (angle classifier on, its own input size),
                 on the posters: the baseline;
  textfree_pool: curate's settings (recognition only where text was detected) on the whole
                 pool, where most images have no text, compared with detection alone on the
                 same pool: such a pool must cost close to detection only.

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curate.demo.generator import make_demo_pool
from curate.io.shards import ShardReader, list_shards
from curate.stages.ocr import Ocr


def load_images(pool: Path, side: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(posters, whole pool) as RGB arrays, decoded as the ocr scorer decodes them."""
    truth = pq.read_table(pool / "ground_truth.parquet", columns=["uid", "kind"]).to_pylist()
    kinds = {r["uid"]: r["kind"] for r in truth}
    decoder = Ocr(Ocr.Params(limit_side_len=side))
    posters, everything = [], []
    for ref in list_shards(str(pool / "*.tar")):
        for batch in ShardReader(ref):
            for r in batch.select(["uid", "image"]).to_pylist():
                if kinds.get(r["uid"]) in ("corrupt", None):
                    continue
                arr = np.asarray(decoder._decode(r["image"]))
                everything.append(arr)
                if kinds[r["uid"]] == "parrot":
                    posters.append(arr)
    return posters, everything


def rate(engine: Any, images: list[np.ndarray], **kw: Any) -> float:
    engine(images[0], **kw)  # warm-up
    t0 = time.perf_counter()
    for im in images:
        engine(im, **kw)
    return len(images) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", type=int, default=640, help="detector input (longest side)")
    args = ap.parse_args()
    from rapidocr import RapidOCR

    with tempfile.TemporaryDirectory() as tmp:
        pool = make_demo_pool(Path(tmp) / "pool").out_dir
        posters, everything = load_images(pool, args.side)
    stage = Ocr(Ocr.Params(limit_side_len=args.side, threads=1))
    stage.setup()
    ours = stage._engine
    default = RapidOCR(params={"EngineConfig.onnxruntime.intra_op_num_threads": 1,
                               "Global.log_level": "critical"})
    # RapidOCR keeps per-call flags as state: every call below states them all.
    det = {"use_det": True, "use_cls": False, "use_rec": False}
    full = {"use_det": True, "use_cls": False, "use_rec": True}
    det_only = rate(ours, posters, **det)
    det_rec = rate(ours, posters, **full)
    base = rate(default, posters, use_det=True, use_cls=True, use_rec=True)
    pool_full = rate(ours, everything, **full)
    pool_det = rate(ours, everything, **det)
    text_share = len(posters) / len(everything)
    print(f"posters ({len(posters)} images): detection only {det_only:.1f} img/s/core, "
          f"detection + recognition {det_rec:.1f}, RapidOCR defaults {base:.1f} "
          f"(ours {det_rec / base:.2f}x the default)")
    print(f"pool ({len(everything)} images, {100 * text_share:.0f}% with text): full "
          f"{pool_full:.1f} img/s/core vs detection only {pool_det:.1f} "
          f"({pool_full / pool_det:.2f} of detection-only speed)")
    print(json.dumps({"det_only_ips": round(det_only, 2), "det_rec_ips": round(det_rec, 2),
                      "default_ips": round(base, 2), "textfree_pool_ips": round(pool_full, 2),
                      "textfree_pool_det_only_ips": round(pool_det, 2),
                      "vs_default": round(det_rec / base, 3),
                      "textfree_vs_det_only": round(pool_full / pool_det, 3),
                      "pool_images": len(everything), "posters": len(posters)}))


if __name__ == "__main__":
    main()
