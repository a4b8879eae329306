"""Synthetic vision tasks for the demo's vision chain: problems a model answers only by reading
the image (k1.5 trains on text-rendered and synthetic visual-reasoning images, arXiv 2501.12599).

Two kinds, each a 32x32 PNG (the tiny LLaVA's image size, models/vision.py):

    arithmetic:  "3+4" in a 3x5 pixel font: the digits scaled x4 (12x20 px) at the sides, a small
                 plus between, dark ink on a light ground, jittered by a pixel or two;
                 prompt "<image>\\nWhat is the result?"  answer 7
    counting:    1..4 filled shapes (square, circle, triangle) in distinct quadrants (16x16 px
                 cells), each of a random size (10-14 px) and offset inside its cell;
                 prompt "<image>\\nHow many shapes?"  answer 3

Each image is written as DIR/images/<split>_<i>.png and named in rows by that relative path
(data/images.py resolves it against the data file's folder). Four kinds of rows:

    captions  (VL pretraining, `text` rows):  {"text": "an image showing 3+4", "images": [...]}
                                             {"text": "3 shapes: square circle square", ...}
    sft       (prompt + a short worked answer): "3+4=7\\n\\boxed{7}", "square circle square: 3\\n\\boxed{3}"
    train / heldout (problems: prompt, answer, images, difficulty = the kind)

Everything derives from the seed. Held-out images are fresh renderings; no held-out image is
pixel-identical to a training one (the sums repeat: 100 digit pairs, the test is the reading).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from openk1.config import Section

Kind = Literal["arithmetic", "counting"]
ARITHMETIC_PROMPT = "<image>\nWhat is the result?"
COUNTING_PROMPT = "<image>\nHow many shapes?"
SHAPES = ("square", "circle", "triangle")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
GRID = 2            # cells per side for the shapes (16x16 px cells at 32 px: 2x2 CLIP patches each)
SCALE = 4           # digit pixels per font pixel: 12x20 px digits, each over several 8x8 patches
INKS = ((0, 0, 0), (40, 40, 160), (150, 20, 20), (20, 110, 20))
GROUNDS = ((255, 255, 255), (235, 235, 220), (220, 230, 240))
COLORS = ((220, 40, 40), (40, 90, 220), (30, 150, 60), (200, 140, 20), (140, 50, 170))

# 3x5 pixel glyphs, rows top to bottom ("#" = ink)
FONT: dict[str, tuple[str, ...]] = {
    "0": ("###", "#.#", "#.#", "#.#", "###"), "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"), "3": ("###", "..#", ".##", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"), "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"), "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"), "9": ("###", "#.#", "###", "..#", "###"),
    "+": ("...", ".#.", "###", ".#.", "..."),
}


class VisionTaskConfig(Section):
    """Sizes of the synthetic vision task; all seeds derive from `seed`."""

    seed: int = Field(0, description="seed every image and row derives from")
    kinds: list[Kind] = Field(["arithmetic", "counting"], min_length=1,
                              description="problem kinds, drawn in equal shares (module doc)")
    train_images: int = Field(2000, gt=0, description="training images (problems, SFT rows and captions)")
    heldout_problems: int = Field(200, gt=0, description="held-out image problems")
    image_size: int = Field(32, ge=32, description="square image side in pixels (the tower's input size)")
    jitter: int = Field(2, ge=0, le=4, description="arithmetic: the text moves by up to this many pixels")
    max_shapes: int = Field(4, ge=1, le=GRID * GRID, description="counting: 1..max_shapes shapes")


def draw_glyph(image: Any, char: str, x: int, y: int, scale: int, ink: tuple[int, int, int]) -> None:
    """Draw `char` with its top-left corner at (x, y), every font pixel a scale x scale block."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    for r, row in enumerate(FONT[char]):
        for c, cell in enumerate(row):
            if cell == "#":
                left, top = x + c * scale, y + r * scale
                draw.rectangle((left, top, left + scale - 1, top + scale - 1), fill=ink)


def sum_layout(size: int) -> list[tuple[int, int, int]]:
    """(x, y, scale) of `a`, `+` and `b`: the digits large at the sides, a small plus between."""
    top, middle = (size - 5 * SCALE) // 2, size // 2
    return [(1, top, SCALE), (middle - 3, middle - 5, 2), (size - 1 - 3 * SCALE, top, SCALE)]


def draw_sum(a: int, b: int, rng: random.Random, size: int, jitter: int) -> Any:
    """`a+b` on a light ground, the whole text moved by up to `jitter` pixels each way."""
    from PIL import Image

    image = Image.new("RGB", (size, size), rng.choice(GROUNDS))
    dx, dy = rng.randint(-jitter, jitter), rng.randint(-jitter, jitter)
    dx = max(-1, min(dx, 1))    # one pixel of side margin
    ink = rng.choice(INKS)
    for char, (x, y, scale) in zip(f"{a}+{b}", sum_layout(size)):
        draw_glyph(image, char, x + dx, y + dy, scale, ink)
    return image


def draw_shape(image: Any, shape: str, box: tuple[int, int, int, int], color: tuple[int, int, int]) -> None:
    """One filled shape inside `box` (left, top, right, bottom; inclusive)."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    left, top, right, bottom = box
    if shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "circle":
        draw.ellipse(box, fill=color)
    else:
        draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=color)


def draw_shapes(k: int, rng: random.Random, size: int) -> tuple[Any, list[str]]:
    """`k` shapes in distinct cells of the GRID x GRID grid, in reading order of their cells."""
    from PIL import Image

    image = Image.new("RGB", (size, size), (255, 255, 255))
    cell = size // GRID
    side = rng.randint(cell * 5 // 8, cell - 2)
    shapes = []
    for index in sorted(rng.sample(range(GRID * GRID), k)):
        shape = rng.choice(SHAPES)
        left = (index % GRID) * cell + rng.randint(0, cell - side)
        top = (index // GRID) * cell + rng.randint(0, cell - side)
        draw_shape(image, shape, (left, top, left + side - 1, top + side - 1), rng.choice(COLORS))
        shapes.append(shape)
    return image, shapes


def make_item(kind: str, rng: random.Random, cfg: VisionTaskConfig) -> dict[str, Any]:
    """One drawn problem: the image, what was drawn, the prompt, the answer and its texts."""
    if kind == "arithmetic":
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        image = draw_sum(a, b, rng, cfg.image_size, cfg.jitter)
        answer = a + b
        return {"kind": kind, "image": image, "drawn": f"{a}+{b}", "prompt": ARITHMETIC_PROMPT,
                "answer": str(answer), "caption": f"an image showing {a}+{b}",
                "response": f"{a}+{b}={answer}\n\\boxed{{{answer}}}"}
    k = rng.randint(1, cfg.max_shapes)
    image, shapes = draw_shapes(k, rng, cfg.image_size)
    listed = " ".join(shapes)
    return {"kind": kind, "image": image, "drawn": listed, "prompt": COUNTING_PROMPT, "answer": str(k),
            "caption": f"{NUMBER_WORDS[k] if k < 10 else k} shapes: {listed}",
            "response": f"{listed}: {k}\n\\boxed{{{k}}}"}


def png_bytes(image: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_split(cfg: VisionTaskConfig, n: int, split: str, folder: Path,
               exclude: set[str]) -> list[dict[str, Any]]:
    """`n` items of the split, kinds in turn, images written to folder/images (none whose bytes'
    digest is in `exclude`); each item keeps its relative image path and digest."""
    rng = random.Random(f"{cfg.seed}:vision:{split}")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    items: list[dict[str, Any]] = []
    while len(items) < n:
        item = make_item(cfg.kinds[len(items) % len(cfg.kinds)], rng, cfg)
        data = png_bytes(item.pop("image"))
        digest = hashlib.sha256(data).hexdigest()
        if digest in exclude:
            continue
        path = f"images/{split}_{len(items):05d}.png"
        (folder / path).write_bytes(data)
        items.append(item | {"path": path, "digest": digest, "id": f"{split}-{len(items)}"})
    return items


def problem_rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Problem rows (RL, eval): the kind is the row's difficulty, so eval reports it per kind."""
    return [{"id": i["id"], "prompt": i["prompt"], "answer": i["answer"], "images": [i["path"]],
             "difficulty": i["kind"]} for i in items]


def sft_rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SFT rows: the prompt and a short worked answer (what the image shows, then the result)."""
    return [{"prompt": i["prompt"], "response": i["response"], "images": [i["path"]]} for i in items]


def caption_rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """VL pretraining rows: the image, then its caption (`text` rows; the image goes in front)."""
    return [{"text": i["caption"], "images": [i["path"]]} for i in items]


def make_vision_task(cfg: VisionTaskConfig, folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Images under folder/images and the rows that name them: {"captions", "sft", "train",
    "heldout"}; the held-out images are drawn first and never repeated in training."""
    heldout = make_split(cfg, cfg.heldout_problems, "heldout", folder, set())
    train = make_split(cfg, cfg.train_images, "train", folder, {i["digest"] for i in heldout})
    return {"captions": caption_rows(train), "sft": sft_rows(train), "train": problem_rows(train),
            "heldout": problem_rows(heldout)}
