"""callgate_spool.read_journal compiled: the records of a journal of callgate's event spool, read in C.

Why: the spool's sender (callgate_kemi.py `ksr_callgate_sender`, a Kamailio process) reads every event the SIP
workers journal, three a call.  In Python a record took ~1.2 us (a struct unpacked, its payload sliced for its
crc, two decodes, a tuple), most of a round's reading; here ~0.2.  callgate_spool.py imports this module when it
is built beside it (`make build`) and reads in Python otherwise: the same records, the same answers
(tests/test_kamailio_journal_reader.py holds the two to each other on sound, damaged and random journals).

The record (callgate_spool._RECORD, little-endian, as the C module and callgate_spool.Journal write it): magic,
payload bytes, crc32 of the payload, CLOCK_MONOTONIC ns, wall time (double), key bytes, call bytes; then the
payload (key, call, request).  Read on a little-endian host only: elsewhere this module refuses to import and the
spool reads in Python.
"""

import sys

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint16_t, uint32_t
from libc.string cimport memcpy

if sys.byteorder != "little":   # (the header is read as it lies in memory)
    raise ImportError("callgate_journal reads journals on a little-endian host only")


# what callgate_spool.py expects of this module (its JOURNAL_READER_VERSION): read_journal's arguments and the
# record's layout.  A module built from another version (a .so left from before an upgrade) is not used: the spool
# reads in Python instead, and says so.
VERSION = 1


cdef extern from "zlib.h":
    unsigned long crc32(unsigned long crc, const unsigned char *buf, unsigned int len) nogil


cdef enum:
    HEADER = 32                 # callgate_spool._RECORD.size
    MAGIC = 0x314A4743          # b"CGJ1": an event (key, call, request)
    RAW_MAGIC = 0x324A4743      # b"CGJ2": a raw record (no key, no call)


cdef packed struct Header:
    uint32_t magic
    uint32_t length
    uint32_t crc
    int64_t created_ns
    double wall
    uint16_t key
    uint16_t call


def read_journal(bytes data not None, long long watermark_ns, bint raw=True, Py_ssize_t start=0):
    """The whole records of `data` from byte `start` written before `watermark_ns`: ([(monotonic ns, wall time,
    key, call, request)], the byte where they stop, "" or what is damaged there); a raw record has key and call
    "".  Without `raw`, the records stop before the first raw one.  callgate_spool.read_journal's twin, for
    `bytes` and arguments within 64 bits (what Spool.read passes)."""
    cdef const char *base = PyBytes_AS_STRING(data)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = start, payload, end
    cdef Header h
    cdef list out = []
    cdef str key, call
    if start < 0 or start > size:
        raise ValueError(f"start {start} outside the {size} bytes read")
    while pos + HEADER <= size:
        memcpy(&h, base + pos, HEADER)
        if ((h.magic != MAGIC and h.magic != RAW_MAGIC) or <uint32_t>h.key + h.call > h.length
                or (h.magic == RAW_MAGIC) == (h.key != 0 or h.call != 0)):
            return out, pos, f"no record at byte {pos}"
        payload = pos + HEADER
        end = payload + h.length
        if end > size:   # (being written, or past what was read)
            break
        if <uint32_t>crc32(0, <const unsigned char *>base + payload, h.length) != h.crc:
            return out, pos, f"a damaged record at byte {pos}"
        try:
            key = PyUnicode_DecodeUTF8(base + payload, h.key, NULL)
            call = PyUnicode_DecodeUTF8(base + payload + h.key, h.call, NULL)
        except UnicodeDecodeError:
            return out, pos, f"a damaged record at byte {pos}"
        if h.created_ns > watermark_ns or (not raw and not key):
            break   # written too lately for this round; or a raw record, for a reader that can convert it
        out.append((h.created_ns, h.wall, key, call,
                    PyBytes_FromStringAndSize(base + payload + h.key + h.call, h.length - h.key - h.call)))
        pos = end
    return out, pos, ""
