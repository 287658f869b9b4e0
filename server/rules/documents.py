"""Document uploads for rented numbers (spec §2 rule 1): the pure, storage-level part.

What lives here and why:

* `check_image` decides whether uploaded bytes are an acceptable document
  scan.  Uploads come from the outside world, so every byte is hostile until
  proven otherwise:

  - The byte cap is applied before Pillow sees anything, so an oversized
    upload costs one `len()`.
  - Pillow is only allowed to identify PNG, JPEG, WEBP and TIFF: every other
    decoder Pillow ships (dozens, some rarely exercised) stays out of reach of
    untrusted input, and a text file or PDF renamed to ``.png`` is refused.
  - The pixel size is read from the header and refused before any pixel is
    decoded.  Decoding is where a decompression bomb does its damage: a 30 kB
    PNG can declare 30,000 x 30,000 pixels and inflate to gigabytes.  A scan
    over 2000 px per side is refused anyway, so nothing is lost by deciding
    on the header.  Pillow's own bomb guard (which fires inside
    `Image.open`, before we see the header) is treated as the same refusal,
    and the message still names the declared size so the admin knows what to
    fix.
  - Multi-page files are walked page by page on headers first (page count
    and every page's size), and only then decoded.
  - Finally every page is fully decoded, so a truncated or corrupt file is
    refused now, at upload time, rather than when the VoIP operator opens it
    days later.
  - Every refusal is a `DocumentError` whose message names the file, says
    what is wrong and what to do; a Pillow traceback never reaches the admin.

* `clean_name` turns a client-supplied file name into something safe to store
  and show: it is only ever a label, never a path.

* `due_date` is the review target shown with each upload.

* `BlobStore` keeps the bytes content-addressed (the file name is the SHA-256
  of the content): a re-upload of the same scan costs nothing and produces the
  same reference, two tenants uploading the same file share one copy, a
  client-chosen name never reaches the file system, and corruption on disk is
  detectable by re-hashing.  Writes are atomic and durable (temp file, fsync,
  rename, fsync of the folder), so a crash leaves either the whole document or
  nothing under its name.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import pathlib
import re
import struct
import unicodedata
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile, UnidentifiedImageError

from engine.files import replace_atomically, sync_directory

__all__ = [
    "FORMATS",
    "MAX_BYTES",
    "MAX_FRAMES",
    "MAX_SIDE",
    "BlobStore",
    "DocumentError",
    "ImageFacts",
    "check_image",
    "clean_name",
    "due_date",
]

MAX_SIDE = 2000  # pixels, each side
MAX_BYTES = 10 * 1024 * 1024  # default size cap per file
MAX_FRAMES = 10
FORMATS = ("PNG", "JPEG", "WEBP", "TIFF")  # the real image formats accepted

MAX_NAME = 200
FALLBACK_NAME = "document"

# A JPEG carrying extra pictures (phone cameras write these) is identified by
# Pillow as MPO; its first picture is a plain JPEG every viewer opens, so it is
# accepted and recorded as what it is to the operator: a JPEG.
_FORMAT_ALIASES = {"MPO": "JPEG"}

# What Pillow raises for malformed input.  Pillow has no common base class for
# "bad data": its own Image.open treats SyntaxError, IndexError, TypeError and
# struct.error as "this parser does not fit"; decoders raise OSError (and
# UnidentifiedImageError is one), ValueError, EOFError; a few plugins let a
# KeyError escape on a missing tag.  Anything else (MemoryError, a bug of ours)
# is not a property of the upload and must stay loud.
_BAD_DATA: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    TypeError,
    KeyError,
)
_BOMB: tuple[type[BaseException], ...] = (Image.DecompressionBombError, Image.DecompressionBombWarning)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_SEPARATORS = re.compile(r"[/\\]")
# Cc: C0/C1 controls and NUL; Cf: invisible format characters such as U+202E
# RIGHT-TO-LEFT OVERRIDE, which make "gnp.exe" display as "exe.png"; Cs: lone
# surrogates, which cannot be encoded for storage; Zl/Zp: line breaks that
# would split a log line.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# Longer "extensions" are not extensions, just a dot in a long name.
_MAX_EXTENSION = 16


class DocumentError(ValueError):
    """An upload or a stored-document reference is refused.

    The message is meant for the admin as is: it names the file, says what is
    wrong and what to do about it.
    """


@dataclass(frozen=True, slots=True)
class ImageFacts:
    """What the engine records about an accepted image."""

    format: str  # Pillow's format name, one of FORMATS
    width: int  # of the first page, as Pillow reports it
    height: int
    size: int  # bytes
    sha256: str  # hex digest of the bytes, the BlobStore key


# --------------------------------------------------------------------------
# Image checks


def check_image(data: bytes, name: str = "", max_bytes: int = MAX_BYTES) -> ImageFacts:
    """Accept `data` as a document scan or raise `DocumentError` saying why not.

    Accepted: a PNG, JPEG, WEBP or TIFF file of at most `max_bytes` bytes and
    at most `MAX_FRAMES` pages, every page at most `MAX_SIDE` pixels on each
    side, every page decodable to the end.  `name` is the client's file name,
    used (cleaned) in messages only.

    Raises RuntimeError, not DocumentError, if the process has set
    `PIL.ImageFile.LOAD_TRUNCATED_IMAGES`: that is a deployment bug that would
    let truncated scans through, not something the admin can fix.
    """
    label = clean_name(name) if name else "the file"
    if not data:
        raise DocumentError(f"{label} is empty (0 bytes): choose the scanned image file and upload it again")
    if len(data) > max_bytes:
        raise DocumentError(
            f"{label} is {len(data)} bytes, more than the limit of {max_bytes} bytes: "
            "scan at a lower resolution or save with stronger compression, then upload again"
        )
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # The flag is process-wide and read by Pillow at decode time; resetting
        # it here would break whoever set it and race with other threads, so
        # refuse loudly instead of silently accepting truncated scans.
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set in this process; document checks need it False "
            "so that truncated uploads are refused"
        )

    # catch_warnings swaps the process-wide filter list and is not thread-safe
    # before Python 3.14.  A race can only drop or leave behind this one
    # "error" filter, and that cannot change the verdict: the warning fires
    # above 89 million pixels, far past MAX_SIDE x MAX_SIDE, so an image that
    # slips through as a mere warning is refused by the header check below.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        except _BOMB:
            raise _too_large(label, _declared_size(data)) from None
        except UnidentifiedImageError:
            raise DocumentError(_not_an_image(label)) from None
        except _BAD_DATA as exc:
            raise _damaged(label, exc) from exc
        with image:
            width, height = image.size
            pages = _check_headers(image, label)
            _verify_checksums(data, label)
            _decode(image, label, pages)
            fmt = image.format or ""
    return ImageFacts(
        format=_FORMAT_ALIASES.get(fmt, fmt),
        width=width,
        height=height,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _check_headers(image: Image.Image, label: str) -> int:
    """Count the pages and check each one's declared size; return the count.

    Seeking reads a page's header only (TIFF, MPO, WEBP), except for animated
    PNG, where Pillow decodes the previous frame on the way; that frame has
    already passed the size check, and APNG frames cannot exceed the canvas.
    The walk stops at page MAX_FRAMES + 1, so a file declaring a million
    pages costs at most eleven header reads.
    """
    _check_side(label, 0, image.size)
    for page in range(1, MAX_FRAMES):
        if not _seek(image, label, page):
            return page
        _check_side(label, page, image.size)
    if _seek(image, label, MAX_FRAMES):
        raise DocumentError(
            f"{label} has more than {MAX_FRAMES} pages or frames: "
            f"split it into files of at most {MAX_FRAMES} pages and upload them separately"
        )
    return MAX_FRAMES


def _seek(image: Image.Image, label: str, page: int) -> bool:
    """Go to `page`; False if the file has no such page."""
    try:
        image.seek(page)
    except EOFError:
        return False
    except _BOMB:
        raise _too_large(label, None, page) from None
    except _BAD_DATA as exc:
        raise _damaged(label, exc) from exc
    return True


def _verify_checksums(data: bytes, label: str) -> None:
    """Refuse a file whose checksums do not match or that ends early.

    Decoding alone misses both for PNG: Pillow does not check chunk CRCs
    while decoding, and stops without complaint when the chunks after the
    pixels (IEND included) are cut off.  `verify` checks every
    chunk up to IEND without decompressing anything.  JPEG, WEBP and TIFF
    carry no checksums Pillow can check; for them verify costs one header
    parse.  It must run on a freshly opened image, hence the second open.
    """
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as fresh:
            fresh.verify()
    except _BOMB:  # pragma: no cover - the same header already passed the first open
        raise _too_large(label, None) from None
    except _BAD_DATA as exc:
        raise _damaged(label, exc) from exc


def _decode(image: Image.Image, label: str, pages: int) -> None:
    """Decode every page to the end, so damage is found at upload time."""
    for page in range(pages):
        if not _seek(image, label, page):
            raise DocumentError(
                f"{label} is damaged or truncated: page {page + 1} could not be found again; "
                "save or export it again and upload the new file"
            )
        # Re-checked because seeking back re-parses the header.
        _check_side(label, page, image.size)
        try:
            image.load()
        except _BOMB:
            raise _too_large(label, image.size, page) from None
        except _BAD_DATA as exc:
            raise _damaged(label, exc) from exc


def _check_side(label: str, page: int, size: tuple[int, int]) -> None:
    width, height = size
    if width > MAX_SIDE or height > MAX_SIDE:
        raise _too_large(label, size, page)
    if width < 1 or height < 1:
        raise DocumentError(
            f"{_page_label(label, page)} is {width} × {height} px and has no pixels: "
            "the file is damaged; save or export it again and upload the new file"
        )


def _page_label(label: str, page: int) -> str:
    return label if page == 0 else f"{label}, page {page + 1},"


def _too_large(label: str, size: tuple[int, int] | None, page: int = 0) -> DocumentError:
    fix = f"each side must be at most {MAX_SIDE} px: scale it down and upload again"
    if size is None:
        return DocumentError(f"{_page_label(label, page)} declares far more pixels than allowed; {fix}")
    return DocumentError(f"{_page_label(label, page)} is {size[0]} × {size[1]} px; {fix}")


def _not_an_image(label: str) -> str:
    names = ", ".join(FORMATS[:-1]) + " or " + FORMATS[-1]
    return f"{label}: not an image in {names} format; scan the document again and save it as one of those"


def _damaged(label: str, exc: BaseException) -> DocumentError:
    # Pillow's own words help the admin tell "cut short" from "garbage"; they
    # are one line and may quote bytes from the file, hence the clipping.
    reason = " ".join(str(exc).split())[:160] or type(exc).__name__
    return DocumentError(f"{label} is damaged or truncated: {reason}; save or export it again and upload the new file")


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """The size the header declares, for the message only, or None if unknown.

    Only called after Pillow refused the file as a decompression bomb, which it
    does inside Image.open without telling us the size.  The format's own
    header parser (the one Image.open just ran) is run again without the
    pixel cap; it reads the header only, nothing is decoded.
    """
    prefix = data[:16]
    for fmt in FORMATS:
        entry = Image.OPEN.get(fmt)
        if entry is None:
            continue
        factory, accept = entry
        try:
            if accept is not None:
                verdict = accept(prefix)
                if isinstance(verdict, str) or not verdict:
                    continue
            with factory(io.BytesIO(data), "") as image:
                return image.size
        except (*_BAD_DATA, *_BOMB):
            continue
    return None


# --------------------------------------------------------------------------
# Names and dates


def clean_name(name: str) -> str:
    """A client-supplied file name made safe to store and display.

    Keeps the last path component only (``/`` and ``\\`` both count, since
    browsers on Windows send ``C:\\...``), drops control and invisible
    characters, strips leading dots (no hidden files, no ``..``), and cuts to
    200 characters keeping the extension.  Never empty: "document" stands in.
    The result is a label; the stored bytes are addressed by their hash.
    """
    text = "".join(ch for ch in name if unicodedata.category(ch) not in _DROPPED_CATEGORIES)
    # NFC after the removal: a dropped character can separate a letter from
    # its accent, and the same name typed on macOS (NFD) and Windows (NFC)
    # should read the same.
    text = unicodedata.normalize("NFC", text)
    # The last non-empty component, so "scans/page1.png/" still yields a name.
    parts = [part for part in _SEPARATORS.split(text) if part.strip(". ")]
    if not parts:
        return FALLBACK_NAME
    text = parts[-1].lstrip(". ").rstrip()
    if len(text) > MAX_NAME:
        stem, dot, extension = text.rpartition(".")
        if dot and stem and len(extension) <= _MAX_EXTENSION:
            text = stem[: MAX_NAME - len(extension) - 1].rstrip(". ") + "." + extension
        else:
            text = text[:MAX_NAME].rstrip()
    return text or FALLBACK_NAME


def due_date(uploaded: datetime.date, business_days: int = 2) -> datetime.date:
    """The review target for an upload: `business_days` weekdays after `uploaded`.

    Saturdays and Sundays are skipped; public holidays are NOT.  The VoIP
    operator's review calendar is weekdays only, and holidays differ by
    country and operator; an operator who observes a holiday approves late.
    The due date is a target shown to the admin, not a deadline the engine
    enforces: in a week with a holiday the review may come a day after it,
    and nothing in the engine depends on the date being met.

    Examples with the default of 2: Mon→Wed, Wed→Fri, Thu→Mon, Fri→Tue,
    Sat→Tue, Sun→Tue.  `business_days` = 0 returns `uploaded` itself.
    """
    if business_days < 0:
        raise ValueError(f"business_days must be 0 or more, not {business_days}")
    if business_days == 0:
        return uploaded
    day = uploaded
    # Counting from a weekend day gives the same result as counting from the
    # Friday before it, and from a weekday five business days are one week.
    if day.weekday() >= 5:
        day -= datetime.timedelta(days=day.weekday() - 4)
    weeks, rest = divmod(business_days, 5)
    day += datetime.timedelta(weeks=weeks)
    for _ in range(rest):
        day += datetime.timedelta(days=1)
        while day.weekday() >= 5:
            day += datetime.timedelta(days=1)
    return day


# --------------------------------------------------------------------------
# Content-addressed storage


class BlobStore:
    """Document bytes on disk, named by their SHA-256: root/ab/cd/<64 hex>.

    Two levels of two hex characters keep each folder small (65,536 leaf
    folders) however many documents accumulate.  Files and temp files are
    created with mode 0600: these are people's legal documents.  A crash can
    leave a ``.tmp-*`` file in a leaf folder; it never has a 64-hex name, so
    it is never mistaken for a document.
    """

    def __init__(self, root: pathlib.Path) -> None:
        self.root = pathlib.Path(root)

    def path(self, sha256: str) -> pathlib.Path:
        """Where the blob with this digest lives (whether or not it exists)."""
        _require_digest(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes) -> str:
        """Store `data` durably and return its SHA-256 hex digest.

        Idempotent: if a blob with this digest exists it is left as is, so a
        re-upload writes nothing.
        """
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.exists():
            return digest
        folder = target.parent
        _make_folders(folder)
        replace_atomically(target, [data])   # whole or not at all, the rename durable in its folder
        return digest

    def get(self, sha256: str) -> bytes:
        """The stored bytes; DocumentError if there is no such blob."""
        target = self.path(sha256)
        try:
            return target.read_bytes()
        except FileNotFoundError:
            raise DocumentError(f"no stored document {sha256}") from None

    def verify(self, sha256: str) -> bool:
        """Whether the stored file still hashes to its name (False if missing)."""
        target = self.path(sha256)
        try:
            with target.open("rb") as handle:
                return hashlib.file_digest(handle, "sha256").hexdigest() == sha256
        except FileNotFoundError:
            return False


def _require_digest(sha256: object) -> None:
    # Checked before any path is built: the digest is the only thing callers
    # pass in, and a strict 64-hex shape rules out "..", separators, NUL and
    # case-folding file systems aliasing two names.
    if not isinstance(sha256, str) or _HEX64.fullmatch(sha256) is None:
        raise DocumentError(f"{sha256!r} is not a document reference: expected 64 lowercase hex characters")


def _make_folders(folder: pathlib.Path) -> None:
    """Create `folder` and its missing parents, each made durable in its parent."""
    missing: list[pathlib.Path] = []
    current = folder
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            # Another writer created it first; that is fine if it is a folder.
            if not path.is_dir():
                raise
            continue
        sync_directory(path.parent)


