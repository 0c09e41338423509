"""q2rl.recordio's SegmentLog and atomic_write on real files, and the actor spool's trim built on them.

Sizes are chosen so the arithmetic is easy: a file starts with the 8-byte MAGIC, a record is an 8-byte header
plus its payload, so a 92-byte payload is a 100-byte record and a 308-byte segment holds exactly 3 of them.
"""

import logging

import pytest

from q2rl import recordio
from q2rl.actor.link import _PREFIX, _REPORT, _TRANSITION, Spool, SpoolFull

SEGMENT = 8 + 3 * 100


def payload(i: int) -> bytes:
    return bytes([i]) * 92


def names(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_log_rolls_to_a_new_segment_when_a_record_would_not_fit(tmp_path):
    log = recordio.SegmentLog(tmp_path / "log", SEGMENT)
    for i in range(7):
        log.write(recordio.encode_record(payload(i)))
    log.sync()
    # 3 + 3 + 1 records: the 4th would take the first segment to 408 > 308 bytes
    assert [(s.index, s.end) for s in log.segments] == [(0, 308), (1, 308), (2, 108)]
    assert names(tmp_path / "log") == ["seg-000000000.rec", "seg-000000001.rec", "seg-000000002.rec"]
    assert log.size == 724 and [p.stat().st_size for p in sorted((tmp_path / "log").iterdir())] == [308, 308, 108]
    log.close()
    # an empty segment takes a record bigger than the limit rather than leaving a file with none
    big = recordio.SegmentLog(tmp_path / "big", SEGMENT)
    big.write(recordio.encode_record(b"x" * 500))
    assert [s.end for s in big.segments] == [8 + 508]
    big.write(recordio.encode_record(b"y"))
    assert [s.end for s in big.segments] == [516, 8 + 9]
    big.close()
    again = recordio.SegmentLog(tmp_path / "log", SEGMENT)  # reopened: scanned in order, appends continue
    assert [r for _, records in again.scan() for r in records] == [payload(i) for i in range(7)]
    again.write(recordio.encode_record(payload(7)))
    assert [(s.index, s.end) for s in again.segments] == [(0, 308), (1, 308), (2, 208)]
    again.close()


@pytest.mark.parametrize("cut_torn", [False, True])
def test_a_torn_tail_is_reported_left_out_and_cut(tmp_path, caplog, cut_torn):
    log = recordio.SegmentLog(tmp_path, SEGMENT)
    for i in range(4):
        log.write(recordio.encode_record(payload(i)))
    log.close()
    newest = tmp_path / "seg-000000001.rec"
    with open(newest, "ab") as f:
        f.write(b"\x10\x27\x00")  # 3 bytes of a header: the crash came mid-write
    assert newest.stat().st_size == 108 + 3

    log = recordio.SegmentLog(tmp_path, SEGMENT)
    with caplog.at_level(logging.WARNING):
        scanned = [(s.index, s.end, len(records)) for s, records in log.scan(cut_torn=cut_torn)]
    assert scanned == [(0, 308, 3), (1, 108, 1)]
    assert "seg-000000001.rec: ignoring a torn tail of 3 bytes after 1 intact records" in caplog.text
    assert newest.stat().st_size == (108 if cut_torn else 111)  # cut at once, or only when opened for appending
    log.write(recordio.encode_record(b"after"))  # opens the newest segment: cut, then appended to
    log.close()
    assert newest.stat().st_size == 108 + 8 + 5
    assert recordio.read_records(newest) == ([payload(3), b"after"], 121, 0, ())


def damage_record_4(path, where: str) -> int:
    """Flip a bit in record 4 (of 100-byte records after the 8-byte MAGIC): in its length, CRC or payload; or zero
    all of it (zero bytes would read as empty records)."""
    data = bytearray(path.read_bytes())
    record4 = 8 + 4 * 100
    if where == "zeroed":
        data[record4 : record4 + 100] = bytes(100)
    else:
        data[record4 + {"length": 0, "length high byte": 3, "crc": 5, "payload": 8 + 50}[where]] ^= 0x80
    path.write_bytes(bytes(data))
    return record4


def ten_record_segment(directory) -> tuple:
    """A segment of records payload(0..9), closed: (its path, its size)."""
    log = recordio.SegmentLog(directory, 1 << 20)
    for i in range(10):
        log.write(recordio.encode_record(payload(i)))
    log.close()
    path = directory / "seg-000000000.rec"
    return path, path.stat().st_size


@pytest.mark.parametrize("where", ["length", "length high byte", "crc", "payload", "zeroed"])
def test_damage_in_the_middle_is_skipped_record_by_record_and_nothing_is_cut(tmp_path, caplog, where):
    path, size = ten_record_segment(tmp_path)
    record4 = damage_record_4(path, where)

    intact = [payload(i) for i in range(10) if i != 4]
    assert recordio.read_records(path) == (intact, size, 0, ((record4, 100),))
    log = recordio.SegmentLog(tmp_path, 1 << 20)
    with caplog.at_level(logging.WARNING):
        assert [records for _, records in log.scan(cut_torn=True)] == [intact]
    assert path.stat().st_size == size  # nothing cut: the records after the damage are intact
    assert "skipped 100 damaged bytes in 1 place (at byte 408) between intact records" in caplog.text
    assert "torn" not in caplog.text
    log.write(recordio.encode_record(b"after"))  # appends go after the last intact record, as ever
    log.close()
    assert recordio.read_records(path).records == intact + [b"after"]


def test_damage_in_the_middle_and_a_torn_tail_keep_what_is_between_them(tmp_path, caplog):
    path, size = ten_record_segment(tmp_path)
    damage_record_4(path, "payload")
    with open(path, "ab") as f:
        f.write(recordio.encode_record(b"z" * 50)[:20])  # and a crash mid-write
    log = recordio.SegmentLog(tmp_path, 1 << 20)
    with caplog.at_level(logging.WARNING):
        assert [len(records) for _, records in log.scan(cut_torn=True)] == [9]
    assert path.stat().st_size == size  # the torn tail, and only it, is cut
    assert "torn tail of 20 bytes after 9 intact records" in caplog.text
    assert "skipped 100 damaged bytes in 1 place" in caplog.text


def test_a_segment_torn_inside_its_header_starts_over(tmp_path):
    (tmp_path / "seg-000000000.rec").write_bytes(recordio.MAGIC[:3])
    log = recordio.SegmentLog(tmp_path, SEGMENT)
    assert [(s.end, records) for s, records in log.scan()] == [(0, [])]
    log.write(recordio.encode_record(b"a"))
    log.close()
    assert recordio.read_records(tmp_path / "seg-000000000.rec") == ([b"a"], 17, 0, ())


def spool_item(spool: Spool, kind: int, seq: int, episode: int) -> None:
    spool.append(kind, seq, episode, b"i" * (100 - 8 - _PREFIX.size))  # a 100-byte record


def test_spool_trim_deletes_only_whole_acknowledged_segments(tmp_path):
    spool = Spool(tmp_path, segment_bytes=SEGMENT)
    for seq in range(5):
        spool_item(spool, _TRANSITION, seq, 0)
    spool_item(spool, _REPORT, 4, 0)  # episode 0's report follows seq 4
    spool_item(spool, _TRANSITION, 5, 1)
    # segments: [t0 t1 t2] [t3 t4 report 0] [t5]
    assert names(tmp_path) == ["seg-000000000.rec", "seg-000000001.rec", "seg-000000002.rec"]
    assert spool.size_bytes == 308 + 308 + 108 and spool.acked_floor == -1

    spool.trim(acked_seq=1, acked_episode=-1)  # t2 not acknowledged: nothing goes
    assert len(names(tmp_path)) == 3 and spool.acked_floor == -1
    spool.trim(acked_seq=5, acked_episode=-1)  # every transition, but not the report in segment 1
    assert names(tmp_path) == ["seg-000000001.rec", "seg-000000002.rec"] and spool.acked_floor == 5
    assert spool.size_bytes == 308 + 108 and spool.start_cursor() == (1, 8)
    spool.trim(acked_seq=5, acked_episode=0)  # all acknowledged, but the newest segment is never deleted
    assert names(tmp_path) == ["seg-000000002.rec"]
    spool.fsync()
    spool.close()

    again = Spool(tmp_path, segment_bytes=SEGMENT)  # a restart continues after what is left
    assert (again.next_seq, again.next_episode_id, again.acked_floor) == (6, 2, 4)
    entries, cursor = again.read(again.start_cursor(), acked_seq=4, acked_episode=0, max_bytes=1 << 20, max_items=9)
    assert [(e.kind, e.seq, e.episode_id) for e in entries] == [(_TRANSITION, 5, 1)] and cursor == (2, 108)
    again.close()


def test_spool_refuses_a_new_segment_past_its_size_limit(tmp_path):
    spool = Spool(tmp_path, segment_bytes=SEGMENT, max_bytes=700)
    for seq in range(6):
        spool_item(spool, _TRANSITION, seq, 0)  # two full segments: 616 bytes
    with pytest.raises(SpoolFull, match="has not acknowledged"):
        spool_item(spool, _TRANSITION, 6, 0)  # a third segment would hold 716 > 700
    spool.trim(acked_seq=2, acked_episode=-1)  # segment 0 goes: 308 bytes left
    spool_item(spool, _TRANSITION, 6, 0)
    assert spool.size_bytes == 308 + 108
    spool.close()


def test_atomic_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "status.json"
    recordio.atomic_write(path, "first")
    recordio.atomic_write(path, b"second", durable=False)
    assert path.read_bytes() == b"second" and names(tmp_path / "sub") == ["status.json"]
    with pytest.raises(TypeError):
        recordio.atomic_write(path, 3)  # a failed write keeps the old file and removes its temporary
    assert path.read_bytes() == b"second" and names(tmp_path / "sub") == ["status.json"]
