"""server.rules.documents, the storage side: clean file names, review due dates and the content-addressed
blob store (on real temporary folders)."""

from __future__ import annotations

import datetime
import hashlib
import os
import stat
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.rules.documents import (
    BlobStore,
    DocumentError,
    clean_name,
    due_date,
)

from .image_cases import encode, noise, scan

# --------------------------------------------------------------------------
# helpers


# --------------------------------------------------------------------------
# clean_name


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("../../etc/passwd", "passwd"),
        ("a\x00b.png", "ab.png"),
        ("C:\\x\\y.jpg", "y.jpg"),
        (".hidden", "hidden"),
        ("", "document"),
        ("passport.png", "passport.png"),
        ("scans/page1.png/", "page1.png"),
        ("..", "document"),
        ("/", "document"),
        ("\x00\x01\x7f", "document"),
        ("... .. .x.png", "x.png"),
        ("  padded.jpg  ", "padded.jpg"),
        ("tab\there.png", "tabhere.png"),
        ("line\nbreak\r.png", "linebreak.png"),
        ("\u202egnp.exe", "gnp.exe"),  # RIGHT-TO-LEFT OVERRIDE would display it as "exe.png"
        ("Паспорт скан.jpg", "Паспорт скан.jpg"),
        ("cafe\u0301.png", "café.png"),  # NFD from macOS becomes NFC
    ],
)
def test_clean_name(raw: str, clean: str) -> None:
    assert clean_name(raw) == clean


def test_long_name_is_cut_keeping_the_extension() -> None:
    cleaned = clean_name("x" * 1000 + ".png")

    assert len(cleaned) <= 200
    assert cleaned.endswith(".png")
    assert cleaned == "x" * 196 + ".png"


def test_long_name_without_a_real_extension_is_cut() -> None:
    assert clean_name("x" * 1000) == "x" * 200
    assert len(clean_name("a." + "y" * 1000)) == 200


def test_name_of_exactly_200_characters_is_kept() -> None:
    name = "n" * 196 + ".tif"

    assert clean_name(name) == name


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=600))
def test_clean_name_is_always_a_safe_label(raw: str) -> None:
    cleaned = clean_name(raw)

    assert 1 <= len(cleaned) <= 200
    assert "/" not in cleaned and "\\" not in cleaned and "\x00" not in cleaned
    assert not cleaned.startswith(".")
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in cleaned)
    assert clean_name(cleaned) == cleaned


# --------------------------------------------------------------------------
# due_date


@pytest.mark.parametrize(
    ("uploaded", "due"),
    [
        (datetime.date(2026, 3, 2), datetime.date(2026, 3, 4)),  # Mon → Wed
        (datetime.date(2026, 3, 3), datetime.date(2026, 3, 5)),  # Tue → Thu
        (datetime.date(2026, 3, 4), datetime.date(2026, 3, 6)),  # Wed → Fri
        (datetime.date(2026, 3, 5), datetime.date(2026, 3, 9)),  # Thu → Mon
        (datetime.date(2026, 3, 6), datetime.date(2026, 3, 10)),  # Fri → Tue
        (datetime.date(2026, 3, 7), datetime.date(2026, 3, 10)),  # Sat → Tue
        (datetime.date(2026, 3, 8), datetime.date(2026, 3, 10)),  # Sun → Tue
    ],
)
def test_due_date_is_two_business_days_later(uploaded: datetime.date, due: datetime.date) -> None:
    assert uploaded.strftime("%a") == ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][uploaded.weekday()]
    assert due_date(uploaded) == due
    assert due.weekday() < 5


@pytest.mark.parametrize(
    ("uploaded", "due"),
    [
        (datetime.date(2026, 12, 31), datetime.date(2027, 1, 4)),  # Thu → Mon, across the year end
        (datetime.date(2027, 1, 1), datetime.date(2027, 1, 5)),  # Fri (a holiday, not skipped) → Tue
        (datetime.date(2026, 4, 30), datetime.date(2026, 5, 4)),  # Thu → Mon, across a month end
        (datetime.date(2028, 2, 28), datetime.date(2028, 3, 1)),  # Mon → Wed, across a leap day
    ],
)
def test_due_date_across_month_and_year_ends(uploaded: datetime.date, due: datetime.date) -> None:
    assert due_date(uploaded) == due


def test_due_date_with_other_business_day_counts() -> None:
    friday = datetime.date(2026, 3, 6)

    assert due_date(friday, 0) == friday
    assert due_date(friday, 1) == datetime.date(2026, 3, 9)
    assert due_date(friday, 5) == datetime.date(2026, 3, 13)
    assert due_date(friday, 10) == datetime.date(2026, 3, 20)
    assert due_date(datetime.date(2026, 3, 7), 5) == datetime.date(2026, 3, 13)  # Sat → next Fri
    with pytest.raises(ValueError, match="business_days"):
        due_date(friday, -1)


@given(st.dates(datetime.date(2000, 1, 1), datetime.date(2100, 1, 1)), st.integers(0, 30))
def test_due_date_matches_counting_day_by_day(uploaded: datetime.date, business_days: int) -> None:
    day, left = uploaded, business_days
    while left:
        day += datetime.timedelta(days=1)
        if day.weekday() < 5:
            left -= 1

    assert due_date(uploaded, business_days) == day


# --------------------------------------------------------------------------
# BlobStore


def files_under(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file()) if root.exists() else []


def test_put_get_round_trip(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = encode(scan((50, 50)), "PNG")

    digest = store.put(data)

    assert digest == hashlib.sha256(data).hexdigest()
    assert store.get(digest) == data
    assert store.verify(digest) is True


def test_layout_is_two_levels_of_two_hex_characters(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    store = BlobStore(root)

    digest = store.put(b"passport scan")

    expected = root / digest[:2] / digest[2:4] / digest
    assert store.path(digest) == expected
    assert files_under(root) == [expected]
    assert expected.read_bytes() == b"passport scan"


def test_stored_files_are_private(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)

    digest = store.put(b"id card")

    assert stat.S_IMODE(store.path(digest).stat().st_mode) == 0o600


def test_put_twice_keeps_one_file_and_leaves_it_alone(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    first = store.put(b"same scan")
    before = store.path(first).stat()

    second = store.put(b"same scan")

    assert second == first
    assert files_under(tmp_path / "blobs") == [store.path(first)]
    after = store.path(first).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_different_documents_get_different_files(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)

    digests = {store.put(bytes([n]) * 10) for n in range(20)}

    assert len(digests) == 20
    assert len(files_under(tmp_path)) == 20


def test_empty_blob_round_trips(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)

    assert store.get(store.put(b"")) == b""


def test_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path)

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.put(b"scan")

    assert files_under(tmp_path) == []


HOSTILE = [
    "../" * 10 + "x",
    "A" * 64,
    "a" * 63,
    "a" * 64 + "\x00",
    "",
    "a" * 65,
    "../" + "a" * 61,
    "a" * 62 + "/a",
    "g" * 64,
    "a" * 63 + "\n",
    "ａ" * 64,  # fullwidth letters are not hex
    "٠" * 64,  # Arabic-Indic zeros are digits to Unicode, not hex
]


@pytest.mark.parametrize("digest", HOSTILE)
@pytest.mark.parametrize("method", ["get", "path", "verify"])
def test_hostile_digests_are_refused_without_touching_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digest: str, method: str
) -> None:
    root = tmp_path / "blobs"
    store = BlobStore(root)

    def no_disk(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file system was touched")

    for name in ("open", "stat", "lstat", "mkdir", "listdir", "scandir"):
        monkeypatch.setattr(os, name, no_disk)

    with pytest.raises(DocumentError, match="not a document reference"):
        getattr(store, method)(digest)

    monkeypatch.undo()
    assert not root.exists()


def test_non_string_digest_is_refused(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)

    with pytest.raises(DocumentError):
        store.get(b"a" * 64)  # type: ignore[arg-type]


def test_get_of_a_missing_blob_says_so(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = hashlib.sha256(b"never stored").hexdigest()

    with pytest.raises(DocumentError) as caught:
        store.get(digest)

    assert str(caught.value) == f"no stored document {digest}"


def test_verify_of_a_missing_blob_is_false(tmp_path: Path) -> None:
    assert BlobStore(tmp_path).verify("0" * 64) is False


def test_verify_detects_a_corrupted_file(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = encode(noise((40, 40)), "PNG")
    digest = store.put(data)

    with store.path(digest).open("r+b") as handle:
        handle.seek(len(data) // 2)
        handle.write(b"\x00\xff\x00")

    assert store.verify(digest) is False
    assert store.get(digest) != data


def test_verify_detects_a_truncated_file(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"a scan of a contract")

    os.truncate(store.path(digest), 5)

    assert store.verify(digest) is False
