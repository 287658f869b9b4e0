"""Document-like pictures made at test time with Pillow, for the document tests."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw


def scan(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A document-like picture: white page, some dark "text" bars."""
    image = Image.new(mode, size, "white")
    draw = ImageDraw.Draw(image)
    width, height = size
    for y in range(height // 10, height - 1, max(height // 12, 2)):
        draw.rectangle((width // 10, y, width - width // 10, y + max(height // 60, 1)), fill="black")
    return image


def noise(size: tuple[int, int], seed: int = 1) -> Image.Image:
    return Image.frombytes("RGB", size, random.Random(seed).randbytes(size[0] * size[1] * 3))


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()
