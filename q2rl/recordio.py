"""Durable files: CRC'd record files, segmented logs of them, and atomic file replacement.

A record file is a header, then [u32 length][u32 crc32][payload] records, little-endian. A crash mid-write can
only leave a torn *tail* (short header, short payload or bad CRC of the last record); `read_records` stops
there and reports it, and `open_for_append` cuts it off so new records follow the last intact one. Earlier
records are never rewritten. Damage in the middle (a flipped bit) is no tail: `read_records` skips it,
resynchronising on the next intact record, and reports it; nothing intact is ever cut. A `SegmentLog` is a
directory of such files, seg-<n:09d>.rec: the actor's spool and the learner's episode store. `atomic_write`
replaces whole small files (checkpoints, run-dir JSON). One standard-library-only module for everything that must
survive a crash, so they share one `fsync_dir`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator, NamedTuple

log = logging.getLogger(__name__)
MAGIC = b"Q2RLREC1"
_HEADER = struct.Struct("<II")
MAX_RECORD_BYTES = 1 << 30
SEGMENT_FILE = re.compile(r"^seg-(\d{9,})\.rec$")


class RecordFileError(ValueError):
    """A file that is not a q2rl record file (wrong magic)."""


# Past damage, records of up to this size are looked for: any q2rl item fits in a gRPC message of 16 MiB.
RESYNC_MAX_BYTES = (1 << 24) - 1


class ReadResult(NamedTuple):
    records: list[bytes]
    good_end: int  # byte offset just after the last intact record
    torn_bytes: int  # bytes after good_end (0 for a clean file): a torn tail
    damaged: tuple[tuple[int, int], ...] = ()  # (offset, bytes) of damage between intact records, skipped


def encode_record(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _intact_end(data: bytes, pos: int, min_length: int = 0, max_length: int = MAX_RECORD_BYTES) -> int:
    """The end of the record at `pos` if its header fits, its length is within the bounds and its CRC checks
    out; else -1."""
    if pos + _HEADER.size > len(data):
        return -1
    length, crc = _HEADER.unpack_from(data, pos)
    start = pos + _HEADER.size
    if not min_length <= length <= max_length or start + length > len(data):
        return -1
    return start + length if zlib.crc32(memoryview(data)[start : start + length]) == crc else -1


def _resync(data: bytes, pos: int) -> int:
    """The nearest offset after `pos` where an intact record of at most RESYNC_MAX_BYTES starts, or -1. The
    high byte of such a record's length is zero, and so is that of the record after it: only offsets where both
    are zero get their CRC checked, so a scan over megabytes of damage takes a fraction of a second."""
    p = pos + 1
    while (zero := data.find(b"\0", p + 3)) >= 0:
        p = zero - 3
        after = p + _HEADER.size + int.from_bytes(data[p : p + 4], "little") + 3  # the next length's high byte
        if (after >= len(data) or data[after] == 0) and _intact_end(data, p, 1, RESYNC_MAX_BYTES) >= 0:
            return p
        p += 1
    return -1


def read_records(path: str | Path) -> ReadResult:
    """All intact records of a file, in order, and where the intact part ends.

    A record that does not check out starts damage. Reading resumes at the nearest later byte where an intact
    record starts, so damage in the middle (a flipped bit, a bad sector) costs the records it hit, not the intact
    ones after it. Damage that runs to the end of the file is a torn tail (a crash mid-write). An empty record
    counts as damage: no q2rl writer makes one, and zero bytes (a block a crash left unwritten) read as them."""
    data = Path(path).read_bytes()
    if len(data) < len(MAGIC):
        return ReadResult([], 0, len(data))  # torn while writing the header: nothing in it yet
    if data[: len(MAGIC)] != MAGIC:
        raise RecordFileError(f"{path}: not a q2rl record file (bad magic {data[:8]!r})")
    records, damaged, pos, end = [], [], len(MAGIC), len(data)
    view = memoryview(data)
    while pos < end:
        record_end = _intact_end(data, pos, min_length=1)
        if record_end < 0:
            resync = _resync(data, pos)
            if resync < 0:
                break  # damage to the end of the file: a torn tail
            damaged.append((pos, resync - pos))
            pos, record_end = resync, _intact_end(data, resync)
        records.append(bytes(view[pos + _HEADER.size : record_end]))
        pos = record_end
    return ReadResult(records, pos, end - pos, tuple(damaged))


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
    """Make a file creation, rename or deletion in directory `path` durable. A no-op where a directory cannot
    be opened (some platforms): the rename is still atomic there, only not yet durable."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes | str, durable: bool = True) -> None:
    """Replace `path` with `data` (str: UTF-8) so that readers see the old or the new file, never a torn one:
    write a temporary file beside it, then rename it over. `durable=False` skips the fsyncs (live status files:
    a crash may lose the last one, which is fine, and an fsync can stall for seconds on a busy disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)  # make the rename itself durable


class Segment(NamedTuple):
    index: int
    path: Path
    end: int  # bytes up to the end of its last intact record (header included): what a reader may read


class SegmentLog:
    """An append-only log of records split into record files directory/seg-<n:09d>.rec of about
    `segment_bytes` each, so that its owner can delete a whole old part (the spool's trim) or never
    (the episode store).

    Not thread-safe: the owner serialises calls with its own lock (`sync` takes it only briefly). Writes
    reach the OS at once (a process crash loses nothing) but are durable only after `sync`, which the owner
    calls when it must: once per batch (episode store) or about once a second from another thread (spool).
    """

    def __init__(self, directory: str | Path, segment_bytes: int) -> None:
        self.directory, self.segment_bytes = Path(directory), segment_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        found = sorted((int(m[1]), p) for p in self.directory.iterdir() if (m := SEGMENT_FILE.match(p.name)))
        self.segments = [Segment(index, path, path.stat().st_size) for index, path in found]  # oldest first
        self._file: BinaryIO | None = None  # the newest segment, once opened for appending
        self._unsynced: list[Path] = []  # segments closed since the last sync
        self._dir_changed = False  # a segment was created or deleted since the last sync

    @property
    def size(self) -> int:
        """Bytes in all segments."""
        return sum(s.end for s in self.segments)

    def scan(self, cut_torn: bool = False) -> Iterator[tuple[Segment, list[bytes]]]:
        """Read the segments on disk in order, one at a time: each with its intact records. A torn tail (a crash
        mid-write) is logged and left out; `cut_torn` also cuts it off the file (and fsyncs it) at once,
        otherwise only the newest segment's is cut, when `open` makes it the one appended to. Damage between
        intact records is logged and skipped, and the file is left as it is."""
        for i, seg in enumerate(self.segments):
            records, end, torn, damaged = read_records(seg.path)
            if damaged:
                log.warning("%s: skipped %d damaged bytes in %d place%s (at byte %s) between intact records; "
                            "kept the %d intact records, left the file as it is", seg.path,
                            sum(n for _, n in damaged), len(damaged), "" if len(damaged) == 1 else "s",
                            ", ".join(str(offset) for offset, _ in damaged[:10]), len(records))
            if torn:
                log.warning("%s: ignoring a torn tail of %d bytes after %d intact records (crash mid-write)%s",
                            seg.path, torn, len(records), "; cutting it off" if cut_torn else "")
                if cut_torn:
                    with open_for_append(seg.path, end) as f:
                        os.fsync(f.fileno())
                        end = f.tell()
            self.segments[i] = seg = seg._replace(end=end)
            yield seg, records

    def open(self) -> None:
        """Open the newest segment for appending (cut at its intact end), or create the first one."""
        if not self.segments:
            return self._create(0)
        seg = self.segments[-1]
        self._file = open_for_append(seg.path, seg.end)
        self.segments[-1] = seg._replace(end=self._file.tell())

    def would_roll(self, nbytes: int) -> bool:
        """Whether writing `nbytes` starts a new segment: they would take a non-empty one past `segment_bytes`."""
        end = self.segments[-1].end if self.segments else 0
        return end > len(MAGIC) and end + nbytes > self.segment_bytes

    def write(self, data: bytes) -> None:
        """Append encoded records (`encode_record`) and flush them to the OS, in a new segment if `would_roll`."""
        if self._file is None:
            self.open()
        if self.would_roll(len(data)):
            self._file.close()
            self._unsynced.append(self.segments[-1].path)
            self._create(self.segments[-1].index + 1)
        self._file.write(data)
        self._file.flush()
        self.segments[-1] = self.segments[-1]._replace(end=self.segments[-1].end + len(data))

    def delete_oldest(self, count: int) -> None:
        """Delete the `count` oldest segments, never the newest (the one appended to)."""
        assert count < len(self.segments), "the newest segment is never deleted"
        doomed, self.segments = self.segments[:count], self.segments[count:]
        for seg in doomed:
            seg.path.unlink(missing_ok=True)
        self._dir_changed |= bool(doomed)

    def sync(self, lock: contextlib.AbstractContextManager = contextlib.nullcontext()) -> None:
        """fsync what was written so far: the open segment, those closed since the last sync and, after a
        segment was created or deleted, the directory. `lock` (the owner's) is held only while taking stock,
        so writes from another thread are not held up by the fsyncs."""
        with lock:
            fd = None if self._file is None else os.dup(self._file.fileno())
            closed, self._unsynced = self._unsynced, []
            dir_changed, self._dir_changed = self._dir_changed, False
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for path in closed:
            try:
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
            except FileNotFoundError:
                pass  # deleted already
        if dir_changed:
            fsync_dir(self.directory)

    def close(self, durable: bool = True) -> None:
        """Close the open segment (after a `sync` unless not `durable`); a later `write` reopens it."""
        if durable:
            self.sync()
        if self._file is not None:
            self._file.close()
            self._file = None

    def _create(self, index: int) -> None:
        path = self.directory / f"seg-{index:09d}.rec"
        self._file = open_for_append(path)
        self.segments.append(Segment(index, path, self._file.tell()))
        self._dir_changed = True
