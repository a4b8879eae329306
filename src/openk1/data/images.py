"""Images in dataset rows (docs/data.md "Rows with images"); k1.5 is a vision-language model.

A row may carry `images`: a list whose items are a path (relative to the folder of the data file,
or absolute) or a `data:image/<fmt>;base64,...` URI. The prompt marks each image's place with
`<image>`; a prompt with no marker gets all of them before its text (`place_images`). Chat rows
use Hugging Face content parts (`messages_images`). Every image is read and decoded when the rows
are loaded, so a missing or unreadable image is an `OpenK1Error` naming the file, the row and the
image (`FILE: line 3: images[1]: no such file (/data/img/a.png)`), not a failure mid-training.

An image is kept as an `ImageRef` (where its bytes are, and their sha256); `load_image` gives the
decoded RGB image when a processor needs the pixels.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openk1.errors import OpenK1Error

if TYPE_CHECKING:
    from PIL import Image

IMAGE_TOKEN = "<image>"
IMAGE_KEYS = ("image", "url", "path")   # where a Hugging Face image content part holds its image

DATA_URI_RE = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<payload>.*)$", re.DOTALL)
LOCATION_RE = re.compile(r"^(?P<path>.*?)(?:\[[^\[\]]*\])?: (?:line|row) \d+$", re.DOTALL)
SHOWN_CHARS = 80   # how much of an item an error shows (a data URI can be megabytes long)


@dataclass(frozen=True)
class ImageRef:
    """One image of a row: `source` is the absolute path of the file, or the data URI itself;
    `digest` is the sha256 (hex) of the image's bytes, the same for a file and a data URI holding
    the same bytes (a key for caching the image's features)."""

    source: str
    digest: str

    @property
    def is_data_uri(self) -> bool:
        return self.source.startswith("data:")

    def __repr__(self) -> str:
        """Short even for a data URI of megabytes (a Problem's repr shows its images)."""
        return f"ImageRef({_shown(self.source)!r}, {self.digest[:12]}...)"


def data_dir(where: str) -> Path:
    """The folder that relative image paths start from: the one holding the data file named by a
    row location (`FILE: line N`, `FILE: row N`, `FOLDER[split]: row N`; io.location)."""
    match = LOCATION_RE.match(where)
    return Path(match.group("path") if match else where).parent


def resolve_images(row_images: Any, base_dir: str | Path, where: str) -> tuple[ImageRef, ...]:
    """Check a row's `images` (a list of paths or data URIs), read and decode each one, and give
    their ImageRefs in order; a bad item is an OpenK1Error `{where}: images[{i}]: <why> ({item})`."""
    if not isinstance(row_images, (list, tuple)):
        raise OpenK1Error(f"{where}: field 'images' must be a list of image paths or data URIs, "
                          f"got {type(row_images).__name__}")
    return tuple(resolve_image(item, base_dir, f"{where}: images[{i}]") for i, item in enumerate(row_images))


def resolve_image(item: Any, base_dir: str | Path, label: str) -> ImageRef:
    """One image (a path or a data URI), read and decoded; errors start with `label`."""
    if not isinstance(item, str):
        raise OpenK1Error(f"{label}: must be a path or a data:image/...;base64, URI, got {type(item).__name__} "
                          f"({_shown(item)})")
    source, data = _read_item(item, Path(base_dir), label)
    _check_decodes(data, label, item)
    return ImageRef(source=source, digest=hashlib.sha256(data).hexdigest())


def _read_item(item: str, base_dir: Path, label: str) -> tuple[str, bytes]:
    """(source, bytes) of a data URI or a file; every reason it cannot be read is an error."""
    if item.startswith("data:"):
        return item, _data_uri_bytes(item, label)
    if not item.strip():
        raise OpenK1Error(f"{label}: empty path ({item!r})")
    if item.startswith(("http://", "https://")):
        raise OpenK1Error(f"{label}: a URL; openk1 downloads nothing, give a local path or a data URI "
                          f"({_shown(item)})")
    path = (base_dir / Path(item).expanduser()).resolve()
    if not path.exists():
        raise OpenK1Error(f"{label}: no such file ({path})")
    if not path.is_file():
        raise OpenK1Error(f"{label}: not a file ({path})")
    try:
        return str(path), path.read_bytes()
    except OSError as exc:
        raise OpenK1Error(f"{label}: cannot read ({exc.strerror}) ({path})") from None


def _data_uri_bytes(uri: str, label: str) -> bytes:
    """The bytes of a `data:image/<fmt>;base64,<payload>` URI (whitespace in the payload ignored)."""
    match = DATA_URI_RE.match(uri)
    if match is None:
        raise OpenK1Error(f"{label}: a data URI must be data:image/<fmt>;base64,<data> ({_shown(uri)})")
    mime = match.group("mime").strip().lower()
    if not mime.startswith("image/"):
        raise OpenK1Error(f"{label}: not an image: media type {mime or 'none'!r} ({_shown(uri)})")
    if "base64" not in [p.strip().lower() for p in match.group("params").split(";")]:
        raise OpenK1Error(f"{label}: a data URI must be base64-encoded (data:{mime};base64,...) ({_shown(uri)})")
    try:
        return base64.b64decode("".join(match.group("payload").split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise OpenK1Error(f"{label}: bad base64 ({exc}) ({_shown(uri)})") from None


def _check_decodes(data: bytes, label: str, item: str) -> None:
    """Pillow must recognise the bytes (`verify`) and decode the whole image (`load`)."""
    try:
        with _open(data) as image:
            image.verify()
        with _open(data) as image:
            image.load()
    except OpenK1Error:
        raise
    except Exception as exc:   # Pillow raises many kinds on corrupt data (OSError, SyntaxError, EOFError, ...)
        raise OpenK1Error(f"{label}: not a readable image ({_why(exc)}) ({_shown(item)})") from None


def image_field(images: Sequence[ImageRef]) -> dict[str, list[str]]:
    """The `images` field of a row written elsewhere than its data file (absolute paths or data
    URIs), or nothing when there are no images."""
    return {"images": [ref.source for ref in images]} if images else {}


def load_image(ref: ImageRef) -> Image.Image:
    """The decoded image of `ref`, in RGB; bytes that changed since the rows were loaded (another
    digest) are an error, since features cached under the digest would no longer match."""
    label = f"image {_shown(ref.source)}"
    _, data = _read_item(ref.source, Path("/"), label)
    if hashlib.sha256(data).hexdigest() != ref.digest:
        raise OpenK1Error(f"{label}: its bytes changed since the data was loaded (sha256 differs)")
    try:
        with _open(data) as image:
            return image.convert("RGB")
    except OpenK1Error:
        raise
    except Exception as exc:   # see _check_decodes
        raise OpenK1Error(f"{label}: not a readable image ({_why(exc)})") from None


def place_images(prompt: str, count: int, where: str) -> str:
    """`prompt` with exactly `count` `<image>` markers: as it is when it has `count` of them; with
    none, the `count` markers before the text (`<image><image>\\n` + prompt); any other number of
    markers is an error naming the row."""
    found = prompt.count(IMAGE_TOKEN)
    if found == count:
        return prompt
    if found == 0:
        return IMAGE_TOKEN * count + "\n" + prompt
    raise OpenK1Error(f"{where}: the prompt has {found} {IMAGE_TOKEN} marker{'s' * (found != 1)} but the row "
                      f"has {count} image{'s' * (count != 1)} (give one marker per image, or none to put "
                      f"the images before the text)")


def messages_images(messages: Any, base_dir: str | Path, where: str,
                    field: str = "messages") -> tuple[list[dict[str, Any]], tuple[ImageRef, ...]]:
    """Chat turns whose `content` is a string or a list of Hugging Face content parts
    (`{"type": "text", "text": ...}`, `{"type": "image", "image" | "url" | "path": ...}`): the turns
    with each image part normalised to `{"type": "image"}` (what chat templates expect), and the
    images in order. Errors name the part: `{where}: messages[1].content[0]: no such file (...)`."""
    if not isinstance(messages, list):
        raise OpenK1Error(f"{where}: field '{field}' must be a list of {{role, content}}, "
                          f"got {type(messages).__name__}")
    turns: list[dict[str, Any]] = []
    images: list[ImageRef] = []
    for i, message in enumerate(messages):
        label = f"{where}: {field}[{i}]"
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)):
            raise OpenK1Error(f"{label}: must be {{role: str, content: str or list of content parts}}")
        content = message.get("content")
        if not isinstance(content, str):
            content = _content_parts(content, base_dir, f"{label}.content", images)
        turns.append({**message, "content": content})
    return turns, tuple(images)


def _content_parts(parts: Any, base_dir: str | Path, label: str, images: list[ImageRef]) -> list[dict[str, Any]]:
    """A turn's content parts, image parts normalised (their ImageRefs appended to `images`)."""
    if not isinstance(parts, list):
        raise OpenK1Error(f"{label}: must be a string or a list of content parts, got {type(parts).__name__}")
    out: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part, dict) and isinstance(part.get("text"), str):
            out.append({"type": "text", "text": part["text"]})
        elif kind == "image" and isinstance(part, dict):
            images.append(resolve_image(_image_value(part, f"{label}[{j}]"), base_dir, f"{label}[{j}]"))
            out.append({"type": "image"})
        else:
            raise OpenK1Error(f"{label}[{j}]: must be {{type: text, text: str}} or {{type: image, "
                              f"{' | '.join(IMAGE_KEYS)}: path or data URI}} ({_shown(part)})")
    return out


def _image_value(part: dict[str, Any], label: str) -> Any:
    """The image of an image part: its first non-null key of IMAGE_KEYS."""
    for key in IMAGE_KEYS:
        if part.get(key) is not None:
            return part[key]
    raise OpenK1Error(f"{label}: an image part needs one of {', '.join(IMAGE_KEYS)} ({_shown(part)})")


def _open(data: bytes) -> Image.Image:
    """Pillow's lazy image of `data`; Pillow is imported here, so rows without images need none."""
    try:
        from PIL import Image as pil_image
    except ImportError:
        raise OpenK1Error("rows with images need Pillow (pip install pillow)") from None
    return pil_image.open(io.BytesIO(data))


def _why(exc: Exception) -> str:
    """Why Pillow could not read an image, on one line (only called after Pillow was imported)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):   # its message names a BytesIO object
        return "not a format Pillow knows"
    return " ".join(f"{type(exc).__name__}: {exc}".split()) if str(exc) else type(exc).__name__


def _shown(item: Any) -> str:
    """An item as errors show it: at most SHOWN_CHARS characters."""
    text = item if isinstance(item, str) else repr(item)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + f"... ({len(text)} chars)"


# ---------------------------------------------------------------- through a model's processor


def image_token_id(processor: Any) -> int:
    """The id of the processor's image token (`<image>` for LLaVA)."""
    found: Any = processor.tokenizer.convert_tokens_to_ids(getattr(processor, "image_token", IMAGE_TOKEN))
    return int(found)


def pixel_values(processor: Any, images: Sequence[ImageRef]) -> Any:
    """[n, 3, H, W] tensor: the images read (their sha256 checked) and prepared by the processor's
    image processor, in order (SFT batches, rollout features: one preparation for both)."""
    out = processor.image_processor(images=[load_image(ref) for ref in images], return_tensors="pt")
    return out["pixel_values"]


@lru_cache(maxsize=65536)
def image_tokens(processor: Any, image: ImageRef) -> tuple[int, ...]:
    """The tokens one `<image>` becomes for `image`: the processor's own expansion of the marker
    alone (LLaVA: image_seq_length `<image>` tokens; cached per processor and image)."""
    token = getattr(processor, "image_token", IMAGE_TOKEN)
    out = processor(text=token, images=[load_image(image)], add_special_tokens=False)
    return tuple(int(t) for t in out["input_ids"][0])
