"""Rows with images (docs/data.md "Rows with images"): paths relative to the data file or absolute,
data URIs, `<image>` marker placement, chat content parts, and load-time errors naming file,
line and image."""

import base64
import hashlib
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from openk1.data.images import (
    IMAGE_TOKEN,
    ImageRef,
    data_dir,
    load_image,
    messages_images,
    place_images,
    resolve_images,
)
from openk1.data.io import load_problems, to_problem
from openk1.errors import OpenK1Error


def png_bytes(color=(255, 0, 0), size=(2, 3), mode="RGB"):
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data, mime="image/png"):
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def folder(tmp_path):
    """A data folder with img/red.png and img/blue.png."""
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "red.png").write_bytes(png_bytes())
    (tmp_path / "img" / "blue.png").write_bytes(png_bytes((0, 0, 255)))
    return tmp_path


def test_relative_absolute_and_data_uri_images(folder, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere") / "green.png"
    other.write_bytes(png_bytes((0, 255, 0)))
    rows = [{"prompt": "Which colour?", "answer": "red", "images": ["img/red.png"]},
            {"prompt": "Compare <image> and <image>.", "answer": "x", "images": [str(other), "./img/blue.png"]},
            {"prompt": "<image> here", "answer": "x", "images": [data_uri(png_bytes())]},
            {"prompt": "no images", "answer": "x"}]
    a, b, c, d = load_problems(write(folder / "p.jsonl", rows))
    assert a.images == (ImageRef(str(folder / "img" / "red.png"), hashlib.sha256(png_bytes()).hexdigest()),)
    assert a.prompt == "<image>\nWhich colour?"
    assert [r.source for r in b.images] == [str(other), str(folder / "img" / "blue.png")]
    assert b.prompt == "Compare <image> and <image>."
    assert c.images[0].is_data_uri and c.prompt == "<image> here"
    assert (d.images, d.prompt, d.extra) == ((), "no images", {})
    assert "images" not in a.extra
    assert load_image(b.images[0]).getpixel((0, 0)) == (0, 255, 0)


def test_same_bytes_same_digest_as_path_or_data_uri(folder):
    by_path, by_uri = resolve_images(["img/red.png", data_uri(png_bytes())], folder, "p.jsonl: line 1")
    assert by_path.digest == by_uri.digest == hashlib.sha256(png_bytes()).hexdigest()
    assert by_path.source != by_uri.source
    assert load_image(by_uri).tobytes() == load_image(by_path).tobytes()


def test_paths_are_relative_to_the_data_file_not_the_working_directory(folder, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    path = write(folder / "sub.jsonl", [{"prompt": "p", "answer": "a", "images": ["img/red.png"]}])
    (problem,) = load_problems(path)
    assert problem.images[0].source == str(folder / "img" / "red.png")


def test_load_image_gives_rgb_and_refuses_changed_bytes(folder):
    (folder / "rgba.png").write_bytes(png_bytes((1, 2, 3, 128), mode="RGBA"))
    ref, red = resolve_images(["rgba.png", "img/red.png"], folder, "w")
    image = load_image(ref)
    assert image.mode == "RGB" and image.size == (2, 3)
    (folder / "img" / "red.png").write_bytes(png_bytes((9, 9, 9)))
    with pytest.raises(OpenK1Error, match="changed since the data was loaded"):
        load_image(red)


def test_data_dir_from_row_locations(tmp_path):
    assert data_dir("data/train.jsonl: line 3") == data_dir("data/train.parquet: row 7") == Path("data")
    assert str(data_dir("/x/ds[test]: row 2")) == "/x"
    assert str(data_dir("/a: b/c.jsonl: line 1")) == "/a: b"


@pytest.mark.parametrize("prompt, count, expected", [
    ("What is shown?", 1, "<image>\nWhat is shown?"),
    ("Compare.", 2, "<image><image>\nCompare."),
    ("A <image> then B <image>", 2, "A <image> then B <image>"),
    ("plain", 0, "plain"),
])
def test_place_images(prompt, count, expected):
    assert place_images(prompt, count, "w") == expected
    assert expected.count(IMAGE_TOKEN) == count


@pytest.mark.parametrize("prompt, count, message", [
    ("<image> and <image>", 1, "has 2 <image> markers but the row has 1 image "),
    ("<image> only", 3, "has 1 <image> marker but the row has 3 images"),
    ("<image>", 0, "has 1 <image> marker but the row has 0 images"),
])
def test_place_images_mismatch_names_the_row(tmp_path, prompt, count, message):
    with pytest.raises(OpenK1Error, match=rf"^f.jsonl: line 4: the prompt {message}"):
        place_images(prompt, count, "f.jsonl: line 4")


def test_marker_mismatch_in_a_file(folder):
    path = write(folder / "p.jsonl", [{"prompt": "<image><image>", "answer": "a", "images": ["img/red.png"]}])
    with pytest.raises(OpenK1Error, match=r"p.jsonl: line 1: the prompt has 2 <image> markers"):
        load_problems(path)


def bad_items(folder):
    """(item, what the error says) for each way an image can be wrong."""
    (folder / "corrupt.png").write_bytes(png_bytes()[:40])
    (folder / "notes.png").write_text("not an image")
    return [
        ("img/missing.png", rf"no such file \({re.escape(str(folder / 'img' / 'missing.png'))}\)"),
        ("corrupt.png", r"not a readable image \(.*\) \(corrupt.png\)"),
        ("notes.png", r"not a readable image \(not a format Pillow knows\) \(notes.png\)"),
        ("img", r"not a file"),
        ("data:image/png;base64,@@@not-base64", r"bad base64"),
        ("data:image/png;base64,iVBORw0KGgo", r"bad base64"),
        (data_uri(b"hello", "text/plain"), r"not an image: media type 'text/plain'"),
        ("data:image/png," + "x" * 300, r"a data URI must be base64-encoded .*\.\.\. \(315 chars\)\)$"),
        (data_uri(b"GIF89a broken"), r"not a readable image"),
        ("https://example.com/a.png", r"a URL; openk1 downloads nothing"),
        ("", r"empty path"),
        (3, r"must be a path or a data:image/...;base64, URI, got int \(3\)"),
        ({"path": "img/red.png"}, r"must be a path .*, got dict"),
    ]


def test_each_bad_image_names_file_line_and_image(folder):
    for item, why in bad_items(folder):
        path = write(folder / "bad.jsonl", [{"prompt": "ok", "answer": "1"},
                                            {"prompt": "x", "answer": "2", "images": ["img/red.png", item]}])
        with pytest.raises(OpenK1Error, match=rf"^{re.escape(str(path))}: line 2: images\[1\]: {why}") as info:
            load_problems(path)
        assert "\n" not in str(info.value)


def test_images_field_must_be_a_list(folder):
    with pytest.raises(OpenK1Error, match=r"line 1: field 'images' must be a list .* got str"):
        load_problems(write(folder / "p.jsonl", [{"prompt": "x", "answer": "1", "images": "img/red.png"}]))


def test_null_images_is_no_images_and_other_checks_come_first(folder):
    assert to_problem({"prompt": "x", "answer": "1", "images": None}, "p.jsonl: line 1").images == ()
    with pytest.raises(OpenK1Error, match="missing field 'answer'"):
        to_problem({"prompt": "x", "images": ["nope.png"]}, "p.jsonl: line 1")


def test_to_problem_takes_an_explicit_base_dir(folder):
    problem = to_problem({"prompt": "x", "answer": "1", "images": ["img/red.png"]}, "somewhere", base_dir=folder)
    assert problem.images[0].source == str(folder / "img" / "red.png")


def test_messages_content_parts(folder):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "image", "image": "img/red.png"},
                                             {"type": "text", "text": "and"},
                                             {"type": "image", "url": data_uri(png_bytes((0, 0, 255)))},
                                             {"type": "image", "path": "img/blue.png", "image": None}]},
                {"role": "assistant", "content": [{"type": "text", "text": "\\boxed{red}"}]}]
    turns, images = messages_images(messages, folder, "chat.jsonl: line 1")
    assert turns[0] == messages[0]
    assert turns[1]["content"] == [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"},
                                   {"type": "image"}]
    assert turns[2] == messages[2]
    assert [i.source for i in images] == [str(folder / "img" / "red.png"), messages[1]["content"][2]["url"],
                                          str(folder / "img" / "blue.png")]
    assert images[1].digest == images[2].digest


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": [{"type": "image", "image": "img/gone.png"}]}],
     r"messages\[0\].content\[0\]: no such file"),
    ([{"role": "user", "content": "hi"}, {"role": "user", "content": [{"type": "image"}]}],
     r"messages\[1\].content\[0\]: an image part needs one of image, url, path"),
    ([{"role": "user", "content": [{"type": "video", "video": "a.mp4"}]}],
     r"messages\[0\].content\[0\]: must be \{type: text, text: str\} or \{type: image"),
    ([{"role": "user", "content": [{"type": "text", "text": 3}]}], r"messages\[0\].content\[0\]: must be"),
    ([{"role": "user", "content": 5}], r"messages\[0\].content: must be a string or a list of content parts"),
    ([{"content": "x"}], r"messages\[0\]: must be \{role: str"),
    ({"role": "user"}, r"field 'messages' must be a list"),
])
def test_messages_errors_name_the_part(folder, messages, message):
    with pytest.raises(OpenK1Error, match=rf"^chat.jsonl: line 2: {message}"):
        messages_images(messages, folder, "chat.jsonl: line 2")
