"""A small pool of real tar shards with planted near-duplicate images (for ``near_dedup``).

Originals: the demo's eight source photos (``curate.demo.generator._load_photos``) at a demo
size (short side 320), stored as JPEG q90, or as PNG for every other photo. Copies of each
original, one per transform of ``PLANTED`` (re-encoded, PNG <-> JPEG, resized 50-150%, lightly
cropped). Distinct images: views of the same photos that show a different part of them
(``VIEWS``), and scenes the demo generator renders. ``MEASURED`` holds heavier transforms that
are only measured (docs/near_dedup.md), not planted in the pool.
"""

from __future__ import annotations

import functools
import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from shardmaker import sample_members, write_tar

Transform = Callable[[Image.Image, str], tuple[bytes, str]]


def encode(img: Image.Image, ext: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if ext == "jpg":
        img.convert("RGB").save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, "PNG")
    return buf.getvalue()


def _jpg(img: Image.Image, quality: int = 90) -> tuple[bytes, str]:
    return encode(img, "jpg", quality), "jpg"


def _resize(f: float, method: Image.Resampling) -> Transform:
    return lambda im, ext: _jpg(im.resize((round(im.width * f), round(im.height * f)), method))


def _crop(pct: float, sides: str = "lrtb") -> Transform:
    """``pct`` % of the width (height) off, split over the named sides."""
    def f(im: Image.Image, ext: str) -> tuple[bytes, str]:
        dx = im.width * pct / 100 / (("l" in sides) + ("r" in sides))
        dy = im.height * pct / 100 / max(1, ("t" in sides) + ("b" in sides))
        box = (round(dx) if "l" in sides else 0, round(dy) if "t" in sides else 0,
               im.width - (round(dx) if "r" in sides else 0),
               im.height - (round(dy) if "b" in sides else 0))
        return _jpg(im.crop(box))
    return f


def _watermark(im: Image.Image, ext: str) -> tuple[bytes, str]:
    out = im.copy()
    ImageDraw.Draw(out).text((im.width * 0.05, im.height * 0.85), "© example.invalid 2026",
                             fill=(255, 255, 255))
    return _jpg(out)


# Planted in the pool: each copy must be grouped with its original at the default k.
PLANTED: dict[str, Transform] = {
    "jpeg_q40": lambda im, ext: _jpg(im, 40),
    "format_swap": lambda im, ext: ((encode(im, "png"), "png") if ext == "jpg" else _jpg(im, 85)),
    "resize_50": _resize(0.5, Image.Resampling.LANCZOS),
    "resize_75": _resize(0.75, Image.Resampling.BILINEAR),
    "resize_150": _resize(1.5, Image.Resampling.BICUBIC),
    "crop_2": _crop(2),  # 1% of the width (height) off each side
    "crop_4": _crop(4),
}
# Only measured (docs/near_dedup.md): what pHash does with heavier changes.
MEASURED: dict[str, Transform] = {
    **PLANTED,
    "crop_4_one_side": _crop(4, "l"),
    "crop_6": _crop(6),
    "crop_8": _crop(8),
    "crop_10": _crop(10),
    "crop_15": _crop(15),
    "crop_20": _crop(20),
    "greyscale": lambda im, ext: _jpg(ImageOps.grayscale(im)),
    "brightness_120": lambda im, ext: _jpg(ImageEnhance.Brightness(im).enhance(1.2)),
    "contrast_80": lambda im, ext: _jpg(ImageEnhance.Contrast(im).enhance(0.8)),
    "watermark_text": _watermark,
    "rotate_3deg": lambda im, ext: _jpg(im.rotate(3, Image.Resampling.BICUBIC, expand=False)),
    "mirror": lambda im, ext: _jpg(ImageOps.mirror(im)),
}
# Distinct views of a photo (fractions of width, height): none shows most of another.
VIEWS: dict[str, tuple[float, float, float, float]] = {
    "left_half": (0.0, 0.0, 0.5, 1.0),
    "bottom_right": (0.4, 0.4, 1.0, 1.0),
}


@functools.cache
def originals() -> dict[str, tuple[Image.Image, str]]:
    """Photo name → (image at short side 320, extension of its original: jpg or png); the
    images are shared: do not change them in place."""
    from curate.demo.generator import _load_photos

    out = {}
    for i, (name, img) in enumerate(sorted(_load_photos().items())):
        s = 320 / min(img.size)
        out[name] = (img.resize((round(img.width * s), round(img.height * s)),
                                Image.Resampling.LANCZOS), "jpg" if i % 2 == 0 else "png")
    return out


def views() -> dict[str, Image.Image]:
    """``photo/view`` → the view, at short side 320."""
    out = {}
    for name, (img, _) in originals().items():
        for view, (x0, y0, x1, y1) in VIEWS.items():
            crop = img.crop((round(x0 * img.width), round(y0 * img.height),
                             round(x1 * img.width), round(y1 * img.height)))
            s = 320 / min(crop.size)
            out[f"{name}/{view}"] = crop.resize((round(crop.width * s), round(crop.height * s)),
                                                Image.Resampling.LANCZOS)
    return out


def scenes(n: int, seed: int = 0) -> list[tuple[bytes, str]]:
    """``n`` scenes drawn as the demo generator draws them (shapes on a plain background)."""
    from curate.demo.generator import _random_scene, _render_scene

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        scene = _random_scene(rng)
        img = _render_scene(rng, scene, rng.randint(256, 512), rng.randint(256, 512))
        ext = "png" if rng.random() < 1 / 3 else "jpg"
        out.append((encode(img, ext), ext))
    return out


@dataclass(frozen=True)
class Planted:
    key: str
    role: str  # original, copy or distinct
    name: str  # photo, photo/view or scene number
    transform: str | None  # copies: the PLANTED transform
    group: str  # the key of the original (originals and copies), else the sample's own key
    width: int
    height: int


def write_pool(out: Path, scene_list: list[tuple[bytes, str]], shards: int = 3,
               seed: int = 0) -> list[Planted]:
    """Originals, their ``PLANTED`` copies, the ``views`` and ``scene_list`` in a seeded
    random pool order over ``shards`` tar shards in ``out``. Returns what each sample is, in
    pool order."""
    items: list[tuple[str, str, str | None, str, bytes, str]] = []  # role, name, tf, group, ...
    for name, (img, ext) in originals().items():
        items.append(("original", name, None, name, encode(img, ext), ext))
        for tf, f in PLANTED.items():
            data, e = f(img, ext)
            items.append(("copy", name, tf, name, data, e))
    for name, img in views().items():
        items.append(("distinct", name, None, name, encode(img, "jpg"), "jpg"))
    for i, (data, ext) in enumerate(scene_list):
        items.append(("distinct", f"scene{i}", None, f"scene{i}", data, ext))
    random.Random(seed).shuffle(items)
    per = -(-len(items) // shards)
    planted: list[Planted] = []
    keys: dict[str, str] = {}
    for s in range(shards):
        members: list[tuple[str, bytes]] = []
        for j, (role, name, tf, _group, data, ext) in enumerate(items[s * per:(s + 1) * per]):
            key = f"{s:02d}{j:04d}"
            if role == "original":
                keys[name] = key
            meta = {"url": f"https://example.invalid/{key}.{ext}"}
            members += sample_members(key, data, f"a picture {name} {tf or ''}".strip(), meta,
                                      ext=ext)
            w, h = Image.open(io.BytesIO(data)).size
            planted.append(Planted(key, role, name, tf, "", w, h))
        write_tar(out / f"{s:05d}.tar", members)
    return [Planted(p.key, p.role, p.name, p.transform,
                    keys[p.name] if p.role != "distinct" else p.key, p.width, p.height)
            for p in planted]


def measure(kinds: tuple[str, ...] = ("phash", "dhash", "whash"),
            ks: tuple[int, ...] = (4, 6, 8, 10, 12), n_scenes: int = 300) -> None:
    """Print, per hash kind, how many of the 8 photos' copies each ``MEASURED`` transform
    keeps within k of the original, and how close distinct images come (docs/near_dedup.md):
    ``python tests/neardupmaker.py``."""
    import itertools

    import imagehash

    def hashed(data: bytes, kind: str) -> int:
        return int(str(getattr(imagehash, kind)(Image.open(io.BytesIO(data)))), 16)

    def d(a: int, b: int) -> int:
        return bin(a ^ b).count("1")

    orig = originals()
    for kind in kinds:
        print(f"== {kind}: copies within k of their original (of {len(orig)} photos)")
        base = {n: hashed(encode(im, ext), kind) for n, (im, ext) in orig.items()}
        for tf, f in MEASURED.items():
            ds = [d(base[n], hashed(f(im, ext)[0], kind)) for n, (im, ext) in orig.items()]
            print(f"  {tf:16s} " + " ".join(f"k{k}:{sum(x <= k for x in ds)}" for k in ks)
                  + f"  distances {ds}")
        photos = list(base.values()) + [hashed(encode(im, "jpg"), kind)
                                        for im in views().values()]
        pv = [d(a, b) for a, b in itertools.combinations(photos, 2)]
        sc = [hashed(data, kind) for data, _ in scenes(n_scenes)]
        sd = [d(a, b) for a, b in itertools.combinations(sc, 2)]
        print(f"  photos and views: {len(pv)} pairs, closest {min(pv)}; photo/view to scene: "
              f"closest {min(d(a, b) for a in photos for b in sc)}")
        for k in ks:
            near = sum(any(d(a, b) <= k for j, b in enumerate(sc) if j != i)
                       for i, a in enumerate(sc))
            within = sum(x <= k for x in sd)
            print(f"  scenes k{k}: {within} of {len(sd)} pairs within k "
                  f"({100 * within / len(sd):.2f}%), {near} of {n_scenes} scenes near another")


if __name__ == "__main__":
    measure()
