"""Append-only record files: a file header, then [u32 length][u32 crc32][payload] records, little-endian.

A crash mid-write can only leave a torn *tail* (short header, short payload or bad CRC of the last record);
`read_records` stops there and reports it, and `open_for_append` cuts it off so new records follow the
last intact one. Earlier records are never rewritten. Used by the learner's episode store and the actor's spool.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, NamedTuple

MAGIC = b"Q2RLREC1"
_HEADER = struct.Struct("<II")
MAX_RECORD_BYTES = 1 << 30


class RecordFileError(ValueError):
    """A file that is not a q2rl record file (wrong magic)."""


class ReadResult(NamedTuple):
    records: list[bytes]
    good_end: int  # byte offset just after the last intact record
    torn_bytes: int  # bytes after good_end (0 for a clean file)


def write_record(f: BinaryIO, payload: bytes) -> int:
    """Append one record; returns the bytes written (header + payload)."""
    f.write(_HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
    return _HEADER.size + len(payload)


def encode_record(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_records(path: str | Path) -> ReadResult:
    """All intact records of a file, in order, and where the intact part ends."""
    data = Path(path).read_bytes()
    if len(data) < len(MAGIC):
        return ReadResult([], 0, len(data))  # torn while writing the header: nothing in it yet
    if data[: len(MAGIC)] != MAGIC:
        raise RecordFileError(f"{path}: not a q2rl record file (bad magic {data[:8]!r})")
    records, pos, end = [], len(MAGIC), len(data)
    view = memoryview(data)
    while pos + _HEADER.size <= end:
        length, crc = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        if length > MAX_RECORD_BYTES or start + length > end:
            break
        payload = bytes(view[start : start + length])
        if zlib.crc32(payload) != crc:
            break
        records.append(payload)
        pos = start + length
    return ReadResult(records, pos, end - pos)


def open_for_append(path: str | Path, good_end: int | None = None) -> BinaryIO:
    """Open a record file for appending, creating it with its header, or cutting a torn tail at `good_end`."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0 or good_end == 0:
        f = open(path, "wb")
        f.write(MAGIC)
        f.flush()
        return f
    f = open(path, "r+b")
    if good_end is not None:
        f.truncate(good_end)
    f.seek(0, os.SEEK_END)
    return f


def fsync_dir(path: str | Path) -> None:
    """Make a file creation/rename in `path` durable."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
