"""The demo's synthetic vision task (data/synthetic_vision.py): seeded, and every answer agrees with
what the PNG shows, read back from its pixels (glyph templates for the sums, inked quadrants for the
shapes)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from openk1.data.io import load_problems, write_jsonl
from openk1.data.synthetic_vision import FONT, GRID, VisionTaskConfig, make_vision_task, sum_layout

CFG = VisionTaskConfig(train_images=60, heldout_problems=20)


def ink_mask(image: Image.Image) -> np.ndarray:
    """True where a pixel differs from the ground (the most common color)."""
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colors, counts = np.unique(pixels, axis=0, return_counts=True)
    return (np.asarray(image.convert("RGB")) != colors[counts.argmax()]).any(axis=-1)


def glyph_mask(char: str, x: int, y: int, scale: int, size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    for r, row in enumerate(FONT[char]):
        for c, cell in enumerate(row):
            if cell == "#":
                mask[y + r * scale:y + (r + 1) * scale, x + c * scale:x + (c + 1) * scale] = True
    return mask


def read_sum(image: Image.Image, jitter: int) -> tuple[int, int]:
    """The (a, b) whose glyphs, at some offset within the jitter, are exactly the image's ink."""
    ink, size = ink_mask(image), image.size[0]
    (xa, y, scale), (xp, yp, plus_scale), (xb, _, _) = sum_layout(size)
    found = {(a, b) for dx in range(-1, 2) for dy in range(-jitter, jitter + 1) for a in range(10) for b in range(10)
             if np.array_equal(ink, glyph_mask(str(a), xa + dx, y + dy, scale, size)
                               | glyph_mask("+", xp + dx, yp + dy, plus_scale, size)
                               | glyph_mask(str(b), xb + dx, y + dy, scale, size))}
    assert len(found) == 1, found
    return found.pop()


def count_shapes(image: Image.Image) -> int:
    """Quadrants holding ink: the shapes sit in distinct cells of the grid."""
    ink, cell = ink_mask(image), image.size[0] // GRID
    cells = [ink[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] for r in range(GRID) for c in range(GRID)]
    return sum(bool(c.any()) for c in cells)


def task(folder: Path, cfg: VisionTaskConfig = CFG) -> dict[str, list[dict[str, Any]]]:
    return make_vision_task(cfg, folder)


def test_seeded(tmp_path: Path):
    one, two = task(tmp_path / "a"), task(tmp_path / "b")
    assert one == two
    for row in one["train"] + one["heldout"]:
        (path,) = row["images"]
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()
    other = task(tmp_path / "c", CFG.model_copy(update={"seed": 1}))
    assert [r["answer"] for r in other["train"]] != [r["answer"] for r in one["train"]]


def test_answers_are_what_the_images_show(tmp_path: Path):
    rows = task(tmp_path)
    for split in ("train", "heldout"):
        for row in rows[split]:
            image = Image.open(tmp_path / row["images"][0])
            assert image.size == (32, 32) and row["prompt"].startswith("<image>\n")
            if row["difficulty"] == "arithmetic":
                a, b = read_sum(image, CFG.jitter)
                assert row["answer"] == str(a + b)
            else:
                assert row["answer"] == str(count_shapes(image)) and 1 <= int(row["answer"]) <= CFG.max_shapes
    assert {r["difficulty"] for r in rows["train"]} == {"arithmetic", "counting"}


def test_rows_caption_and_work_out_the_drawn_content(tmp_path: Path):
    rows = task(tmp_path)
    for problem, sft, caption in zip(rows["train"], rows["sft"], rows["captions"]):
        assert sft["images"] == caption["images"] == problem["images"]
        assert sft["response"].endswith(f"\\boxed{{{problem['answer']}}}")
        if problem["difficulty"] == "arithmetic":
            a, b = read_sum(Image.open(tmp_path / problem["images"][0]), CFG.jitter)
            assert caption["text"] == f"an image showing {a}+{b}" and sft["response"].startswith(f"{a}+{b}={a + b}\n")
        else:
            shapes = sft["response"].split(":")[0].split()
            assert len(shapes) == int(problem["answer"]) and caption["text"].endswith(" ".join(shapes))


def test_heldout_images_never_in_training_and_rows_load(tmp_path: Path):
    rows = task(tmp_path)
    digest = {split: {hashlib.sha256((tmp_path / r["images"][0]).read_bytes()).hexdigest() for r in rows[split]}
              for split in ("train", "heldout")}
    assert not digest["train"] & digest["heldout"]
    write_jsonl(tmp_path / "heldout.jsonl", rows["heldout"])
    problems = load_problems(str(tmp_path / "heldout.jsonl"))
    assert len(problems) == 20 and all(len(p.images) == 1 for p in problems)
    assert json.loads((tmp_path / "heldout.jsonl").read_text().splitlines()[0])["difficulty"] == "arithmetic"
