"""The synthetic image-to-text suite: seeded Pillow drawings with exact answers.

Four task families, each with a fixed answer set, so chance level is known exactly:

- ``colour``: the colour of the one shape drawn (6 colours, chance 1/6).
- ``corner``: which quadrant the one shape sits in (4 answers, chance 1/4).
- ``tallest``: which of four same-coloured bars is tallest, counted from the left
  (4 answers, chance 1/4; the tallest beats the runner-up by at least 12% of the height).
- ``line``: the orientation of one thick line (horizontal, vertical, rising or falling;
  chance 1/4).

Only ``colour`` can be answered from colour; none of the four can be answered from the
total inked area (corner, tallest and line need where the ink is, not how much). In the
non-colour families, colour, shape and size are drawn at random so they carry no signal.
Every item is a pure function of (seed, split, index), so splits are reproducible
without storing them, and train and test never share a seed stream.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

CANVAS = 192  # pixels; the Gemma 4 processor rescales to its token budget anyway
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
BARS = ("1", "2", "3", "4")
LINES = ("horizontal", "vertical", "rising", "falling")
INSTRUCTION = "Answer with one word."


@dataclass(frozen=True)
class Family:
    """One task family: its question, its closed answer set and its chance level."""

    name: str
    question: str
    answers: tuple[str, ...]

    @property
    def chance(self) -> float:
        return 1.0 / len(self.answers)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("colour", "What colour is the shape?", tuple(COLOURS)),
        Family("corner", "Which corner of the picture is the shape in?", CORNERS),
        Family("tallest", "Which bar is the tallest, counting 1 to 4 from the left?", BARS),
        Family("line", "Is the line horizontal, vertical, rising or falling?", LINES),
    )
}


@dataclass(frozen=True)
class Item:
    """One suite item: an image, the question asked about it and the exact answer."""

    id: str
    task: str
    image: Image.Image
    question: str
    answer: str


def _rng(seed: int, split: str, index: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}/{split}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def _draw_colour(rng: random.Random, draw: ImageDraw.ImageDraw) -> str:
    answer = rng.choice(tuple(COLOURS))
    size = rng.randint(50, 110)
    x, y = rng.randint(5, CANVAS - size - 5), rng.randint(5, CANVAS - size - 5)
    _shape(draw, rng.choice(SHAPES), (x, y, x + size, y + size), COLOURS[answer])
    return answer


def _draw_corner(rng: random.Random, draw: ImageDraw.ImageDraw) -> str:
    answer = rng.choice(CORNERS)
    half = CANVAS // 2
    size = rng.randint(28, 62)
    x = rng.randint(6, half - size - 6) + (half if answer.endswith("right") else 0)
    y = rng.randint(6, half - size - 6) + (half if answer.startswith("bottom") else 0)
    _shape(draw, rng.choice(SHAPES), (x, y, x + size, y + size), rng.choice(list(COLOURS.values())))
    return answer


def _draw_tallest(rng: random.Random, draw: ImageDraw.ImageDraw) -> str:
    winner = rng.randrange(4)
    top = rng.randint(130, 170)
    heights = [rng.randint(25, top - 24) for _ in range(4)]
    heights[winner] = top
    fill = rng.choice(list(COLOURS.values()))
    width, gap = 30, 14
    left = (CANVAS - 4 * width - 3 * gap) // 2
    base = CANVAS - 10
    draw.line((8, base, CANVAS - 8, base), fill=(0, 0, 0), width=2)
    for i, h in enumerate(heights):
        x = left + i * (width + gap)
        draw.rectangle((x, base - h, x + width, base), fill=fill)
    return BARS[winner]


def _draw_line(rng: random.Random, draw: ImageDraw.ImageDraw) -> str:
    answer = rng.choice(LINES)
    half = rng.randint(45, 80)
    cx, cy = rng.randint(half + 6, CANVAS - half - 6), rng.randint(half + 6, CANVAS - half - 6)
    dx, dy = {"horizontal": (1, 0), "vertical": (0, 1), "rising": (1, -1), "falling": (1, 1)}[answer]
    scale = half if dx * dy == 0 else int(half * 0.75)
    ends = (cx - dx * scale, cy - dy * scale, cx + dx * scale, cy + dy * scale)
    draw.line(ends, fill=rng.choice(list(COLOURS.values())), width=rng.randint(7, 12))
    return answer


_DRAW = {"colour": _draw_colour, "corner": _draw_corner, "tallest": _draw_tallest, "line": _draw_line}


def make_item(seed: int, split: str, index: int) -> Item:
    """Builds item `index` of `split`; families take turns so every slice is balanced."""
    rng = _rng(seed, split, index)
    family = FAMILIES[tuple(FAMILIES)[index % len(FAMILIES)]]
    image = Image.new("RGB", (CANVAS, CANVAS), (255, 255, 255))
    answer = _DRAW[family.name](rng, ImageDraw.Draw(image))
    question = f"{family.question} {INSTRUCTION}"
    return Item(f"{split}-{index:06d}", family.name, image, question, answer)
