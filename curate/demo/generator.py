"""A deterministic demo pool: webdataset shards with planted defects and their ground truth.

``make_demo_pool`` writes ``00000.tar`` ... (img2dataset-style keys, one ``jpg``/``png``, ``txt``
and ``json`` member per sample) and ``ground_truth.parquet``, which names each sample's kind and
the drop reason the curation pipeline must give it (null for samples that must survive).

The pipeline checks, in order: the image decodes (``error:image_info``), ``caption_too_short``,
``caption_too_few_words``, ``not_english``, ``image_too_small``, ``aspect_ratio_too_extreme``,
then exact dedup in pool order (``duplicate_image`` on equal image bytes, then
``duplicate_url_caption``). Every defective sample carries exactly one defect and passes every
earlier check, so its expected reason is unambiguous.

Images come from photos shipped with scikit-image and scikit-learn (random crops, honest
hand-written captions) and from shapes and text rendered with PIL (captions exact by
construction). The same seed and arguments give byte-identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from curate.io.atomic import atomic_open
from curate.uid import derive_uid

GROUND_TRUTH_FILE = "ground_truth.parquet"

# Share of the pool per kind, in percent (sums to 100). With at least one sample per kind
# available, every kind gets one first and the rest is shared out by these percentages.
KIND_SHARES: dict[str, int] = {
    "photo": 44,
    "scene": 28,
    "mismatched": 5,
    "parrot": 5,
    "duplicate_image": 4,
    "duplicate_url_caption": 2,
    "non_english": 4,
    "tiny": 2,
    "extreme_aspect": 2,
    "corrupt": 2,
    "empty_caption": 1,
    "short_caption": 1,
}
KINDS: tuple[str, ...] = tuple(KIND_SHARES)

# The reason the pipeline must give each kind (None: the sample must be kept).
EXPECTED_REASON: dict[str, str | None] = {
    "photo": None,
    "scene": None,
    "mismatched": None,
    "parrot": None,
    "duplicate_image": "duplicate_image",
    "duplicate_url_caption": "duplicate_url_caption",
    "non_english": "not_english",
    "tiny": "image_too_small",
    "extreme_aspect": "aspect_ratio_too_extreme",
    "corrupt": "error:image_info",
    "empty_caption": "caption_too_short",
    "short_caption": "caption_too_few_words",
}

_DUPLICATE_KINDS = frozenset({"duplicate_image", "duplicate_url_caption"})
_MAX_SHARDS = 100_000  # 5-digit shard numbers
_MAX_SAMPLES_PER_SHARD = 10_000  # 4-digit sample index
_SHARD_NAME = re.compile(r"^(\d{5})\.tar$")


@dataclass(frozen=True)
class DemoPool:
    """What ``make_demo_pool`` wrote."""

    out_dir: Path
    shards: list[Path]  # the tar files, sorted
    samples: int  # total samples written
    kinds: dict[str, int]  # count per kind present, in ``KINDS`` order

    @property
    def ground_truth(self) -> Path:
        return self.out_dir / GROUND_TRUTH_FILE


# ---------------------------------------------------------------------------------------------
# Source material: photos and captions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Photo:
    name: str
    source: str  # where the pixels come from, stored in the json member
    noun: str  # short description, used in templated captions
    captions: tuple[str, ...]  # honest English captions
    foreign: tuple[str, ...]  # honest captions in German, French, Spanish, Italian, Portuguese


_PHOTOS: tuple[_Photo, ...] = (
    _Photo(
        "astronaut",
        "skimage.data.astronaut",
        "an astronaut in an orange spacesuit",
        (
            "a smiling astronaut in an orange spacesuit posing for an official portrait",
            "portrait of a female astronaut holding her helmet next to a model space shuttle",
            "a woman in an orange flight suit smiling in front of an american flag",
            "official nasa photo of an astronaut with short curly hair in her launch suit",
        ),
        (
            "Eine lächelnde Astronautin im orangefarbenen Raumanzug",
            "Portrait officiel d'une astronaute souriante en combinaison orange",
            "Retrato de uma astronauta sorridente com o capacete ao lado",
        ),
    ),
    _Photo(
        "chelsea",
        "skimage.data.chelsea",
        "a tabby cat",
        (
            "close up of a tabby cat with green eyes looking to the side",
            "the face of a striped brown cat with long white whiskers",
            "a curious young cat staring at something off camera",
            "detailed portrait of a short haired tabby cat indoors",
        ),
        (
            "Primer plano de un gato atigrado con ojos verdes",
            "Il muso di un gatto soriano che guarda di lato",
            "Nahaufnahme einer getigerten Katze mit grünen Augen",
        ),
    ),
    _Photo(
        "coffee",
        "skimage.data.coffee",
        "a cup of espresso",
        (
            "a red cup of espresso on a saucer with a silver spoon",
            "a cup of coffee on a wooden table seen from above",
            "espresso with crema in a red ceramic cup on a matching saucer",
            "a small coffee cup and spoon on a dark wooden cafe table",
        ),
        (
            "Una tazzina di caffè espresso rossa con il cucchiaino",
            "Une tasse de café rouge sur sa soucoupe, posée sur une table en bois",
            "Una taza de café sobre un plato rojo en una mesa de madera",
        ),
    ),
    _Photo(
        "rocket",
        "skimage.data.rocket",
        "a rocket on the launch pad",
        (
            "a rocket standing on the launch pad at dusk between lightning towers",
            "a white rocket ready for launch under a deep blue evening sky",
            "a launch pad lit by bright lights with a tall rocket in the middle",
            "a spacex falcon rocket waiting on the pad before launch",
        ),
        (
            "Eine Rakete steht in der Abenddämmerung auf der Startrampe",
            "Un cohete en la plataforma de lanzamiento al anochecer",
            "Um foguete na plataforma de lançamento ao entardecer",
        ),
    ),
    _Photo(
        "hubble_deep_field",
        "skimage.data.hubble_deep_field",
        "the hubble deep field",
        (
            "the hubble deep field showing thousands of distant galaxies",
            "a dark patch of sky filled with tiny colourful galaxies",
            "deep space image of many faint galaxies on a black background",
            "a telescope view of countless galaxies scattered across black space",
        ),
        (
            "Des milliers de galaxies lointaines photographiées par le télescope Hubble",
            "Migliaia di galassie lontane fotografate dal telescopio Hubble",
            "Tausende ferne Galaxien auf schwarzem Hintergrund",
        ),
    ),
    _Photo(
        "stereo_motorcycle",
        "skimage.data.stereo_motorcycle",
        "a red motorcycle in a garage",
        (
            "a red motorcycle parked inside a cluttered garage",
            "a classic red and black motorbike standing on its kickstand in a workshop",
            "a motorcycle parked on a concrete floor in front of shelves of boxes",
            "side view of a red cruiser motorcycle in a storage room",
        ),
        (
            "Una motocicleta roja aparcada dentro de un garaje desordenado",
            "Uma moto vermelha estacionada dentro de uma garagem",
            "Una moto rossa parcheggiata in un garage pieno di scatole",
        ),
    ),
    _Photo(
        "china",
        "sklearn.datasets.china.jpg",
        "a chinese pagoda",
        (
            "a traditional chinese pagoda on a hill above a lake",
            "the tower of buddhist incense at the summer palace in beijing",
            "a colourful temple tower surrounded by green trees on a hazy day",
            "a tall chinese tower with red and green roofs overlooking the water",
        ),
        (
            "Une pagode chinoise traditionnelle sur une colline au-dessus d'un lac",
            "Eine traditionelle chinesische Pagode auf einem Hügel über dem See",
            "Una pagoda china tradicional sobre una colina junto al lago",
        ),
    ),
    _Photo(
        "flower",
        "sklearn.datasets.flower.jpg",
        "an orange dahlia flower",
        (
            "a close up of an orange dahlia flower against a dark green background",
            "a peach coloured dahlia in full bloom with a blurred background",
            "a round orange flower with many layered petals",
            "macro photo of a dahlia blossom in a garden",
        ),
        (
            "Un fiore di dalia arancione su uno sfondo verde scuro",
            "Uma flor de dália laranja com um fundo verde desfocado",
            "Une fleur de dahlia orange sur un fond vert sombre",
        ),
    ),
)

_THUMBNAIL_CAPTIONS = ("a small thumbnail of {noun}", "a tiny preview picture of {noun}")
_BANNER_CAPTIONS = {
    "wide": (
        "a wide banner cropped from a photo of {noun}",
        "a long panoramic strip cut from a picture of {noun}",
    ),
    "tall": (
        "a tall narrow strip cropped from a photo of {noun}",
        "a vertical banner cut from a picture of {noun}",
    ),
}
_SHORT_CAPTIONS = (
    "sunset photograph",
    "holiday snapshot",
    "untitled",
    "beautiful landscape",
    "random picture",
    "nice view",
)
_FOREIGN_SCENE_CAPTIONS = (
    "Einfache geometrische Formen auf einem einfarbigen Hintergrund",
    "Formes géométriques simples sur un fond uni",
    "Formas geométricas simples sobre un fondo liso",
    "Forme geometriche semplici su uno sfondo a tinta unita",
    "Formas geométricas simples num fundo de uma só cor",
)


def _load_photos() -> dict[str, Image.Image]:
    """The source photos by name, as RGB images (all ship inside the installed packages)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    images: dict[str, Image.Image] = {}
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field"):
        images[name] = Image.fromarray(getattr(skimage.data, name)())
    images["stereo_motorcycle"] = Image.fromarray(skimage.data.stereo_motorcycle()[0])
    bunch = load_sample_images()
    for path, array in zip(bunch.filenames, bunch.images, strict=True):
        images[Path(path).stem] = Image.fromarray(array)
    return {name: img.convert("RGB") for name, img in images.items()}


# ---------------------------------------------------------------------------------------------
# Rendered scenes and posters
# ---------------------------------------------------------------------------------------------

_SHAPES = ("circle", "square", "triangle")
_SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (245, 210, 20),
    "purple": (130, 40, 170),
    "orange": (250, 140, 20),
    "black": (15, 15, 15),
    "pink": (245, 120, 180),
    "brown": (120, 70, 30),
}
_BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (170, 170, 170),
    "beige": (235, 220, 190),
}
_LOW_CONTRAST = {("black", "black"), ("yellow", "white"), ("yellow", "beige")}
# Regions as (x0, y0, x1, y1) fractions of the canvas; they do not overlap, so a caption's
# "on the left" and "at the top" are never both true of one shape.
_POSITIONS: dict[str, tuple[float, float, float, float]] = {
    "left": (0.0, 0.15, 1 / 3, 0.85),
    "right": (2 / 3, 0.15, 1.0, 0.85),
    "top": (1 / 3, 0.0, 2 / 3, 1 / 3),
    "center": (1 / 3, 1 / 3, 2 / 3, 2 / 3),
    "bottom": (1 / 3, 2 / 3, 2 / 3, 1.0),
}
_POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "center": "in the center",
    "bottom": "at the bottom",
}
_COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
_SCENE_TEMPLATES = (
    "{shapes} on a {bg} background",
    "a {bg} background with {shapes}",
    "a simple drawing of {shapes} on a {bg} background",
)
_MAX_SHAPES = 4


@dataclass(frozen=True)
class _Group:
    """``count`` shapes of one kind and colour in one region."""

    shape: str
    colour: str
    position: str
    count: int

    def phrase(self) -> str:
        if self.count == 1:
            article = "an" if self.colour[0] in "aeiou" else "a"
            return f"{article} {self.colour} {self.shape} {_POSITION_PHRASES[self.position]}"
        words = _COUNT_WORDS[self.count]
        return f"{words} {self.colour} {self.shape}s {_POSITION_PHRASES[self.position]}"


@dataclass(frozen=True)
class _Scene:
    groups: tuple[_Group, ...]
    background: str

    def caption(self, template: int) -> str:
        phrases = [g.phrase() for g in self.groups]
        shapes = (
            phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        )
        return _SCENE_TEMPLATES[template].format(shapes=shapes, bg=self.background)

    def spec(self) -> list[dict[str, str]]:
        return [
            {"shape": g.shape, "color": g.colour, "position": g.position}
            for g in self.groups
            for _ in range(g.count)
        ]

    def pairs(self) -> set[tuple[str, str]]:
        return {(g.shape, g.colour) for g in self.groups}


def _random_scene(rng: random.Random) -> _Scene:
    background = rng.choice(list(_BACKGROUNDS))
    colours = [
        c for c in _SHAPE_COLOURS if c != background and (c, background) not in _LOW_CONTRAST
    ]
    n_groups = rng.choice((1, 1, 2, 2, 3))
    groups = []
    left = _MAX_SHAPES
    for i, position in enumerate(rng.sample(list(_POSITIONS), n_groups)):
        still_needed = n_groups - i - 1  # one shape at least for each remaining group
        count = rng.randint(1, min(3, left - still_needed))
        left -= count
        groups.append(_Group(rng.choice(_SHAPES), rng.choice(colours), position, count))
    return _Scene(tuple(groups), background)


def _render_scene(rng: random.Random, scene: _Scene, width: int, height: int) -> Image.Image:
    img = Image.new("RGB", (width, height), _BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for group in scene.groups:
        fx0, fy0, fx1, fy1 = _POSITIONS[group.position]
        x0, y0, x1, y1 = fx0 * width, fy0 * height, fx1 * width, fy1 * height
        # Split the region into `count` slots along its longer side, one shape per slot.
        along_x = (x1 - x0) >= (y1 - y0)
        slot_w = (x1 - x0) / group.count if along_x else x1 - x0
        slot_h = y1 - y0 if along_x else (y1 - y0) / group.count
        for k in range(group.count):
            sx = x0 + (k * slot_w if along_x else 0.0)
            sy = y0 + (0.0 if along_x else k * slot_h)
            size = rng.uniform(0.55, 0.8) * min(slot_w, slot_h)
            px = sx + rng.uniform(0, slot_w - size)
            py = sy + rng.uniform(0, slot_h - size)
            _draw_shape(draw, group.shape, (px, py, px + size, py + size), group.colour)
    return img


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], colour: str
) -> None:
    fill = _SHAPE_COLOURS[colour]
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


_POSTER_TEXTS = (
    "SUMMER SALE",
    "OPEN 24 HOURS",
    "WELCOME HOME",
    "GRAND OPENING",
    "FRESH BREAD DAILY",
    "LIVE MUSIC TONIGHT",
    "HAPPY BIRTHDAY",
    "THANK YOU",
    "FREE WIFI",
    "BIG DISCOUNTS",
    "HOT COFFEE",
    "SOLD OUT",
    "GOOD MORNING",
    "BACK TO SCHOOL",
)
_POSTER_CAPTIONS = (
    "{t} poster with the words {t}",
    "a sign that says {t}",
    "a banner reading {t} in large letters",
    "a poster with the text {t} in bold letters",
)
_POSTER_COLOURS = (
    (250, 220, 60),
    (240, 90, 60),
    (60, 120, 220),
    (40, 40, 60),
    (250, 250, 245),
    (120, 200, 140),
    (200, 60, 120),
    (255, 160, 40),
)
_FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
_FONT_FILES = (
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansCondensed-Bold.ttf",
    "DejaVuSans.ttf",
)


def _font_paths() -> list[Path]:
    return [_FONT_DIR / name for name in _FONT_FILES if (_FONT_DIR / name).is_file()]


def _font(path: Path | None, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if path is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(str(path), size)


def _render_poster(
    rng: random.Random, text: str, font_path: Path | None, width: int, height: int
) -> Image.Image:
    top = np.array(rng.choice(_POSTER_COLOURS), dtype=np.float64)
    bottom = top if rng.random() < 0.5 else np.array(rng.choice(_POSTER_COLOURS), np.float64)
    t = np.linspace(0.0, 1.0, height)[:, None, None]
    rows = top * (1.0 - t) + bottom * t
    pixels = np.broadcast_to(rows, (height, width, 3)).round().astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(pixels))
    luminance = float((0.299 * rows[..., 0] + 0.587 * rows[..., 1] + 0.114 * rows[..., 2]).mean())
    ink = (20, 20, 20) if luminance > 140 else (250, 250, 250)
    draw = ImageDraw.Draw(img)
    size = height // 3
    while True:  # the largest font size at which the text fits comfortably
        font = _font(font_path, size)
        x0, y0, x1, y1 = draw.multiline_textbbox((0, 0), text, font=font, align="center")
        if (x1 - x0 <= 0.88 * width and y1 - y0 <= 0.7 * height) or size <= 12:
            break
        size -= 2
    draw.multiline_text(
        (width / 2, height / 2), text, font=font, fill=ink, anchor="mm", align="center"
    )
    return img


# ---------------------------------------------------------------------------------------------
# Building the pool
# ---------------------------------------------------------------------------------------------


@dataclass
class _Sample:
    kind: str
    image: bytes
    ext: str  # "jpg" or "png"
    caption: str
    url: str
    meta: dict[str, object]
    other_captions: tuple[str, ...] = ()  # further honest captions of the same image
    duplicate_of: int | None = None  # pool position of the original


def _encode(img: Image.Image, ext: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if ext == "jpg":
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def _decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except (OSError, SyntaxError, ValueError):  # what PIL raises for undecodable bytes
        return False
    return True


def _resize_min_side(img: Image.Image, min_side: int) -> Image.Image:
    scale = min_side / min(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS)


class _PoolBuilder:
    """Draws the samples one by one, in pool order, from a single seeded RNG."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.photos = _load_photos()
        fonts: list[Path | None] = list(_font_paths())
        self.fonts = fonts or [None]
        self.samples: list[_Sample] = []
        self.urls: set[str] = set()
        self.used_originals: set[int] = set()
        self.digests: set[bytes] = set()  # sha256 of every image so far
        self.makers: dict[str, Callable[[], _Sample]] = {
            "photo": self._photo,
            "scene": self._scene,
            "mismatched": self._mismatched,
            "parrot": self._parrot,
            "duplicate_image": self._duplicate_image,
            "duplicate_url_caption": self._duplicate_url_caption,
            "non_english": self._non_english,
            "tiny": self._tiny,
            "extreme_aspect": self._extreme_aspect,
            "corrupt": self._corrupt,
            "empty_caption": self._empty_caption,
            "short_caption": self._short_caption,
        }

    def add(self, kind: str) -> None:
        """Append a sample of ``kind``. Only ``duplicate_image`` may repeat earlier image bytes
        (two uncropped views at the same size and quality would otherwise collide), so any
        other sample whose bytes were seen before is drawn again."""
        while True:
            sample = self.makers[kind]()
            digest = hashlib.sha256(sample.image).digest()
            if kind == "duplicate_image" or digest not in self.digests:
                break
        self.digests.add(digest)
        self.samples.append(sample)

    # -- helpers ------------------------------------------------------------------------------

    def _url(self, folder: str, ext: str) -> str:
        while True:
            url = f"https://demo.invalid/{folder}/{self.rng.getrandbits(64):016x}.{ext}"
            if url not in self.urls:
                self.urls.add(url)
                return url

    def _quality(self) -> int:
        return self.rng.randint(85, 95)

    def _photo_view(self, photo: _Photo) -> Image.Image:
        """A random crop and/or resize: min side 224-480, max side <= 640, aspect <= 1.9."""
        img = self.photos[photo.name]
        w, h = img.size
        if self.rng.random() < 0.75:
            cw = round(w * self.rng.uniform(0.75, 1.0))
            ch = round(h * self.rng.uniform(0.75, 1.0))
            cw, ch = min(cw, int(1.9 * ch)), min(ch, int(1.9 * cw))
            x0, y0 = self.rng.randint(0, w - cw), self.rng.randint(0, h - ch)
            img = img.crop((x0, y0, x0 + cw, y0 + ch))
        min_side = 224 + int(257 * self.rng.random() ** 2)  # skewed small: keeps the pool light
        scale = min(min_side / min(img.size), 640 / max(img.size))
        size = (round(img.width * scale), round(img.height * scale))
        return img.resize(size, Image.Resampling.LANCZOS)

    def _clean_photo_image(self) -> tuple[_Photo, bytes]:
        photo = self.rng.choice(_PHOTOS)
        return photo, _encode(self._photo_view(photo), "jpg", self._quality())

    def _scene_image(self, scene: _Scene) -> tuple[bytes, str]:
        width, height = self.rng.randint(256, 512), self.rng.randint(256, 512)
        img = _render_scene(self.rng, scene, width, height)
        ext = "png" if self.rng.random() < 1 / 3 else "jpg"
        return _encode(img, ext, self._quality()), ext

    def _scene_meta(self, scene: _Scene) -> dict[str, object]:
        return {"source": "render:scene", "background": scene.background, "scene": scene.spec()}

    def _pick_original(self, kinds: Sequence[str]) -> int:
        """An earlier clean sample of one of ``kinds``, preferring one not yet duplicated."""
        candidates = [i for i, s in enumerate(self.samples) if s.kind in kinds]
        fresh = [i for i in candidates if i not in self.used_originals]
        original = self.rng.choice(fresh or candidates)
        self.used_originals.add(original)
        return original

    # -- one maker per kind -------------------------------------------------------------------

    def _photo(self) -> _Sample:
        photo, data = self._clean_photo_image()
        captions = list(photo.captions)
        self.rng.shuffle(captions)
        url = self._url(f"photos/{photo.name}", "jpg")
        meta: dict[str, object] = {"source": photo.source}
        return _Sample("photo", data, "jpg", captions[0], url, meta, tuple(captions[1:]))

    def _scene(self) -> _Sample:
        scene = _random_scene(self.rng)
        data, ext = self._scene_image(scene)
        templates = list(range(len(_SCENE_TEMPLATES)))
        self.rng.shuffle(templates)
        captions = [scene.caption(t) for t in templates]
        url = self._url("scenes", ext)
        meta = self._scene_meta(scene)
        return _Sample("scene", data, ext, captions[0], url, meta, tuple(captions[1:]))

    def _mismatched(self) -> _Sample:
        scene = _random_scene(self.rng)
        described = _random_scene(self.rng)
        while described.pairs() & scene.pairs():
            described = _random_scene(self.rng)
        data, ext = self._scene_image(scene)
        caption = described.caption(self.rng.randrange(len(_SCENE_TEMPLATES)))
        meta = self._scene_meta(scene)
        return _Sample("mismatched", data, ext, caption, self._url("scenes", ext), meta)

    def _parrot(self) -> _Sample:
        words = self.rng.choice(_POSTER_TEXTS).split()
        if len(words) > 1 and self.rng.random() < 0.5:
            cut = (len(words) + 1) // 2
            text = " ".join(words[:cut]) + "\n" + " ".join(words[cut:])
        else:
            text = " ".join(words)
        width, height = self.rng.randint(320, 512), self.rng.randint(256, 400)
        img = _render_poster(self.rng, text, self.rng.choice(self.fonts), width, height)
        ext = self.rng.choice(("jpg", "png"))
        spoken = " ".join(words).lower()
        caption = self.rng.choice(_POSTER_CAPTIONS).format(t=spoken)
        meta: dict[str, object] = {"source": "render:text", "text": text}
        data = _encode(img, ext, self._quality())
        return _Sample("parrot", data, ext, caption, self._url("posters", ext), meta)

    def _duplicate_image(self) -> _Sample:
        index = self._pick_original(("photo", "scene"))
        original = self.samples[index]
        caption = self.rng.choice(original.other_captions)
        url = self._url("mirror", original.ext)
        meta = dict(original.meta)
        return _Sample(
            "duplicate_image", original.image, original.ext, caption, url, meta, duplicate_of=index
        )

    def _duplicate_url_caption(self) -> _Sample:
        index = self._pick_original(("photo",))
        original = self.samples[index]
        with Image.open(io.BytesIO(original.image)) as img:
            data = _encode(img, "jpg", self.rng.randint(70, 84))  # originals use 85-95
        return _Sample(
            "duplicate_url_caption",
            data,
            "jpg",
            original.caption,
            original.url,
            dict(original.meta),
            duplicate_of=index,
        )

    def _non_english(self) -> _Sample:
        if self.rng.random() < 2 / 3:
            photo, data = self._clean_photo_image()
            caption = self.rng.choice(photo.foreign)
            url = self._url(f"photos/{photo.name}", "jpg")
            return _Sample("non_english", data, "jpg", caption, url, {"source": photo.source})
        scene = _random_scene(self.rng)
        data, ext = self._scene_image(scene)
        caption = self.rng.choice(_FOREIGN_SCENE_CAPTIONS)
        meta = self._scene_meta(scene)
        return _Sample("non_english", data, ext, caption, self._url("scenes", ext), meta)

    def _tiny(self) -> _Sample:
        photo = self.rng.choice(_PHOTOS)
        img = _resize_min_side(self._photo_view(photo), self.rng.randint(64, 150))
        choices = photo.captions + tuple(t.format(noun=photo.noun) for t in _THUMBNAIL_CAPTIONS)
        caption = self.rng.choice(choices)
        url = self._url(f"thumbs/{photo.name}", "jpg")
        data = _encode(img, "jpg", self._quality())
        return _Sample("tiny", data, "jpg", caption, url, {"source": photo.source})

    def _extreme_aspect(self) -> _Sample:
        """A banner: short side 200-230, long side 3.6-4.2 times that, cut from a photo."""
        photo = self.rng.choice(_PHOTOS)
        img = self.photos[photo.name]
        short = self.rng.randint(200, 230)
        long = round(short * self.rng.uniform(3.6, 4.2))
        wide = self.rng.random() < 0.75
        if wide:
            img = img.resize((long, round(img.height * long / img.width)), Image.Resampling.LANCZOS)
            slack = img.height - short
            y0 = self.rng.randint(slack // 4, 3 * slack // 4)
            img = img.crop((0, y0, long, y0 + short))
        else:
            img = img.resize((round(img.width * long / img.height), long), Image.Resampling.LANCZOS)
            slack = img.width - short
            x0 = self.rng.randint(slack // 4, 3 * slack // 4)
            img = img.crop((x0, 0, x0 + short, long))
        templates = _BANNER_CAPTIONS["wide" if wide else "tall"]
        caption = self.rng.choice(templates).format(noun=photo.noun)
        url = self._url(f"banners/{photo.name}", "jpg")
        data = _encode(img, "jpg", self._quality())
        return _Sample("extreme_aspect", data, "jpg", caption, url, {"source": photo.source})

    def _corrupt(self) -> _Sample:
        """Either the first 40% of a JPEG or random bytes that start like one."""
        photo, data = self._clean_photo_image()
        if self.rng.random() < 0.5:
            data = data[: int(len(data) * 0.4)]
        else:
            size = self.rng.randint(2_000, 20_000)
            data = b"\xff\xd8" + self.rng.randbytes(size)
            while _decodes(data):  # vanishingly unlikely; keeps the promise exact
                data = b"\xff\xd8" + self.rng.randbytes(size)
        caption = self.rng.choice(photo.captions)
        url = self._url(f"photos/{photo.name}", "jpg")
        return _Sample("corrupt", data, "jpg", caption, url, {"source": photo.source})

    def _empty_caption(self) -> _Sample:
        photo, data = self._clean_photo_image()
        url = self._url(f"photos/{photo.name}", "jpg")
        return _Sample("empty_caption", data, "jpg", "", url, {"source": photo.source})

    def _short_caption(self) -> _Sample:
        photo, data = self._clean_photo_image()
        caption = self.rng.choice(_SHORT_CAPTIONS)
        url = self._url(f"photos/{photo.name}", "jpg")
        return _Sample("short_caption", data, "jpg", caption, url, {"source": photo.source})


def _kind_counts(total: int) -> dict[str, int]:
    """Samples per kind: one of each when the pool has room, the rest shared by percentage
    (largest remainder, ties in ``KINDS`` order)."""
    base = 1 if total >= len(KINDS) else 0
    rest = total - base * len(KINDS)
    counts = {kind: base + pct * rest // 100 for kind, pct in KIND_SHARES.items()}
    leftover = total - sum(counts.values())
    by_remainder = sorted(KINDS, key=lambda k: -(KIND_SHARES[k] * rest % 100))
    for kind in by_remainder[:leftover]:
        counts[kind] += 1
    return counts


def _plan_kinds(rng: random.Random, total: int, trusted: bool = False) -> list[str]:
    """The kind of each pool position: shuffled, with a photo before every duplicate. A trusted
    set holds only photos, scenes and posters (matched captions), in the pool's proportions."""
    if trusted:
        # Posters are over-represented so that each poster text is seen several times.
        shares = {"photo": KIND_SHARES["photo"], "scene": KIND_SHARES["scene"], "parrot": 24}
        counts = {k: total * v // sum(shares.values()) for k, v in shares.items()}
        counts["photo"] += total - sum(counts.values())
        kinds = [k for k, n in counts.items() for _ in range(n)]
        rng.shuffle(kinds)
        return kinds
    kinds = [kind for kind, n in _kind_counts(total).items() for _ in range(n)]
    rng.shuffle(kinds)
    while True:
        first_dup = next((i for i, k in enumerate(kinds) if k in _DUPLICATE_KINDS), None)
        first_photo = kinds.index("photo")  # the largest share: present whenever total >= 1
        if first_dup is None or first_dup > first_photo:
            return kinds
        kinds[first_dup], kinds[first_photo] = kinds[first_photo], kinds[first_dup]


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def _tar_bytes(members: Sequence[tuple[str, bytes]]) -> bytes:
    """A ustar archive with fixed metadata (mtime 0, root-less owner), so bytes are stable."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


_GROUND_TRUTH_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("key", pa.string()),
        ("index", pa.int32()),
        ("uid", pa.string()),
        ("kind", pa.string()),
        ("expected_reason", pa.string()),
        ("caption", pa.string()),
        ("url", pa.string()),
        ("duplicate_of_key", pa.string()),
        ("source", pa.string()),  # e.g. "skimage:chelsea", "render:scene", "render:text"
    ]
)


def make_demo_pool(
    out_dir: str | Path,
    *,
    seed: int = 0,
    shards: int = 8,
    samples_per_shard: int = 64,
    trusted: bool = False,
) -> DemoPool:
    """Write a demo pool of ``shards * samples_per_shard`` samples into ``out_dir``.

    Files: ``00000.tar`` ... and ``ground_truth.parquet`` (see the module docs). Each is written
    to a temporary name and moved into place; shard files ``NNNNN.tar`` left from an earlier,
    larger pool in the same directory are removed so the directory always matches its ground
    truth. The same arguments give byte-identical files. ``trusted=True`` writes a set for
    training a filter network: photos, scenes and text posters, all with honest captions (the
    posters' captions spell their text, so the network learns to spot text as web-trained CLIPs
    do, which is what T-MARS corrects for).
    """
    if not 1 <= shards <= _MAX_SHARDS:
        raise ValueError(f"shards must be in [1, {_MAX_SHARDS}], got {shards}")
    if not 1 <= samples_per_shard <= _MAX_SAMPLES_PER_SHARD:
        raise ValueError(
            f"samples_per_shard must be in [1, {_MAX_SAMPLES_PER_SHARD}], got {samples_per_shard}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    total = shards * samples_per_shard
    builder = _PoolBuilder(seed)
    for kind in _plan_kinds(builder.rng, total, trusted):
        builder.add(kind)
    samples = builder.samples

    def key_of(position: int) -> str:
        shard, index = divmod(position, samples_per_shard)
        return f"{shard:05d}{index:04d}"

    rows: list[dict[str, object]] = []
    shard_paths = []
    for shard in range(shards):
        shard_name = f"{shard:05d}.tar"
        members: list[tuple[str, bytes]] = []
        for index in range(samples_per_shard):
            position = shard * samples_per_shard + index
            sample = samples[position]
            key = key_of(position)
            meta = {"key": key, "url": sample.url, **sample.meta}
            members += [
                (f"{key}.{sample.ext}", sample.image),
                (f"{key}.txt", sample.caption.encode("utf-8")),
                (f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8")),
            ]
            original = sample.duplicate_of
            rows.append(
                {
                    "shard": shard_name,
                    "key": key,
                    "index": index,
                    "uid": derive_uid(shard_name, key),
                    "kind": sample.kind,
                    "expected_reason": EXPECTED_REASON[sample.kind],
                    "caption": sample.caption,
                    "url": sample.url,
                    "duplicate_of_key": None if original is None else key_of(original),
                    "source": str(sample.meta.get("source", "")),
                }
            )
        path = out / shard_name
        _write_atomic(path, _tar_bytes(members))
        shard_paths.append(path)

    for stale in out.iterdir():
        match = _SHARD_NAME.match(stale.name)
        if match and int(match.group(1)) >= shards:
            stale.unlink()

    table = pa.Table.from_pylist(rows, schema=_GROUND_TRUTH_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    _write_atomic(out / GROUND_TRUTH_FILE, buf.getvalue())

    counts = {kind: 0 for kind in KINDS}
    for sample in samples:
        counts[sample.kind] += 1
    return DemoPool(
        out_dir=out,
        shards=shard_paths,
        samples=total,
        kinds={kind: n for kind, n in counts.items() if n},
    )
