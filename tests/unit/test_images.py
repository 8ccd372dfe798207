"""Reading image parts in the ingress (issue 16): data URIs decoded by Pillow, hostile and
broken files refused with a 400 naming the part, never an exception of another kind."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest

from inferflux.ingress.errors import APIError
from inferflux.ingress.images import MAX_PIXELS, image_ids, read_image
from inferflux.worker.llama import Model
from tests.vision_fixture import png

PARAM = "messages[0].content[1].image_url.url"


def uri(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a size its (tiny) data does not have: a decompression
    bomb's shape, refused from the header alone."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_an_image_decodes_to_rgb_and_its_digest_is_its_pixels() -> None:
    decoded = read_image(uri(png(48, 40, seed=1)), PARAM)
    assert (decoded.picture.width, decoded.picture.height) == (48, 40)
    assert len(decoded.picture.rgb) == 48 * 40 * 3
    assert read_image(uri(png(48, 40, seed=1)), PARAM).digest == decoded.digest
    assert read_image(uri(png(48, 40, seed=2)), PARAM).digest != decoded.digest
    # The same pixels in another lossless format: the same image.
    assert read_image(uri(png(48, 40, seed=1, fmt="BMP"), "bmp"), PARAM).digest == decoded.digest
    jpeg = read_image(uri(png(48, 40, seed=1, fmt="JPEG"), "jpeg"), PARAM)
    assert (jpeg.picture.width, jpeg.picture.height) == (48, 40)


def test_image_ids_are_negative_and_distinct_per_row() -> None:
    ids = image_ids("ab" * 32, 0, 40)
    assert all(i < -1 for i in ids) and len(set(ids)) == 40
    assert image_ids("ab" * 32, 16, 24) == ids[16:]
    assert min(ids) >= -(2**31)


@pytest.mark.parametrize(
    "url, says",
    [
        ("data:image/png;base64,@@@@", "not valid base64"),
        ("data:image/png;base64,", "could not be decoded"),
        (uri(b"GIF89a" + b"\xff" * 200, "gif"), "could not be decoded"),
        (uri(png()[:70]), "could not be decoded"),
        (uri(png_claiming(50_000, 50_000)), f"at most {MAX_PIXELS} pixels"),
        (uri(png_claiming(0, 10)), "could not be decoded"),
        (uri(png(2400, 2000, solid=True)), "pixels"),
        (uri(png(400, 8)), "too narrow"),
        (uri(png(fmt="TIFF"), "tiff"), "could not be decoded"),
        (uri(png(fmt="ICO"), "x-icon"), "could not be decoded"),
        ("http://169.254.169.254/latest/meta-data", "not fetched"),
        ("HTTPS://example.com/a.png", "not fetched"),
        ("file:///etc/passwd", "data: URI"),
        ("data:text/plain;base64,aGVsbG8=", "data: URI"),
        ("data:image/png;base64," + "A" * (12 * 1024 * 1024), "larger than"),
    ],
)
def test_bad_images_are_a_400_naming_the_part(url: str, says: str) -> None:
    with pytest.raises(APIError) as caught:
        read_image(url, PARAM)
    assert caught.value.status == 400 and caught.value.param == PARAM
    assert says in caught.value.message


def test_the_tokenizer_gives_image_ids_no_text(model_path: str) -> None:
    """The policy gate detokenizes whole prompts (guardrails): image ids are skipped, never
    handed to llama.cpp (an id out of the vocabulary would abort the process)."""
    tokenizer = Model(model_path, vocab_only=True)
    try:
        ids = tokenizer.tokenize("a cat", add_special=False)
        with_image = [*ids[:1], *image_ids("ab" * 32, 0, 3), *ids[1:]]
        assert tokenizer.detokenize(with_image) == tokenizer.detokenize(ids) == "a cat"
    finally:
        tokenizer.close()
