"""The event spool's journal reader and its compiled twin (integrations/kamailio/callgate_spool.py `read_journal`,
integrations/kamailio/callgate_journal.pyx): the same records, stops and damage on sound, torn, damaged and random
journals; and the build gives the spool the compiled one."""

from __future__ import annotations

import importlib.util
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_SPEC = importlib.util.spec_from_file_location(
    "callgate_spool", Path(__file__).resolve().parent.parent / "integrations" / "kamailio" / "callgate_spool.py")
assert _SPEC is not None and _SPEC.loader is not None
spool = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(spool)

REFERENCE = spool.read_journal
COMPILED, HOW = spool.journal_reader()


def test_the_spool_reads_with_the_compiled_reader_the_build_makes() -> None:
    """`make build` builds callgate_journal beside the spool module, and the spool reads with it."""
    assert HOW == "compiled" and COMPILED is not REFERENCE and type(COMPILED).__name__ == "cython_function_or_method"


@pytest.mark.parametrize("built, said", [
    ("VERSION = 0\ndef read_journal(*a): raise AssertionError('never called')\n",
     "is version 0, this spool reads version 1"),
    ("VERSION = 1\n", "has no read_journal"),
    ("raise RuntimeError('a build for another machine')\n", "does not load: RuntimeError"),
])
def test_a_reader_built_for_another_version_or_that_does_not_load_leaves_the_spool_reading_in_python(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built: str, said: str) -> None:
    """A callgate_journal left from before an upgrade (another version, or one that fails to load) is not used:
    the spool reads in Python and says why."""
    import importlib.machinery

    folder = tmp_path / "kamailio"
    folder.mkdir()
    copy = folder / "callgate_spool.py"
    copy.write_text(Path(str(spool.__file__)).read_text())
    # a Python module in the compiled reader's place (its loader is the extension one: stand in for it)
    (folder / "callgate_journal.py").write_text(built)
    monkeypatch.setattr(importlib.machinery, "EXTENSION_SUFFIXES", [".py"])
    monkeypatch.setattr(importlib.machinery, "ExtensionFileLoader", importlib.machinery.SourceFileLoader)
    spec = importlib.util.spec_from_file_location("callgate_spool_copy", copy)
    assert spec is not None and spec.loader is not None
    other = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(other)
    reader, how = other.journal_reader()
    assert reader is other.read_journal and how.startswith("in Python (") and said in how, how
    (folder / "callgate_journal.py").unlink()
    other.journal_reader.cache_clear()
    assert other.journal_reader()[1] == "in Python (callgate_journal not built beside the spool: `make build`)"


def record(key: bytes, call: bytes, request: bytes, created_ns: int = 1, wall: float = 1.5, raw: bool = False,
           magic: int | None = None, crc: int | None = None) -> bytes:
    """A journal record as callgate_spool.Journal writes it, any field given as wanted."""
    payload = key + call + request
    return spool._RECORD.pack(magic if magic is not None else (spool._RAW_MAGIC if raw else spool._MAGIC),
                              len(payload), zlib.crc32(payload) if crc is None else crc, created_ns, wall,
                              len(key), len(call)) + payload


def both(data: bytes, watermark_ns: int = 2**62, raw: bool = True, start: int = 0) -> Any:
    """What the two readers make of `data`: asserted the same (each wall time by its bytes: a NaN is a NaN),
    returned."""
    expected = REFERENCE(data, watermark_ns, raw, start)
    got = COMPILED(data, watermark_ns, raw, start)
    assert bitwise(got) == bitwise(expected)
    return expected


def bitwise(read: Any) -> Any:
    """A reader's answer with each record's wall time as its 8 bytes (not covered by the crc: any double)."""
    records, end, damage = read
    return [(ns, struct.pack("<d", wall), *rest) for ns, wall, *rest in records], end, damage


def test_sound_records_are_read_whole_in_order_to_the_watermark() -> None:
    data = b"".join(record(f"c{i}:RINGING".encode(), f"c{i}".encode(), bytes([i]) * i, created_ns=10 + i, wall=i / 3)
                    for i in range(20))
    records, end, damage = both(data)
    assert (end, damage) == (len(data), "") and len(records) == 20
    assert records[7] == (17, 7 / 3, "c7:RINGING", "c7", bytes([7]) * 7)
    records, end, _ = both(data, watermark_ns=14)   # written after the watermark: the next round's
    assert len(records) == 5 and end == len(b"".join(record(f"c{i}:RINGING".encode(), f"c{i}".encode(),
                                                            bytes([i]) * i) for i in range(5)))
    first = len(record(b"c0:RINGING", b"c0", b""))
    records, end, _ = both(data, start=first)   # from where a round stopped
    assert records[0][2] == "c1:RINGING" and end == len(data)
    odd = b"".join(record(b"k:RINGING", b"k", b"r", wall=w) for w in (float("nan"), float("inf"), -0.0))
    assert [struct.pack("<d", r[1]) for r in both(odd)[0]] == [struct.pack("<d", w) for w in
                                                               (float("nan"), float("inf"), -0.0)]


def test_a_raw_record_is_read_with_a_converter_and_stops_a_reader_without() -> None:
    data = record(b"k:RINGING", b"k", b"r") + record(b"", b"", b"R1\0raw", raw=True) + record(b"k:ENDED", b"k", b"e")
    assert [r[2] for r in both(data)[0]] == ["k:RINGING", "", "k:ENDED"]
    records, end, damage = both(data, raw=False)
    assert [r[2] for r in records] == ["k:RINGING"] and end == len(record(b"k:RINGING", b"k", b"r")) and not damage


@pytest.mark.parametrize("bad", [
    record(b"k", b"c", b"r", magic=0),                       # no magic (zeros)
    record(b"k", b"c", b"r", magic=0x334A4743),              # another magic
    record(b"k", b"c", b"r", raw=True),                      # a raw record with a key
    record(b"", b"", b"r"),                                  # an event without one
    record(b"k", b"c", b"r", crc=1),                         # its crc wrong
    record(b"\xff\xfe", b"c", b"r"),                         # a key that is no UTF-8 (crc right)
    record(b"k", b"\xed\xa0\x80", b"r"),                     # a call id that is a surrogate
    spool._RECORD.pack(spool._MAGIC, 2, 0, 1, 1.0, 2, 1),   # key and call longer than the payload
])
def test_damage_is_found_at_the_same_byte_with_the_same_words(bad: bytes) -> None:
    good = record(b"k:RINGING", b"k", b"r")
    records, end, damage = both(good + bad + good)
    assert len(records) == 1 and end == len(good) and damage.endswith(f"at byte {len(good)}")


def test_a_torn_tail_waits_and_a_start_outside_the_data_is_refused() -> None:
    whole = record(b"k:RINGING", b"k", b"request")
    for cut in range(1, len(whole)):
        assert both(whole + whole[:cut]) == ([(1, 1.5, "k:RINGING", "k", b"request")], len(whole), "")
    for start in (-1, len(whole) + 1):
        for reader in (REFERENCE, COMPILED):
            with pytest.raises(ValueError, match="outside"):
                reader(whole, 2**62, True, start)


records_ = st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12), st.binary(max_size=40),
                              st.integers(0, 2**63 - 1), st.floats(), st.booleans()), max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=records_, flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=3),
       cut=st.integers(0, 10_000), start=st.integers(0, 10_000), watermark=st.integers(0, 2**63 - 1),
       raw=st.booleans(), junk=st.binary(max_size=64))
def test_random_journals_damaged_or_cut_read_the_same(items: list[Any], flips: list[tuple[int, int]], cut: int,
                                                      start: int, watermark: int, raw: bool, junk: bytes) -> None:
    written = bytearray(b"".join(
        record(b"", b"", request, created, wall, raw=True) if is_raw else
        record(key.encode("utf-8", "surrogatepass"), call.encode("utf-8", "surrogatepass"), request, created, wall)
        for key, call, request, created, wall, is_raw in items if is_raw or key or call) + junk)
    for at, xor in flips:   # bytes changed anywhere: a header, a payload, a crc
        if written:
            written[at % len(written)] ^= xor
    data = bytes(written[:len(written) - cut % (len(written) + 1)])
    both(data, watermark, raw, start % (len(data) + 1))
    both(data, watermark, raw)
