"""Images in chat messages (issue 16): read, checked, decoded, and laid out in the prompt.

    read_images     the request's image_url parts -> Decoded (RGB), or a 400 naming the part
    image_prompt    messages + decoded images -> prompt ids + ImageInput per image

An image reaches the server as a data: URI, or as an http(s) URL on a host the operator
listed in `server.image_fetch` (image_fetch.py: fetching arbitrary addresses from inside
the server is a request-forgery hole, so the default list is empty). Decoding is Pillow's, in
the ingress, never in the worker (whose C decoder a hostile file could crash): the format
must be one of FORMATS, its header's size is checked against MAX_PIXELS before a pixel is
decoded, and any failure of the decoder is the client's 400.

In the prompt an image is what the model's projector makes of it (worker/projector.py):
the model's own marker tokens around it and one position per embedding row. Those rows
carry image ids, not token ids: negative numbers derived from the image's digest (of its
decoded pixels), so the prefix cache matches the same picture again and no other.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import secrets
from dataclasses import dataclass

from ..messages import ImageInput
from ..model.chat_template import TemplateError
from ..worker.projector import Picture
from .errors import APIError
from .image_fetch import ImageFetch
from .limits import MAX_IMAGE_BYTES
from .request_types import ChatMessage, ImagePart
from .served import ServedModel
from .tool_prompt import NO_TOOLS, ToolPlan, render_chat

MAX_IMAGES = 8
"""Images in one request."""
MAX_PIXELS = 4096 * 1024
"""Width x height of one image (4 MP; its RGB copy travels to the worker: 12 MB)."""
MAX_ASPECT = 20
"""Longest side over shortest side: a 1-pixel-high strip would be resized to nothing."""
NO_FETCH = ImageFetch()
"""Fetches nothing: every http(s) URL is a 400 saying how to allow its host."""
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
_DATA_URI = re.compile(r"data:image/([a-z0-9.+-]{1,20});base64,", re.IGNORECASE)


@dataclass(frozen=True)
class Decoded:
    picture: Picture
    digest: str  # sha256 of the size and pixels, hex


def _bad(message: str, param: str, code: str = "invalid_image") -> APIError:
    return APIError(400, message, param=param, code=code)


def image_parts(messages: list[ChatMessage]) -> list[tuple[str, str]]:
    """(param, url) of every image part, in order."""
    return [(param, part.image_url.url) for param, part in _named(messages)]


def image_origins(messages: list[ChatMessage], origins: dict[int, str]) -> dict[str, str]:
    """For the APIs read into a chat request (Responses, Messages): the chat parameter of
    each image part -> where that API's client put it (`origins`: id(part) -> its path),
    so a 400 names the client's own field."""
    return {param: origins[id(part)] for param, part in _named(messages) if id(part) in origins}


def _named(messages: list[ChatMessage]) -> list[tuple[str, ImagePart]]:
    return [
        (f"messages[{i}].content[{j}].image_url.url", part)
        for i, message in enumerate(messages)
        for j, part in message.images()
    ]


def check_accepted(model: ServedModel, parts: list[tuple[str, str]]) -> None:
    """400 when this model takes no images, or too many were sent."""
    if parts and model.projector is None:
        raise _bad(
            f"model {model.id!r} does not take images: it has no multimodal projector "
            "(serve it with --mmproj FILE, or pull a model that comes with one)",
            parts[0][0],
            code="unsupported_content",
        )
    if len(parts) > MAX_IMAGES:
        raise _bad(f"at most {MAX_IMAGES} images per request, got {len(parts)}", parts[0][0])


def read_images(parts: list[tuple[str, str]], fetch: ImageFetch = NO_FETCH) -> list[Decoded]:
    """Decode each image part (fetching http(s) URLs as `fetch` allows). Blocking (Pillow,
    the fetch): run it off the event loop."""
    return [read_image(url, param, fetch) for param, url in parts]


def read_image(url: str, param: str, fetch: ImageFetch = NO_FETCH) -> Decoded:
    match = _DATA_URI.match(url)
    if match is None:
        if url[:8].lower().startswith(("http://", "https://")):
            return Decoded(*_decode(fetch.fetch(url, param), param))
        raise _bad(
            "an image must be a data: URI (data:image/png;base64,...) or an http(s) URL",
            param,
        )
    payload = url[match.end() :]
    if len(payload) > (MAX_IMAGE_BYTES * 4) // 3 + 4:
        raise _bad(f"the image is larger than {MAX_IMAGE_BYTES} bytes", param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("the image's data is not valid base64", param) from None
    return Decoded(*_decode(data, param))


def _decode(data: bytes, param: str) -> tuple[Picture, str]:
    from PIL import Image  # a few ms to import: only servers that see images pay it

    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size
            if width < 1 or height < 1 or width * height > MAX_PIXELS:
                raise _bad(
                    f"the image is {width}x{height} pixels; at most {MAX_PIXELS} pixels are taken",
                    param,
                )
            if max(width, height) > MAX_ASPECT * min(width, height):
                raise _bad(f"the image is {width}x{height}: too narrow (at most 1:{MAX_ASPECT})",
                           param)  # fmt: skip
            image.seek(0)  # an animation: its first frame
            rgb = image.convert("RGB").tobytes()
    except APIError:
        raise
    except Image.DecompressionBombError:
        raise _bad(
            f"the image is too large: at most {MAX_PIXELS} pixels are taken", param
        ) from None
    except Exception as exc:  # Pillow raises many kinds for a broken or hostile file
        raise _bad(
            f"the image could not be decoded ({type(exc).__name__}); formats taken: "
            + ", ".join(f.lower() for f in FORMATS),
            param,
        ) from None
    if len(rgb) != width * height * 3:
        raise _bad("the image could not be decoded to RGB", param)
    digest = hashlib.sha256(f"{width}x{height}:".encode() + rgb).hexdigest()
    return Picture(width, height, rgb), digest


def image_ids(digest: str, first: int, n: int) -> list[int]:
    """The ids of an image's rows first..first+n-1: negative (never a token), from the
    digest."""
    base = int(digest[:15], 16)
    return [-2 - (base + j) % (2**31 - 2) for j in range(first, first + n)]


def image_prompt(
    model: ServedModel,
    messages: list[ChatMessage],
    images: list[Decoded],
    tools: ToolPlan = NO_TOOLS,
) -> tuple[list[int], list[ImageInput]]:
    """The prompt with its images laid out, and the images as the worker gets them.
    Blocking (tokenizing, the projector's preprocessing): see pipeline.off_loop."""
    assert model.projector is not None
    marker = f"\ue002{secrets.token_hex(8)}\ue003"  # a client cannot forge it
    rendered = [m.as_template_dict(marker) for m in messages]
    try:
        parts = render_chat(model.template, rendered, tools.offered)
    except TemplateError as exc:
        raise _bad(str(exc), "messages", code="invalid_value") from None
    tokenize = model.tokenizer.tokenize
    tokens: list[int] = []
    inputs: list[ImageInput] = []
    for text, from_template in parts:
        pieces = [text] if from_template else text.split(marker)
        for k, piece in enumerate(pieces):
            if k > 0:
                if len(inputs) == len(images):
                    break
                tokens += _lay_out(model, images[len(inputs)], tokens, inputs)
            if piece:
                tokens += tokenize(piece, add_special=not tokens, parse_special=from_template)
    if len(inputs) != len(images):
        raise _bad(
            f"the model's chat template left out {len(images) - len(inputs)} of the images",
            "messages",
            code="invalid_value",
        )
    if not tokens or tokens[-1] < 0:
        raise _bad("the prompt cannot end with an image", "messages", code="invalid_value")
    return tokens, inputs


def _lay_out(
    model: ServedModel, image: Decoded, before: list[int], inputs: list[ImageInput]
) -> list[int]:
    assert model.projector is not None
    try:
        segments = model.projector.layout(image.picture)
    except ValueError as exc:
        raise _bad(f"the image could not be laid out: {exc}", "messages") from None
    out: list[int] = []
    spans: list[tuple[int, int]] = []
    rows_done = 0
    for segment in segments:
        if isinstance(segment, int):
            spans.append((len(before) + len(out), segment))
            out += image_ids(image.digest, rows_done, segment)
            rows_done += segment
        else:
            out += segment
    picture = image.picture
    inputs.append(ImageInput(image.digest, picture.width, picture.height, picture.rgb, spans))
    return out
