"""server.rules.documents: image checks, file names, due dates and the blob store (spec §2 rule 1).

Every image is made at test time, with Pillow or (for the decompression bomb)
by hand; no binary fixture is committed.  "No decoding happened" is proven by
making Pillow's decode entry point fail for the duration of the call.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, TiffImagePlugin, WebPImagePlugin

from server.rules.documents import (
    FORMATS,
    MAX_FRAMES,
    MAX_SIDE,
    DocumentError,
    ImageFacts,
    check_image,
)

from .image_cases import encode, noise, scan

# --------------------------------------------------------------------------
# helpers


def encode_pages(pages: list[Image.Image], fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    pages[0].save(buffer, fmt, save_all=True, append_images=pages[1:], **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bilevel_png(width: int, height: int) -> bytes:
    """An all-black 1-bit grayscale PNG of any size, built without Pillow.

    The IDAT stream is compressed block by block, so even a 30,000 x 30,000
    bomb (112 MB of raw scanlines) never exists in memory uncompressed.
    """
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    row = b"\x00" + b"\x00" * ((width + 7) // 8)  # filter type 0, then the packed pixels
    compressor = zlib.compressobj(9)
    parts = []
    block_rows = 1000
    for start in range(0, height, block_rows):
        parts.append(compressor.compress(row * min(block_rows, height - start)))
    parts.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return bilevel_png(30_000, 30_000)


@contextmanager
def decoding_forbidden() -> Iterator[None]:
    """Any attempt to decode pixels inside the block fails the test."""

    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError(f"decoded {self.format} {self.size} although the header should have been refused")

    with pytest.MonkeyPatch.context() as patch:
        # Plugins that override load (WEBP decodes in its own) are patched too.
        for cls in (ImageFile.ImageFile, WebPImagePlugin.WebPImageFile, TiffImagePlugin.TiffImageFile):
            patch.setattr(cls, "load", refuse)
        yield


def refused(data: bytes, name: str = "", **kwargs: int) -> str:
    with pytest.raises(DocumentError) as caught:
        check_image(data, name, **kwargs)
    return str(caught.value)


# --------------------------------------------------------------------------
# accepted images


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("PNG", {}),
        ("JPEG", {"quality": 85}),
        ("WEBP", {"quality": 80}),
        ("TIFF", {"compression": "tiff_deflate"}),
    ],
)
def test_largest_allowed_scan_is_accepted_with_its_facts(fmt: str, options: dict[str, object]) -> None:
    data = encode(scan((MAX_SIDE, MAX_SIDE)), fmt, **options)

    facts = check_image(data, f"scan.{fmt.lower()}")

    assert facts == ImageFacts(
        format=fmt, width=2000, height=2000, size=len(data), sha256=hashlib.sha256(data).hexdigest()
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_width_and_height_are_not_swapped(fmt: str) -> None:
    data = encode(noise((64, 48)), fmt)

    facts = check_image(data)

    assert (facts.format, facts.width, facts.height, facts.size) == (fmt, 64, 48, len(data))


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "I;16"])
def test_common_scanner_modes_are_accepted(mode: str) -> None:
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    image = scan((120, 80)).convert("L").convert(mode) if mode != "I;16" else Image.new("I;16", (120, 80), 300)

    assert check_image(encode(image, fmt)).format == fmt


def test_multi_page_tiff_within_limits_is_accepted_with_the_first_page_size() -> None:
    pages = [scan((300, 400)), scan((400, 300)), scan((MAX_SIDE, 10))]
    data = encode_pages(pages, "TIFF")

    facts = check_image(data, "contract.tif")

    assert (facts.format, facts.width, facts.height) == ("TIFF", 300, 400)


def test_ten_pages_are_accepted() -> None:
    data = encode_pages([scan((40, 30)) for _ in range(MAX_FRAMES)], "TIFF")

    assert check_image(data).format == "TIFF"


def test_animated_webp_and_png_are_accepted() -> None:
    frames = [noise((50, 40), seed) for seed in range(3)]

    assert check_image(encode_pages(frames, "WEBP")).format == "WEBP"
    assert check_image(encode_pages(frames, "PNG")).format == "PNG"


def test_jpeg_with_extra_pictures_counts_as_jpeg() -> None:
    # Pillow names these "MPO"; the first picture is an ordinary JPEG.
    data = encode_pages([scan((60, 50)), scan((30, 20))], "MPO")

    facts = check_image(data, "phone.jpg")

    assert (facts.format, facts.width, facts.height) == ("JPEG", 60, 50)


# --------------------------------------------------------------------------
# refused on the header: size, bombs


@pytest.mark.parametrize(("width", "height"), [(2001, 10), (10, 2001)])
def test_one_pixel_too_many_on_either_side_is_refused(width: int, height: int) -> None:
    with decoding_forbidden():
        message = refused(encode(Image.new("L", (width, height), 255), "PNG"), "shot.png")

    assert message == (
        f"shot.png is {width} × {height} px; each side must be at most 2000 px: scale it down and upload again"
    )


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "TIFF"])
def test_oversized_scan_is_refused_in_every_format(fmt: str) -> None:
    data = encode(Image.new("L", (2400, 30), 255), fmt)

    with decoding_forbidden():
        message = refused(data, f"a.{fmt.lower()}")

    assert message.startswith(f"a.{fmt.lower()} is 2400 × 30 px; each side must be at most 2000 px")


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_decoding_guard_does_catch_decoding(fmt: str) -> None:
    # Without this, the "refused before decoding" tests could pass vacuously.
    data = encode(scan((40, 30)), fmt)

    with decoding_forbidden(), pytest.raises(AssertionError, match="decoded"):
        check_image(data)


def test_decompression_bomb_is_refused_on_its_header(bomb: bytes) -> None:
    assert len(bomb) < 200_000  # 900 million pixels in a small upload: that is what makes it a bomb

    with decoding_forbidden():
        message = refused(bomb, "bomb.png")

    assert message == (
        "bomb.png is 30000 × 30000 px; each side must be at most 2000 px: scale it down and upload again"
    )


def test_image_in_pillows_warning_range_is_refused_on_its_header() -> None:
    # 100 million pixels: above Pillow's warning threshold, below its error threshold.
    with decoding_forbidden():
        message = refused(bilevel_png(10_000, 10_000), "big.png")

    assert message.startswith("big.png is 10000 × 10000 px; each side must be at most 2000 px")


def test_image_below_pillows_bomb_limits_is_refused_by_our_own_header_check() -> None:
    with decoding_forbidden():
        message = refused(bilevel_png(5_000, 5_000), "scan600dpi.png")

    assert message.startswith("scan600dpi.png is 5000 × 5000 px")


def test_multi_page_tiff_with_one_oversized_page_is_refused_before_decoding() -> None:
    data = encode_pages([scan((300, 400)), scan((2001, 300)), scan((300, 400))], "TIFF")

    with decoding_forbidden():
        message = refused(data, "contract.tif")

    assert message == (
        "contract.tif, page 2, is 2001 × 300 px; each side must be at most 2000 px: scale it down and upload again"
    )


def test_more_than_ten_pages_are_refused_before_decoding() -> None:
    data = encode_pages([scan((40, 30)) for _ in range(MAX_FRAMES + 1)], "TIFF")

    with decoding_forbidden():
        message = refused(data, "book.tif")

    assert message.startswith("book.tif has more than 10 pages or frames")
    assert "split it into files of at most 10 pages" in message


def zero_width(fmt: str) -> bytes:
    data = bytearray(encode(Image.new("L", (5, 5)), fmt))
    if fmt == "PNG":
        data[16:20] = struct.pack(">I", 0)  # IHDR width
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    else:  # little-endian TIFF as Pillow writes it: patch the ImageWidth (256) entry of the first IFD
        ifd = struct.unpack("<I", data[4:8])[0]
        for entry in range(ifd + 2, ifd + 2 + 12 * struct.unpack("<H", data[ifd : ifd + 2])[0], 12):
            if struct.unpack("<H", data[entry : entry + 2])[0] == 256:
                data[entry + 8 : entry + 12] = struct.pack("<I", 0)
    return bytes(data)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_zero_pixel_image_is_refused(fmt: str) -> None:
    # Pillow 13 already refuses these when identifying; our own check covers
    # any format or version where it does not.
    data = zero_width(fmt)

    with decoding_forbidden():
        message = refused(data, "x")

    assert message.startswith("x: not an image") or "has no pixels" in message


# --------------------------------------------------------------------------
# refused: not an image, wrong format, damaged


def test_text_file_named_png_is_not_an_image() -> None:
    message = refused(b"hello, this is not an image\n", "scan.png")

    assert message == (
        "scan.png: not an image in PNG, JPEG, WEBP or TIFF format; scan the document again and save it as one of those"
    )


@pytest.mark.parametrize(
    ("fmt", "name"),
    [("GIF", "scan.gif"), ("BMP", "scan.bmp"), ("PDF", "scan.pdf"), ("ICO", "scan.ico"), ("PPM", "scan.ppm")],
)
def test_real_images_in_other_formats_are_refused(fmt: str, name: str) -> None:
    data = encode(scan((64, 64)), fmt)

    assert refused(data, name).startswith(f"{name}: not an image in PNG, JPEG, WEBP or TIFF format")


def test_gif_renamed_to_png_is_still_refused() -> None:
    assert "not an image" in refused(encode(scan((64, 64)), "GIF"), "scan.png")


def test_truncated_png_is_refused_as_damaged() -> None:
    data = encode(noise((100, 100)), "PNG")

    message = refused(data[: len(data) // 2], "half.png")

    assert message.startswith("half.png is damaged or truncated: ")
    assert message.endswith("save or export it again and upload the new file")


def test_png_cut_after_its_pixels_is_refused_as_damaged() -> None:
    # The pixel data is complete; only the IEND chunk is missing.
    data = encode(noise((100, 100)), "PNG")

    assert "is damaged or truncated" in refused(data[:-12], "x.png")


def test_png_with_a_corrupted_byte_is_refused_as_damaged() -> None:
    data = bytearray(encode(noise((100, 100)), "PNG"))
    data[len(data) // 2] ^= 0xFF  # inside IDAT: the chunk CRC no longer matches

    assert "is damaged or truncated" in refused(bytes(data), "x.png")


def test_png_with_a_wrong_checksum_is_refused_as_damaged() -> None:
    # The pixels decode fine; only the IDAT chunk's CRC is wrong.
    data = bytearray(encode(scan((100, 100)), "PNG"))
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4 : idat])[0]
    data[idat + 4 + length] ^= 0x01

    assert "bad header checksum" in refused(bytes(data), "x.png")


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "TIFF"])
def test_truncated_images_in_other_formats_are_refused(fmt: str) -> None:
    data = encode(noise((100, 100)), fmt)

    assert "is damaged or truncated" in refused(data[: len(data) // 2], f"x.{fmt.lower()}")


def test_truncated_second_page_is_refused() -> None:
    data = encode_pages([noise((60, 60), 1), noise((60, 60), 2)], "TIFF")

    assert "is damaged or truncated" in refused(data[: len(data) - 3000], "x.tif")


def test_truncated_images_are_refused_without_relying_on_pillow_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # Someone else in the process asked Pillow to accept truncated files:
    # documents refuse to run rather than silently accept them.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)

    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        check_image(encode(noise((10, 10)), "PNG"))


# --------------------------------------------------------------------------
# refused before Pillow: empty, too many bytes


@pytest.fixture
def no_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> Image.Image:
        raise AssertionError("Image.open must not be called")

    monkeypatch.setattr(Image, "open", refuse)


def test_empty_upload_is_refused_before_pillow(no_pillow: None) -> None:
    assert refused(b"", "scan.png") == "scan.png is empty (0 bytes): choose the scanned image file and upload it again"


def test_over_size_upload_is_refused_before_pillow(no_pillow: None) -> None:
    message = refused(b"\x89PNG" + b"\x00" * 1020, "big.png", max_bytes=1000)

    assert message.startswith("big.png is 1024 bytes, more than the limit of 1000 bytes")


def test_default_cap_is_ten_mebibytes(no_pillow: None) -> None:
    assert "more than the limit of 10485760 bytes" in refused(b"\x00" * (10 * 1024 * 1024 + 1))


def test_upload_at_exactly_the_cap_reaches_pillow() -> None:
    data = encode(scan((20, 20)), "PNG")

    assert check_image(data, max_bytes=len(data)).size == len(data)


# --------------------------------------------------------------------------
# names in messages


def test_messages_use_the_cleaned_name() -> None:
    message = refused(b"not an image", "../../uploads/\x1b[31mevil\x00.png")

    assert message.startswith("[31mevil.png: not an image")


def test_messages_without_a_name_say_the_file() -> None:
    assert refused(b"").startswith("the file is empty")


# --------------------------------------------------------------------------
# robustness: arbitrary bytes never escape as anything but DocumentError


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_accepted_or_refused_cleanly(data: bytes) -> None:
    try:
        facts = check_image(data, "fuzz.png")
    except DocumentError as exc:
        assert str(exc)
        assert "Traceback" not in str(exc)
    else:
        assert facts.format in FORMATS
        assert facts.sha256 == hashlib.sha256(data).hexdigest()


_SEEDS = [
    encode(noise((24, 20)), "PNG"),
    encode(noise((24, 20)), "JPEG"),
    encode(noise((24, 20)), "WEBP"),
    encode(noise((24, 20)), "TIFF", compression="tiff_lzw"),
    encode_pages([noise((24, 20), 1), noise((10, 12), 2)], "TIFF"),
    encode_pages([noise((24, 20), 1), noise((24, 20), 2)], "PNG"),
]


# Pillow warns about the damaged metadata it skips; that is expected here.
@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(_SEEDS),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.floats(0.05, 1),
)
def test_damaged_real_images_are_accepted_or_refused_cleanly(
    seed: bytes, edits: list[tuple[float, int]], cut: float
) -> None:
    data = bytearray(seed)
    for where, value in edits:
        data[int(where * len(data))] = value
    data = data[: max(1, int(cut * len(data)))]

    try:
        check_image(bytes(data))
    except DocumentError:
        pass
